"""Ray Train V2 launcher: concurrent experts, resume with the step count continuing."""

from __future__ import annotations

import pytest

from selma_ray.config import load_config
from selma_ray.storage import RunDir
from selma_ray.training.data import write_synthetic_skill

pytestmark = pytest.mark.slow


def _cfg(*extra):
    return load_config(
        overrides=[
            "prompts.skills=[coco, whoops]",
            "train.max_steps=4",
            "train.checkpoint_every=2",
            "train.batch_size=2",
            "train.resolution=32",
            "train.num_workers=1",
            "train.cpus_per_worker=1",
            *extra,
        ]
    )


@pytest.fixture
def run_dir(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    for i, skill in enumerate(["coco", "whoops"]):
        write_synthetic_skill(rd, skill, prompts=4, size=32, seed=i)
    return rd


def test_experts_train_concurrently_and_resume(ray_cluster, tiny_models, run_dir):
    from selma_ray.distributed import RayExecutor
    from selma_ray.distributed.train import train_experts
    from selma_ray.training.stage import expert_jobs, run_experts_stage

    cfg = _cfg("train.max_steps=2")
    # first "session": both experts stop at step 2 (as if the run had been cut there)
    first = train_experts(expert_jobs(cfg, run_dir, ["coco", "whoops"]))
    assert {s: r.metrics["step"] for s, r in first.items()} == {"coco": 2, "whoops": 2}
    assert all(r.checkpoint is not None for r in first.values())

    # second: the same Ray Train runs (storage path + name) resume and continue to step 4
    cfg4 = _cfg()
    second = train_experts(expert_jobs(cfg4, run_dir, ["coco", "whoops"]))
    for skill, result in second.items():
        assert result.metrics["step"] == 4
        meta = run_dir.read_json("experts", skill, "expert.json")
        assert meta["steps"] == 4 and meta["resumed_from"] == 2
        # the loss curve runs on from the checkpoint: steps 1-2 restored, 3-4 trained now
        assert [int(step) for step, _ in meta["train_loss"]] == [1, 2, 3, 4]
        assert [int(step) for step, _ in meta["val_loss"]] == [2, 4]
        assert run_dir.exists("experts", skill, "pytorch_lora_weights.safetensors")

    # the stage skips finished experts: nothing is retrained
    before = {
        s: run_dir.fs.modified(run_dir.path("experts", s, "pytorch_lora_weights.safetensors"))
        for s in ("coco", "whoops")
    }
    out = run_experts_stage(cfg4, run_dir, RayExecutor())
    assert set(out) == {"coco", "whoops"}
    after = {
        s: run_dir.fs.modified(run_dir.path("experts", s, "pytorch_lora_weights.safetensors"))
        for s in ("coco", "whoops")
    }
    assert before == after


def test_ray_refuses_a_memory_run_dir_for_training():
    from selma_ray.distributed import RayExecutor
    from selma_ray.training.stage import expert_jobs

    jobs = expert_jobs(_cfg(), RunDir("memory://x/run"), ["coco"])
    with pytest.raises(ValueError, match="memory://x/run.*cannot see"):
        RayExecutor().train_experts(jobs)


def test_stage_encodes_the_caches_on_ray_data_before_training(ray_cluster, tiny_models, run_dir):
    from selma_ray.distributed import RayExecutor
    from selma_ray.training.stage import run_experts_stage

    # a third skill whose images were never drawn: reported by the encoding pass, then its
    # expert fails naming it, while the other two experts finish
    cfg = _cfg(
        "train.max_steps=1",
        "train.cache_pool.max_size=2",
        "prompts.skills=[coco, whoops, countbench]",
    )
    with pytest.raises(RuntimeError, match="countbench"):
        run_experts_stage(cfg, run_dir, RayExecutor())
    summary = run_dir.read_json("cache", "encode.json")
    assert set(summary) == {"coco", "whoops", "countbench"}
    for skill in ("coco", "whoops"):
        assert summary[skill]["built"] is True and summary[skill]["error"] == ""
        assert summary[skill]["pairs"] == 4
        assert run_dir.exists("cache", skill, "inputs.safetensors")
        meta = run_dir.read_json("experts", skill, "expert.json")
        assert meta["cache"]["built"] is False  # the trainer read the Ray Data-built cache
    assert "'countbench'" in summary["countbench"]["error"]
    assert not run_dir.exists("experts", "countbench")
