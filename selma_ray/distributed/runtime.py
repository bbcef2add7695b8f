"""Ray for a run: connect to an existing cluster or start a local Ray for the run's duration."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from selma_ray.config import RayConfig

log = logging.getLogger(__name__)


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[None]:
    """Use the Ray already initialised in this process, else connect or start one.

    Address precedence: ``ray.address`` in the config, then ``RAY_ADDRESS``, else a local Ray
    started here and shut down on exit.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": cfg.log_to_driver, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
        log.info("connected to Ray cluster at %s", address)
    else:
        if cfg.num_cpus:
            kwargs["num_cpus"] = cfg.num_cpus
        if cfg.object_store_memory_mb:
            kwargs["object_store_memory"] = cfg.object_store_memory_mb * 1024 * 1024
        # "local": start one here; no address would join whatever cluster this machine last
        # ran `ray start` for (Ray reads /tmp/ray/ray_current_cluster)
        ray.init(address="local", include_dashboard=False, **kwargs)
        res = ray.cluster_resources()
        log.info("started a local Ray: %g CPUs, %g GPUs", res.get("CPU", 0), res.get("GPU", 0))
    try:
        yield
    finally:
        ray.shutdown()


def worker_logs_dir() -> str | None:
    """The session's log directory of this Ray (the same path on every node), or None."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        node = ray._private.worker.global_worker.node
        return f"{node.get_session_dir_path()}/logs"
    except Exception:  # noqa: BLE001 - a Ray Client connection or a changed private API
        return None
