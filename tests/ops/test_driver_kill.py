"""Failure drill: SIGKILL `selma-ray run` in the middle of the images stage, then rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selma_ray.status import run_status

pytestmark = pytest.mark.slow

ARGS = [
    "--no-progress",
    "--set", "prompts.num_prompts=12",
    "--set", "prompts.skills=[coco, whoops]",
    "--set", "images.resolution=32",
    "--set", "images.steps=2",
    "--set", "images.rows_per_task=2",
    "--set", "train.max_steps=2",
    "--set", "train.checkpoint_every=2",
    "--set", "train.batch_size=2",
    "--set", "train.resolution=32",
    "--set", "eval.max_items=2",
]  # fmt: skip


def _cli(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "selma_ray.cli", "run", "--run-dir", str(run_dir), *ARGS]


def _stop_ray(env) -> None:
    ray_cli = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_killed_driver_resumes_skipping_finished_work(tiny_models, tmp_path):
    import ray

    ray.shutdown()  # this test runs its own drivers; the next test that needs Ray restarts it
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    run_dir = tmp_path / "run"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_cli(run_dir), env=env, stdout=log, stderr=subprocess.STDOUT)
    images = run_dir / "images"
    deadline = time.time() + 240
    drawn = 0
    while time.time() < deadline and proc.poll() is None:
        drawn = len(list(images.glob("*/*.png"))) if images.exists() else 0
        if drawn >= 4:
            break
        time.sleep(0.1)
    live = run_status(str(run_dir))  # what `selma-ray status` reads, mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    _stop_ray(env)  # what the dead driver's local Ray leaves behind
    assert drawn >= 4, (tmp_path / "first.log").read_text()[-3000:]
    assert live.alive and live.driver["pid"] == proc.pid and live.running_stage == "images"
    images_live = next(s for s in live.stages if s.name == "images")
    assert images_live.total == 24 and 4 <= images_live.done <= 24 and images_live.unit == "images"
    assert images_live.seconds > 0
    # another terminal, after the kill: the run is not running, the stage was interrupted
    status = subprocess.run(
        [sys.executable, "-m", "selma_ray.cli", "status", "--run-dir", str(run_dir)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr[-3000:]
    lines = status.stdout.splitlines()
    assert lines[1].startswith(f"not running: the driver (pid {proc.pid} on ")
    assert lines[1].endswith("so it was killed or lost")
    assert lines[2] == f"resume: selma-ray run --run-dir {run_dir} (same config)"
    table = {line.split()[0]: line.split()[1] for line in lines[4:]}
    assert table == {
        "prompts": "done", "images": "interrupted", "experts": "pending", "merge": "pending",
        "eval": "pending",
    }  # fmt: skip
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert manifest["prompts"]["status"] == "done"
    assert manifest["images"]["status"] == "running"
    before = {p: p.stat().st_mtime_ns for p in images.glob("*/*.png")}
    assert 0 < len(before) < 24, "killed too late to test resume"

    try:
        rerun = subprocess.run(_cli(run_dir), env=env, capture_output=True, text=True, timeout=600)
    finally:
        _stop_ray(env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "prompts: already done with this config (skipped)" in rerun.stdout
    # a quiet console: selma-ray's lines, not Ray's or the libraries' (those are in the log)
    console = (rerun.stderr + rerun.stdout).splitlines()
    assert len(console) <= 40, "\n".join(console)
    for internal in ("streaming_executor", "TrainingReport", "PlacementGroupCleaner",
                     "Loading weights", "requires torchvision", "Execution plan"):  # fmt: skip
        assert not [line for line in console if internal in line], internal
    assert "stage experts: done in " in rerun.stderr
    (log_file,) = [
        line.split("full log: ")[1].rstrip(")") for line in console if "full log" in line
    ]
    assert "Execution plan" in Path(log_file).read_text()  # Ray Data's lines, kept
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert {s: e["status"] for s, e in manifest.items()} == {
        s: "done" for s in ("prompts", "images", "experts", "merge", "eval")
    }
    # images drawn before the kill were kept, not redrawn; exactly one per prompt
    for path, mtime in before.items():
        assert path.stat().st_mtime_ns == mtime
    for skill in ("coco", "whoops"):
        meta = (images / skill / "metadata.jsonl").read_text().splitlines()
        assert len(meta) == 12 and len(list((images / skill).glob("*.png"))) == 12
    assert (run_dir / "merged" / "pytorch_lora_weights.safetensors").exists()
