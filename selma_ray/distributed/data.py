"""Ray Data wiring shared by the stages: rows -> an autoscaling actor pool -> rows.

Any stage core written as a callable class (load the model in ``__init__``, map a batch in
``__call__``) runs here. Input too small to keep every actor busy is repartitioned so that each
actor gets blocks to work on.
"""

from __future__ import annotations

import warnings
from typing import Any


def map_rows_with_actors(
    rows: list[dict[str, Any]],
    fn_cls: type,
    *,
    fn_constructor_kwargs: dict[str, Any],
    min_actors: int,
    max_actors: int,
    batch_size: int,
    num_gpus: float = 0.0,
    num_cpus: float | None = None,
    runtime_env: dict[str, Any] | None = None,
    max_restarts: int | None = None,
    max_task_retries: int | None = None,
    ray_remote_args: dict[str, Any] | None = None,
    initial_actors: int | None = None,
    rows_per_block: int | None = None,
    max_tasks_in_flight_per_actor: int | None = None,
) -> list[dict[str, Any]]:
    """Run ``fn_cls`` over ``rows`` on an actor pool of ``min_actors..max_actors``; all output rows.

    Fault tolerance: ``max_restarts`` (actor restarts after its process dies; -1 = unlimited)
    and ``max_task_retries`` (how often a batch whose actor died is resubmitted; -1 =
    unlimited). None keeps Ray Data's defaults (-1 and -1 in Ray 2.60). Exceptions raised by
    ``fn_cls`` itself are not retried. ``ray_remote_args`` go to ``map_batches`` as they are
    (Ray 2.60 warns that such extra arguments are deprecated; the warning is silenced here).

    ``initial_actors``: actors started at once (default ``min_actors``); the pool only grows
    when running actors have a backlog, so set it to keep every actor busy from the start.
    ``rows_per_block``: build the input from blocks of exactly this many rows (flat rows only,
    no repartition); with ``batch_size`` equal to it, every actor task is one whole batch.
    ``max_tasks_in_flight_per_actor``: batches queued per actor (Ray default 2); 1 hands each
    batch to the next free actor, so the first actor up cannot take a small input's whole
    backlog (but the pool then never grows past ``initial_actors`` on backlog).
    """
    import ray.data

    if not rows:
        return []
    if rows_per_block:
        import pyarrow as pa

        ds = ray.data.from_arrow(
            [
                pa.Table.from_pylist(rows[i : i + rows_per_block])
                for i in range(0, len(rows), rows_per_block)
            ]
        )
    else:
        ds = ray.data.from_items(rows)
        # one block per batch, at least one per actor, so a small input still spreads out
        n_blocks = max(max_actors, -(-len(rows) // batch_size))
        ds = ds.repartition(min(n_blocks, len(rows)))
    remote_args: dict[str, Any] = {}
    if num_gpus:
        remote_args["num_gpus"] = num_gpus
    if num_cpus is not None:
        remote_args["num_cpus"] = num_cpus
    if runtime_env:
        remote_args["runtime_env"] = runtime_env
    if max_restarts is not None:
        remote_args["max_restarts"] = max_restarts
    if max_task_retries is not None:
        remote_args["max_task_retries"] = max_task_retries
    if ray_remote_args:
        remote_args.update(ray_remote_args)
    pool_kwargs: dict[str, Any] = {"min_size": min_actors, "max_size": max_actors}
    if initial_actors is not None:
        pool_kwargs["initial_size"] = min(max(initial_actors, min_actors), max_actors)
    if max_tasks_in_flight_per_actor is not None:
        pool_kwargs["max_tasks_in_flight_per_actor"] = max_tasks_in_flight_per_actor
    with warnings.catch_warnings():
        # Ray 2.60 deprecates extra remote args (max_restarts...) without a named replacement
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
        ds = ds.map_batches(
            fn_cls,
            fn_constructor_kwargs=fn_constructor_kwargs,
            compute=ray.data.ActorPoolStrategy(**pool_kwargs),
            batch_size=batch_size,
            batch_format="numpy",
            **remote_args,
        )
    return ds.take_all()
