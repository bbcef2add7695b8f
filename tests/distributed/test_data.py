"""Ray Data maps (``map_rows_with_actors``): how the input is cut into tasks."""

from __future__ import annotations

import pytest

from selma_ray.config import ActorPool
from selma_ray.distributed.data import map_rows_with_actors
from selma_ray.execution import task_plan
from tests.distributed.test_pools import Doubler, _rows


@pytest.mark.parametrize(
    ("min_size", "whole_tasks"),
    [(2, False), (1, False), (1, True)],
    ids=["fixed", "grows", "whole"],
)
def test_every_task_is_one_even_batch_and_a_small_input_reaches_every_actor(
    ray_cluster, tmp_path, min_size, whole_tasks
):
    """10 rows, 8 rows a task, a pool of up to 2 actors: two tasks of 5 rows (not a batch of
    8 and one of 2, nor both blocks bundled into one task), one per actor, also when the pool
    may start at 1 actor (it starts one per task); a sleep holds each actor on its task so
    the second task cannot queue behind the first."""
    pool = ActorPool(min_size=min_size, max_size=2, cpus=0.5)
    out = map_rows_with_actors(
        _rows(10),
        Doubler,
        fn_kwargs={"starts": str(tmp_path), "sleep": 1.0},
        pool=pool,
        rows_per_task=8,
        whole_tasks=whole_tasks,
    )
    assert task_plan(10, 8, 2) == (5, 2)
    assert sorted(r["x"] for r in out) == [2 * i for i in range(10)]
    assert [r["n"] for r in out] == [5] * 10
    by_pid: dict[int, list[int]] = {}
    for r in out:
        by_pid.setdefault(r["pid"], []).append(r["x"] // 2)
    # each actor took one whole task: rows 0-4 or rows 5-9
    assert sorted(sorted(rows) for rows in by_pid.values()) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
