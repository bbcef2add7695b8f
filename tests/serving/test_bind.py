"""`selma-ray serve` started without a host listens on loopback only (checked in the OS's
socket table); no traffic goes anywhere but 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_default_bind_is_loopback_only(served_run_dir, tmp_path):
    import httpx
    import psutil

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "selma_ray.cli", "serve",
            "--run-dir", served_run_dir["path"],
            "--port", str(port),
            "--arg", "serve.pool.cpus=0.5",
            "--arg", "torch_threads=1",
        ],  # fmt: skip
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        up = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                up = False
            if up:
                break
            time.sleep(1)
        assert up, (tmp_path / "serve.log").read_text()[-3000:]
        listening = [
            c
            for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
        ]
        assert listening, "nothing listens on the serve port"
        assert {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == "base"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
