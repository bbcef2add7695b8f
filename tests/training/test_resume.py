"""Finding the newest complete expert checkpoint on any fsspec storage."""

from __future__ import annotations

import os

import fsspec
import torch

from selma_ray.training.loop import ExpertCheckpoint
from selma_ray.training.resume import checkpoint_steps, latest_checkpoint


def _ckpt(step: int) -> ExpertCheckpoint:
    return ExpertCheckpoint(
        step=step,
        lora={"w": torch.full((2, 2), float(step))},
        optimizer={"state": {}, "param_groups": []},
        rng={"torch": torch.random.get_rng_state()},
        state={"train_curve": [[step, 1.0]]},
    )


def test_newest_whole_checkpoint_wins_and_a_torn_one_is_skipped(tmp_path):
    root = tmp_path / "expert-coco"
    for step in (2, 4, 6):
        _ckpt(step).to_dir(str(root / f"checkpoint_{step:06d}"))
    # step 8 died mid-write: its state file is there, its LoRA is not
    torn = root / "checkpoint_000008"
    _ckpt(8).to_dir(str(torn))
    os.remove(torn / "lora.safetensors")
    # a folder with no state file is not a checkpoint at all; other names are ignored
    (root / "checkpoint_000010").mkdir()
    (root / "notes").mkdir()
    assert [s for s, _ in checkpoint_steps(str(root))] == [8, 6, 4, 2]
    latest = latest_checkpoint(str(root))
    assert latest is not None and latest.step == 6
    assert torch.equal(latest.lora["w"], torch.full((2, 2), 6.0))
    assert latest_checkpoint(str(tmp_path / "nothing-here")) is None


def test_checkpoint_on_an_object_store_uri_is_fetched_and_loaded(tmp_path):
    local = tmp_path / "ckpt"
    _ckpt(4).to_dir(str(local))
    fs = fsspec.filesystem("memory")
    for name in os.listdir(local):
        fs.pipe_file(f"/resume-test/expert-x/checkpoint_a/{name}", (local / name).read_bytes())
    latest = latest_checkpoint("memory://resume-test/expert-x")
    assert latest is not None and latest.step == 4
    assert torch.equal(latest.lora["w"], torch.full((2, 2), 4.0))
    assert latest.state["train_curve"] == [[4, 1.0]]
