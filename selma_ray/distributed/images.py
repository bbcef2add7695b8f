"""SELMA stage 2 on Ray: planned image rows -> an autoscaling pool of diffusion actors.

Each actor loads the pipeline once (:class:`~selma_ray.images.generate.ImageGenerator`) and
writes its images straight to the run directory; only small metadata rows come back. An actor
whose process dies is restarted and its batch resubmitted (``images.max_task_retries``); rows
whose image is already on storage are skipped, so a retried batch redraws only what is missing,
and in exact mode (the default) redraws it byte for byte.
"""

from __future__ import annotations

import logging
from typing import Any

from selma_ray.config import ImagesConfig
from selma_ray.distributed.data import map_rows_with_actors
from selma_ray.images.generate import ImageGenerator


class _DropScaleUpWarning(logging.Filter):
    """Ray Data warns that a pool holding one batch per actor cannot grow on backlog; this
    stage starts the pool at the size it can use, so the warning only misleads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will not allow it to scale up" not in record.getMessage()


logging.getLogger("ray.data._internal.actor_autoscaler.default_actor_autoscaler").addFilter(
    _DropScaleUpWarning()
)


def batch_plan(n_rows: int, batch_size: int, max_actors: int) -> tuple[int, int]:
    """(rows per batch, number of batches): at most ``batch_size`` rows per batch, at least one
    batch per actor while rows last, and batches of even size (so no actor gets a straggler)."""
    if n_rows <= 0:
        return batch_size, 0
    n_batches = max(min(max_actors, n_rows), -(-n_rows // batch_size))
    per_batch = -(-n_rows // n_batches)
    return per_batch, -(-n_rows // per_batch)


def generate_images(
    rows: list[dict[str, Any]],
    cfg: ImagesConfig,
    out_uri: str,
    cache_dir: str | None = None,
    *,
    num_threads: int | None = None,
    generator_cls: type = ImageGenerator,
    generator_kwargs: dict[str, Any] | None = None,
    cfg_overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Draw ``rows`` (from :func:`~selma_ray.images.generate.plan_rows`) into ``out_uri``.

    Returns one result row per input row (metadata + ``written``: False when the image was
    already there). ``out_uri`` must be visible from every Ray worker: a local path on a
    single node, a shared filesystem, or an object store URI. ``generator_cls`` (an
    :class:`ImageGenerator` subclass, e.g. the evaluation's LoRA-switching one) takes
    ``generator_kwargs`` on top of the usual constructor arguments.
    """
    if not rows:
        return []
    if out_uri.startswith("memory://"):
        msg = (
            f"images: the run directory {out_uri!r} is in this process's memory, which Ray "
            "actors (other processes) cannot see; use a local path, a shared filesystem or "
            "an object store URI (s3://, gs://)"
        )
        raise ValueError(msg)
    # One input block per batch, so every actor task is one whole batch; the pool starts with
    # as many actors as there are batches to feed (up to max_actors), and each actor holds one
    # batch at a time, so the first actor up does not take a small input's whole backlog and
    # the tail is spread over every actor. In non-exact mode an image's bytes depend on its
    # batch, i.e. on this plan.
    batch_size, n_batches = batch_plan(len(rows), cfg.batch_size, cfg.max_actors)
    out = map_rows_with_actors(
        rows,
        generator_cls,
        fn_constructor_kwargs={
            "cfg": {**cfg.model_dump(mode="json"), **(cfg_overrides or {})},
            "out_uri": out_uri,
            "cache_dir": cache_dir,
            "num_threads": num_threads,
            **(generator_kwargs or {}),
        },
        min_actors=cfg.min_actors,
        max_actors=cfg.max_actors,
        batch_size=batch_size,
        rows_per_block=batch_size,
        initial_actors=max(cfg.min_actors, min(cfg.max_actors, n_batches)),
        max_tasks_in_flight_per_actor=1,
        num_gpus=cfg.gpus_per_actor,
        max_restarts=-1,
        max_task_retries=cfg.max_task_retries,
    )
    return [{k: _py(v) for k, v in r.items()} for r in out]


def _py(value: Any) -> Any:
    return value.item() if hasattr(value, "item") and not isinstance(value, str) else value
