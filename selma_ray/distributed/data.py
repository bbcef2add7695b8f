"""Ray Data wiring shared by the stages: rows -> an autoscaling actor pool -> rows.

Any stage core written as a callable class (load the model in ``__init__``, map a numpy batch
in ``__call__``) runs here, on the :class:`~selma_ray.config.ActorPool` its config names. The
input is cut into blocks of exactly one task's rows (:func:`~selma_ray.execution.task_plan`:
even tasks, at least one per actor while rows last), so Ray Data's bundler, which joins blocks
until a batch is full, never merges a small input's blocks into fewer tasks than actors.
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


#: Tasks a (not ``whole_tasks``) actor may hold at once when the input has enough for every
#: actor: Ray Data's default for one call at a time (the next task's rows arrive while the
#: actor works on the current one).
MAX_TASKS_IN_FLIGHT = 2


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
    not retried. Each task gets one block of :func:`~selma_ray.execution.task_plan`'s size,
    the pool starts with one actor per task up to ``max_size``, and an actor holds at most
    its share of the tasks (:data:`MAX_TASKS_IN_FLIGHT` at most); with ``whole_tasks`` one
    task at a time. Actors of a pool with
    ``gpus`` first check that torch sees them (:func:`~selma_ray.distributed.devices.
    device_checked`; ``cpu_fallback`` lets them run on the CPU instead of failing).
    """
    import pyarrow as pa
    import ray.data

    if not rows:
        return []
    pool_kwargs: dict[str, Any] = {"min_size": max(1, pool.min_size), "max_size": pool.max_size}
    rows_per_task, n_tasks = task_plan(len(rows), rows_per_task, pool.max_size)
    # one table, so every block has one schema; columns are every row's keys (from_pylist
    # would take the first row's only) and each column's type is inferred from all its values
    names = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.Table.from_pydict({k: [row.get(k) for row in rows] for k in names})
    ds = ray.data.from_arrow(
        [table.slice(i, rows_per_task) for i in range(0, len(rows), rows_per_task)]
    )
    # one actor per task up to max_size from the start, and no actor queues more than its
    # share of the tasks (so a small input is not taken whole by the first actor up)
    pool_kwargs["initial_size"] = max(pool_kwargs["min_size"], min(pool.max_size, n_tasks))
    share = -(-n_tasks // pool.max_size)
    pool_kwargs["max_tasks_in_flight_per_actor"] = (
        1 if whole_tasks else min(MAX_TASKS_IN_FLIGHT, share)
    )
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
