"""Long-lived Ray actor pools (``RayExecutor.open_pool``): actors kept across maps, restarted
when their process dies, a constructor error failing at once, ``close`` ending them.

Tiny stand-in classes (no model); each records its constructions as files named by process
id, so a test counts actor starts across processes. About 15 s on two cores, Ray included.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from selma_ray.config import ActorPool
from selma_ray.execution import InProcessExecutor
from tests.conftest import TEST_RESOURCE


class Doubler:
    """Doubles ``x``; answers with its pid. ``die``: a file whose presence makes the next call
    kill this process (once: the file is removed first)."""

    def __init__(self, starts: str, die: str = "", sleep: float = 0.0) -> None:
        Path(starts, f"start-{os.getpid()}-{time.monotonic_ns()}").touch()
        self.starts, self.die, self.sleep = starts, die, sleep

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.die and os.path.exists(self.die):
            os.remove(self.die)
            os._exit(1)
        time.sleep(self.sleep)
        n = len(batch["x"])
        return {"x": batch["x"] * 2, "pid": np.full(n, os.getpid()), "n": np.full(n, n)}

    def close(self) -> None:
        Path(self.starts, f"closed-{os.getpid()}").touch()


class CannotStart:
    def __init__(self, starts: str) -> None:
        Path(starts, f"start-{os.getpid()}-{time.monotonic_ns()}").touch()
        raise ValueError("no such model: /models/missing")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return batch


class Reserved:
    """Answers with what Ray reserved for the actor it runs in."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        got = ray.get_runtime_context().get_assigned_resources()
        n = len(batch["x"])
        return {
            "x": batch["x"],
            "cpu": np.full(n, got.get("CPU", 0.0)),
            "custom": np.full(n, got.get(TEST_RESOURCE, 0.0)),
        }


def _starts(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("start-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _rows(n: int) -> list[dict[str, int]]:
    return [{"x": i} for i in range(n)]


def test_actors_live_across_maps_and_share_the_tasks(ray_cluster, tmp_path):
    from selma_ray.distributed import RayExecutor

    kwargs = {"starts": str(tmp_path), "sleep": 0.5}
    pids: list[set[int]] = []
    with RayExecutor().open_pool(Doubler, fn_kwargs=kwargs, pool=ActorPool(max_size=2)) as pool:
        for _ in range(3):
            out = pool.map(_rows(12), rows_per_task=3)
            assert sorted(r["x"] for r in out) == [2 * i for i in range(12)]
            assert [r["n"] for r in out] == [3] * 12  # four tasks of three rows
            pids.append({r["pid"] for r in out})
        assert pool.size == 2
    assert len(_starts(tmp_path)) == 2  # two actors, each started once for three maps
    started = {int(name.split("-")[1]) for name in _starts(tmp_path)}
    # the second actor takes tasks from the map running when it is ready (by the third at
    # the latest: two maps of four 0.5 s tasks take at least 2 s)
    assert pids[2] == started and pids[0] | pids[1] <= started


def test_a_dead_actor_is_restarted_and_its_rows_retried(ray_cluster, tmp_path):
    from selma_ray.distributed import RayExecutor

    die = tmp_path / "die"
    starts = tmp_path / "starts"
    starts.mkdir()
    kwargs = {"starts": str(starts), "die": str(die)}
    with RayExecutor().open_pool(Doubler, fn_kwargs=kwargs, pool=ActorPool(max_size=1)) as pool:
        (first,) = {r["pid"] for r in pool.map(_rows(4), rows_per_task=2)}
        die.touch()  # the next call kills the actor's process
        out = pool.map(_rows(6), rows_per_task=2)
    assert sorted(r["x"] for r in out) == [2 * i for i in range(6)]
    (second,) = {r["pid"] for r in out}
    assert second != first and not die.exists()
    assert len(_starts(starts)) == 2  # the restart built the instance again


def test_an_actor_that_cannot_start_fails_the_map_at_once(ray_cluster, tmp_path):
    from selma_ray.distributed import RayExecutor

    pool = RayExecutor().open_pool(
        CannotStart, fn_kwargs={"starts": str(tmp_path)}, pool=ActorPool(max_restarts=2)
    )
    t0 = time.perf_counter()
    with pytest.raises(Exception, match="ValueError: no such model: /models/missing"):
        pool.map(_rows(3), rows_per_task=1)
    assert time.perf_counter() - t0 < 30
    pool.close()
    assert len(_starts(tmp_path)) == 1  # not restarted


def test_close_releases_the_instance_and_ends_the_actor(ray_cluster, tmp_path):
    from selma_ray.distributed import RayExecutor

    pool = RayExecutor().open_pool(
        Doubler, fn_kwargs={"starts": str(tmp_path)}, pool=ActorPool(max_size=1)
    )
    (pid,) = {r["pid"] for r in pool.map(_rows(2), rows_per_task=2)}
    assert _alive(pid)
    pool.close()
    pool.close()  # twice is harmless
    assert (tmp_path / f"closed-{pid}").exists()
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid)
    with pytest.raises(RuntimeError, match="closed pool"):
        pool.map(_rows(1), rows_per_task=1)


def test_ray_pool_answers_as_the_in_process_pool(ray_cluster, tmp_path):
    from selma_ray.distributed import RayExecutor

    kwargs = {"starts": str(tmp_path)}
    rows = _rows(7)
    with InProcessExecutor().open_pool(Doubler, fn_kwargs=kwargs, pool=ActorPool()) as local:
        expected = [r["x"] for r in local.map(rows, rows_per_task=2)]
    with RayExecutor().open_pool(Doubler, fn_kwargs=kwargs, pool=ActorPool(max_size=2)) as pool:
        got = sorted(r["x"] for r in pool.map(rows, rows_per_task=2))
    assert expected == [2 * i for i in range(7)] == got


@pytest.mark.parametrize("kind", ["long-lived pool", "Ray Data map"])
def test_actors_reserve_the_pools_custom_resources(ray_cluster, kind):
    """``pool.resources`` (e.g. ``llm_node`` of cluster.yaml's llm_worker) is reserved by every
    actor of both kinds of pool, beside its CPUs."""
    from selma_ray.distributed import RayExecutor

    pool = ActorPool(max_size=1, cpus=0.5, resources={TEST_RESOURCE: 0.5})
    if kind == "Ray Data map":
        out = RayExecutor().map_rows(_rows(4), Reserved, fn_kwargs={}, pool=pool, rows_per_task=2)
    else:
        with RayExecutor().open_pool(Reserved, fn_kwargs={}, pool=pool) as actors:
            out = actors.map(_rows(4), rows_per_task=2)
    assert sorted(r["x"] for r in out) == [0, 1, 2, 3]
    assert {(r["cpu"], r["custom"]) for r in out} == {(0.5, 0.5)}
