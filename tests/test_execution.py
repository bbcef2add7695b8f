"""The in-process executor: the same contract as the Ray one, in this process."""

from __future__ import annotations

import numpy as np
import pytest

from selma_ray.config import ActorPool, load_config
from selma_ray.execution import InProcessExecutor, batch_to_rows, rows_to_batch
from selma_ray.storage import RunDir


class Doubler:
    """A Ray Data style callable class that records its construction and batch sizes."""

    instances = 0

    def __init__(self, factor: int) -> None:
        Doubler.instances += 1
        self.factor = factor

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["x"])
        return {"x": batch["x"] * self.factor, "name": batch["name"], "n": np.full(n, n)}


def test_map_rows_loads_once_and_maps_batches_in_order():
    Doubler.instances = 0
    rows = [{"x": i, "name": f"r{i}"} for i in range(7)]
    out = InProcessExecutor().map_rows(
        rows, Doubler, fn_kwargs={"factor": 3}, pool=ActorPool(max_size=4), rows_per_task=3
    )
    assert Doubler.instances == 1
    assert [r["x"] for r in out] == [3 * i for i in range(7)]
    # the batches a Ray map cuts: at least one per worker while rows last, of even size
    assert [r["n"] for r in out] == [2] * 6 + [1]
    assert all(type(r["x"]) is int and type(r["name"]) is str for r in out)
    out = InProcessExecutor().map_rows(
        rows, Doubler, fn_kwargs={"factor": 1}, pool=ActorPool(max_size=2), rows_per_task=3
    )
    assert [r["n"] for r in out] == [3] * 6 + [1]
    # whole tasks: the same plan
    out = InProcessExecutor().map_rows(
        rows,
        Doubler,
        fn_kwargs={"factor": 1},
        pool=ActorPool(max_size=4),
        rows_per_task=8,
        whole_tasks=True,
    )
    assert [r["n"] for r in out] == [2] * 6 + [1]


def test_open_pool_keeps_one_instance_until_closed():
    Doubler.instances = 0
    rows = [{"x": i, "name": f"r{i}"} for i in range(5)]
    pool = InProcessExecutor().open_pool(
        Doubler, fn_kwargs={"factor": 2}, pool=ActorPool(max_size=4)
    )
    with pool:
        for _ in range(3):
            out = pool.map(rows, rows_per_task=2)
            assert [r["x"] for r in out] == [2 * i for i in range(5)]
            assert [r["n"] for r in out] == [2, 2, 2, 2, 1]
    assert Doubler.instances == 1
    with pytest.raises(RuntimeError, match="closed pool"):
        pool.map(rows, rows_per_task=2)


def test_rows_and_batches_round_trip():
    rows = [{"a": 1, "b": "x", "c": 0.5}, {"a": 2, "b": "y", "c": 1.5}]
    batch = rows_to_batch(rows)
    assert batch["b"].dtype == object and batch["a"].dtype.kind == "i"
    assert batch_to_rows(batch) == rows


def _train_cfg(steps: int, *extra: str):
    """One tiny expert (coco) of ``steps`` steps, a checkpoint every 2."""
    return load_config(
        overrides=[
            "prompts.skills=[coco]",
            f"train.max_steps={steps}",
            "train.checkpoint_every=2",
            "train.batch_size=2",
            "train.resolution=32",
            *extra,
        ]
    )


def test_in_process_experts_resume_from_their_checkpoints(tiny_models, tmp_path):
    from selma_ray.training.data import write_synthetic_skill
    from selma_ray.training.stage import expert_jobs

    rd = RunDir(str(tmp_path / "run"))
    write_synthetic_skill(rd, "coco", prompts=4, size=32, seed=0)

    InProcessExecutor().train_experts(expert_jobs(_train_cfg(2), rd, ["coco"]))
    assert rd.read_json("experts", "coco", "expert.json")["resumed_from"] is None
    InProcessExecutor().train_experts(expert_jobs(_train_cfg(4), rd, ["coco"]))
    meta = rd.read_json("experts", "coco", "expert.json")
    assert meta["steps"] == 4 and meta["resumed_from"] == 2
    assert [int(s) for s, _ in meta["train_loss"]] == [1, 2, 3, 4]


def test_in_process_checkpoints_go_to_the_run_storage_and_resume_from_it(tiny_models):
    """On a run directory that is not on local disk (here fsspec's memory://, as for s3://),
    the in-process executor keeps the checkpoints beside the run, not in a local tempdir, and a
    later run resumes from them."""
    from selma_ray import layout
    from selma_ray.training.data import write_synthetic_skill
    from selma_ray.training.resume import checkpoint_steps
    from selma_ray.training.stage import expert_jobs

    rd = RunDir("memory://selma-inprocess-ckpt/run")
    write_synthetic_skill(rd, "coco", prompts=4, size=32, seed=0)

    def cfg(steps: int):
        return _train_cfg(steps, "train.num_to_keep=1")

    InProcessExecutor().train_experts(expert_jobs(cfg(2), rd, ["coco"]))
    uri = rd.url(*layout.train_dir(), layout.train_run_name("coco"))
    assert uri.startswith("memory://")
    assert [step for step, _ in checkpoint_steps(uri)] == [2]
    InProcessExecutor().train_experts(expert_jobs(cfg(4), rd, ["coco"]))
    assert [step for step, _ in checkpoint_steps(uri)] == [4]  # num_to_keep: 1
    meta = rd.read_json(*layout.expert_meta("coco"))
    assert meta["steps"] == 4 and meta["resumed_from"] == 2
