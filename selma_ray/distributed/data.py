"""Ray Data wiring shared by the stages: rows -> an autoscaling actor pool -> rows.

Any stage core written as a callable class (load the model in ``__init__``, map a numpy batch
in ``__call__``) runs here, on the :class:`~selma_ray.config.ActorPool` its config names. Input
too small to keep every actor busy is repartitioned so that each actor gets blocks to work on.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from selma_ray.config import ActorPool
from selma_ray.distributed.devices import device_checked
from selma_ray.execution import py_value, task_plan


class _DropScaleUpWarning(logging.Filter):
    """Ray Data warns that a pool holding one task per actor cannot grow on backlog; whole-task
    maps start the pool at the size they can use, so the warning only misleads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will not allow it to scale up" not in record.getMessage()


logging.getLogger("ray.data._internal.actor_autoscaler.default_actor_autoscaler").addFilter(
    _DropScaleUpWarning()
)


def remote_args(pool: ActorPool) -> dict[str, Any]:
    """``map_batches`` resource and fault-tolerance arguments of a pool."""
    args: dict[str, Any] = {
        "max_restarts": pool.max_restarts,
        "max_task_retries": pool.max_task_retries,
    }
    if pool.gpus:
        args["num_gpus"] = pool.gpus
    if pool.cpus is not None:
        args["num_cpus"] = pool.cpus
    if pool.resources:
        args["resources"] = dict(pool.resources)
    return args


def map_rows_with_actors(
    rows: list[dict[str, Any]],
    fn_cls: type,
    *,
    fn_kwargs: dict[str, Any],
    pool: ActorPool,
    rows_per_task: int,
    whole_tasks: bool = False,
    cpu_fallback: bool = False,
) -> list[dict[str, Any]]:
    """Run ``fn_cls`` over ``rows`` on an actor pool of ``pool.min_size..max_size``.

    See :meth:`selma_ray.execution.Executor.map_rows`. Fault tolerance comes from the pool:
    ``max_restarts`` (actor restarts after its process dies) and ``max_task_retries`` (how
    often a batch whose actor died is resubmitted); exceptions raised by ``fn_cls`` itself are
    not retried. With ``whole_tasks`` the input is built from blocks of exactly one task's rows
    (no repartition), each actor holds one task at a time (``max_tasks_in_flight_per_actor=1``)
    and the pool starts with one actor per task up to ``max_size``. Actors of a pool with
    ``gpus`` first check that torch sees them (:func:`~selma_ray.distributed.devices.
    device_checked`; ``cpu_fallback`` lets them run on the CPU instead of failing).
    """
    import pyarrow as pa
    import ray.data

    if not rows:
        return []
    pool_kwargs: dict[str, Any] = {"min_size": max(1, pool.min_size), "max_size": pool.max_size}
    if whole_tasks:
        rows_per_task, n_tasks = task_plan(len(rows), rows_per_task, pool.max_size)
        ds = ray.data.from_arrow(
            [
                pa.Table.from_pylist(rows[i : i + rows_per_task])
                for i in range(0, len(rows), rows_per_task)
            ]
        )
        pool_kwargs["initial_size"] = max(pool_kwargs["min_size"], min(pool.max_size, n_tasks))
        pool_kwargs["max_tasks_in_flight_per_actor"] = 1
    else:
        ds = ray.data.from_items(rows)
        # one block per batch, at least one per actor, so a small input still spreads out
        n_blocks = max(pool.max_size, -(-len(rows) // rows_per_task))
        ds = ds.repartition(min(n_blocks, len(rows)))
    with warnings.catch_warnings():
        # Ray 2.60 deprecates extra remote args (max_restarts...) without a named replacement
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
        ds = ds.map_batches(
            device_checked(fn_cls, pool, cpu_fallback=cpu_fallback),
            fn_constructor_kwargs=fn_kwargs,
            compute=ray.data.ActorPoolStrategy(**pool_kwargs),
            batch_size=rows_per_task,
            batch_format="numpy",
            **remote_args(pool),
        )
    return [{k: py_value(v) for k, v in row.items()} for row in ds.take_all()]
