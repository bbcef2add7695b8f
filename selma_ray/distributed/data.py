"""Ray Data wiring shared by the stages: rows -> an autoscaling actor pool -> rows.

Any stage core written as a callable class (load the model in ``__init__``, map a batch in
``__call__``) runs here. Input too small to keep every actor busy is repartitioned so that each
actor gets blocks to work on.
"""

from __future__ import annotations

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
) -> list[dict[str, Any]]:
    """Run ``fn_cls`` over ``rows`` on an actor pool of ``min_actors..max_actors``; all output rows."""
    import ray.data

    if not rows:
        return []
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
    ds = ds.map_batches(
        fn_cls,
        fn_constructor_kwargs=fn_constructor_kwargs,
        compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
        batch_size=batch_size,
        batch_format="numpy",
        **remote_args,
    )
    return ds.take_all()
