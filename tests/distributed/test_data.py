"""Ray Data maps (``map_rows_with_actors``): how the input is cut into tasks."""

from __future__ import annotations

import pytest

from selma_ray.config import ActorPool
from selma_ray.distributed.data import map_rows_with_actors
from selma_ray.execution import task_plan
from tests.distributed.test_pools import Doubler, _rows


@pytest.mark.parametrize("whole_tasks", [False, True])
def test_every_task_is_one_even_batch_and_a_small_input_reaches_every_actor(
    ray_cluster, tmp_path, whole_tasks
):
    """10 rows, 8 rows a task, 2 actors: two tasks of 5 rows (not a batch of 8 and one of 2,
    nor both blocks bundled into one task), one per actor; a sleep holds each actor on its
    task so the second task cannot queue behind the first. Rows keep their order."""
    pool = ActorPool(min_size=2, max_size=2, cpus=0.5)
    out = map_rows_with_actors(
        _rows(10),
        Doubler,
        fn_kwargs={"starts": str(tmp_path), "sleep": 1.0},
        pool=pool,
        rows_per_task=8,
        whole_tasks=whole_tasks,
    )
    assert task_plan(10, 8, 2) == (5, 2)
    assert [r["x"] for r in out] == [2 * i for i in range(10)]
    assert [r["n"] for r in out] == [5] * 10
    assert len({r["pid"] for r in out}) == 2
