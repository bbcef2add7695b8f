"""benchmarks/recipe_time.py: the extrapolated recipe wall time is the preset's work over the
per-GPU rates, stage by stage (independent arithmetic on the sd15 preset's numbers)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def recipe_time():
    spec = importlib.util.spec_from_file_location("recipe_time", BENCHMARKS / "recipe_time.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["recipe_time"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def _run(recipe_time, tmp_path, *args: str) -> dict:
    out = tmp_path / "recipe.json"
    assert recipe_time.main(["--preset", "sd15", *args, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_sd15_stages_are_the_presets_work_over_the_rates(recipe_time, tmp_path):
    got = _run(recipe_time, tmp_path, "--gpus", "8", "--images-per-s", "3.0",
               "--images-steps", "30", "--train-samples-per-s", "50")  # fmt: skip
    stages = {s["name"]: s for s in got["stages"]}
    # sd15: 5 skills x 1,000 prompts, one image each at 50 steps; 3 images/s at 30 steps is
    # 1.8 at 50 per GPU
    assert stages["2 images"]["seconds"] == pytest.approx(5000 / (8 * 1.8))
    # 5 experts + the joint LoRA, 5,000 steps x 16 x 4 samples, one GPU each: all at once on 8
    assert stages["3 experts"]["seconds"] == pytest.approx(5000 * 64 / 50)
    # eval: base, 5 experts, merged, joint on DSG-1k and the 10 % held-out skill prompts
    images = 8 * (1060 + 500)
    questions = 8 * (8182 + 500 * recipe_time.ASSUMED["questions_per_prompt"])
    vqa = recipe_time.ASSUMED["vqa_questions_per_s"]
    assert stages["5 eval"]["seconds"] == pytest.approx(images / (8 * 1.8) + questions / (8 * vqa))
    assert got["total_s"] == pytest.approx(sum(s["seconds"] for s in got["stages"]))
    assert stages["3 experts"]["source"] == "given"
    assert stages["1 prompts"]["source"] == "assumed"


def test_experts_run_in_waves_when_the_gpus_are_fewer_than_the_runs(recipe_time, tmp_path):
    one = _run(recipe_time, tmp_path, "--gpus", "8", "--train-samples-per-s", "50")
    four = _run(recipe_time, tmp_path, "--gpus", "4", "--train-samples-per-s", "50")
    experts = [{s["name"]: s for s in r["stages"]}["3 experts"]["seconds"] for r in (one, four)]
    assert experts[1] == pytest.approx(math.ceil(6 / 4) * experts[0])  # 6 runs, 4 at once


def test_rates_come_from_a_gpu_check_summary(recipe_time, tmp_path):
    summary = tmp_path / "summary.json"
    rates = {"images_per_s_batched": 6.0, "train_samples_per_s": 160.0}
    summary.write_text(json.dumps({"device": "NVIDIA H200", "date": "2026-12-01", **rates}))
    got = _run(recipe_time, tmp_path, "--summary", str(summary))
    assert got["rates"]["images_per_s"] == 6.0 and got["rates"]["train_samples_per_s"] == 160.0
    assert got["sources"]["train_samples_per_s"] == "NVIDIA H200, 2026-12-01"
    stages = {s["name"]: s for s in got["stages"]}
    assert stages["2 images"]["seconds"] == pytest.approx(5000 / (8 * 6.0 * 30 / 50))
