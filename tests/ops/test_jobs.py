"""The tiny pipeline submitted as a Ray job with the real `ray job submit` CLI."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def local_cluster(tmp_path_factory, tiny_models):
    import ray

    ray.shutdown()  # the test session's in-process Ray; the next test that needs it restarts it
    port, dash = _free_port(), _free_port()
    temp_dir = tmp_path_factory.mktemp("rayjob")
    # token authentication, as Ray 2.60 clusters use by default: the CLI reads the same token
    env = {
        **os.environ,
        # as with an activated venv: the job's `python` is this interpreter
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    subprocess.run(
        [_ray_cli(), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard",
         "true", "--num-cpus", "2", "--temp-dir", str(temp_dir), "--disable-usage-stats"],
        check=True, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        subprocess.run([_ray_cli(), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray(env, *args, timeout=120):
    return subprocess.run(
        [_ray_cli(), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_pipeline_runs_as_a_ray_job(local_cluster, tmp_path):
    address, env = local_cluster
    run_dir = tmp_path / "run"
    submit = [
        "job", "submit", "--address", address, "--working-dir", str(ROOT),
        "--submission-id", "selma-tiny-test", "--no-wait", "--",
        "python", "jobs/run_pipeline.py", "--run-dir", str(run_dir), "--no-progress",
        "--set", "prompts.num_prompts=2", "--set", "prompts.skills=[coco]",
        "--set", "images.resolution=32", "--set", "images.steps=2",
        "--set", "train.max_steps=2", "--set", "train.checkpoint_every=2",
        "--set", "train.batch_size=2", "--set", "train.resolution=32",
        "--set", "eval.max_items=2",
    ]  # fmt: skip
    deadline = time.time() + 90
    while True:  # the job agent comes up a few seconds after `ray start`
        out = _ray(env, *submit)
        if out.returncode == 0 or time.time() > deadline:
            break
        assert "No available agent" in out.stderr + out.stdout, out.stderr[-3000:]
        time.sleep(2)
    assert out.returncode == 0, out.stderr[-3000:]

    deadline = time.time() + 540
    state = ""
    while time.time() < deadline:
        state = _ray(env, "job", "status", "--address", address, "selma-tiny-test").stdout
        if any(s in state.upper() for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(3)
    logs = _ray(env, "job", "logs", "--address", address, "selma-tiny-test").stdout
    assert "SUCCEEDED" in state.upper(), logs[-4000:]
    assert "run directory:" in logs and "experts: done" in logs
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {s: e["status"] for s, e in manifest["stages"].items()} == {
        s: "done" for s in ("prompts", "images", "experts", "merge", "eval")
    }
    assert (run_dir / "experts" / "coco" / "pytorch_lora_weights.safetensors").exists()
    assert (run_dir / "merged" / "pytorch_lora_weights.safetensors").exists()
    assert (run_dir / "eval" / "report.html").exists()
    assert len((run_dir / "prompts" / "coco.jsonl").read_text().splitlines()) == 2
