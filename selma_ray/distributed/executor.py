"""The Ray executor: the stage cores' rows on Ray Data actor pools (or on long-lived actors,
:mod:`~selma_ray.distributed.pools`), experts on Ray Train.

Implements :class:`selma_ray.execution.Executor`; the pipeline hands it to every stage when the
run uses Ray (``ray.executor: ray``, the default), inside :func:`ray_session`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selma_ray.config import ActorPool
from selma_ray.execution import ExpertJob

if TYPE_CHECKING:
    from selma_ray.distributed.pools import RayActorPool


class RayExecutor:
    """Maps rows with :func:`~selma_ray.distributed.data.map_rows_with_actors` and trains
    experts with :func:`~selma_ray.distributed.train.train_experts`; ``progress`` turns Ray
    Data's progress bars on; ``cpu_fallback`` lets actors and workers that Ray gave GPUs torch
    cannot see run on the CPU (:mod:`selma_ray.distributed.devices`; otherwise they fail)."""

    def __init__(
        self, *, progress: bool = False, cpu_fallback: bool = False, quiet: bool = False
    ) -> None:
        self.progress = progress
        self.cpu_fallback = cpu_fallback
        self.quiet = quiet

    def map_rows(
        self,
        rows: list[dict[str, Any]],
        fn_cls: type,
        *,
        fn_kwargs: dict[str, Any],
        pool: ActorPool,
        rows_per_task: int,
        whole_tasks: bool = False,
    ) -> list[dict[str, Any]]:
        import ray.data

        from selma_ray.distributed.data import map_rows_with_actors

        if not rows:
            return []
        _refuse_process_local(fn_kwargs)
        if self.quiet:
            route_ray_logs()
        ctx = ray.data.DataContext.get_current()
        saved = ctx.enable_progress_bars
        ctx.enable_progress_bars = self.progress
        try:
            return map_rows_with_actors(
                rows,
                fn_cls,
                fn_kwargs=fn_kwargs,
                pool=pool,
                rows_per_task=rows_per_task,
                whole_tasks=whole_tasks,
                cpu_fallback=self.cpu_fallback,
            )
        finally:
            ctx.enable_progress_bars = saved

    def open_pool(
        self, fn_cls: type, *, fn_kwargs: dict[str, Any], pool: ActorPool
    ) -> RayActorPool:
        """Ray actors that live until the pool is closed
        (:class:`~selma_ray.distributed.pools.RayActorPool`)."""
        from selma_ray.distributed.pools import RayActorPool

        _refuse_process_local(fn_kwargs)
        if self.quiet:
            route_ray_logs()
        return RayActorPool(fn_cls, fn_kwargs=fn_kwargs, pool=pool, cpu_fallback=self.cpu_fallback)

    def train_experts(self, jobs: list[ExpertJob]) -> None:
        from selma_ray.distributed.train import train_experts

        for job in jobs:
            _refuse_process_local({"run directory": job.run_dir_uri, "train": job.storage_path})
        if self.quiet:
            route_ray_logs()
        train_experts(jobs, cpu_fallback=self.cpu_fallback)


def route_ray_logs() -> None:
    """Ray and Ray Data print on the console through handlers of their own (execution plans,
    timings, Ray Train's reports); send their records to the root logger instead, where the
    quiet console keeps only errors and the run's driver log keeps everything (Ray Data's own
    log file in the Ray session stays)."""
    import logging

    import ray.data  # noqa: F401 - configures Ray Data's logger on import

    for name in ("ray", "ray.data"):  # Ray's own console handler too (Ray Train's records)
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True
    logging.getLogger("ray.data").setLevel(logging.INFO)


def _refuse_process_local(kwargs: dict[str, Any]) -> None:
    """A ``memory://`` URI lives in this process; Ray workers (other processes) cannot see it."""
    for name, value in kwargs.items():
        if isinstance(value, str) and value.startswith("memory://"):
            msg = (
                f"{name} {value!r} is in this process's memory, which Ray workers (other "
                "processes) cannot see; use a local path, a shared filesystem or an object "
                "store URI (s3://, gs://), or ray.executor: in-process"
            )
            raise ValueError(msg)
