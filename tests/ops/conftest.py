"""A Ray cluster of several nodes on this machine, started the way a real one is: `ray start`.

:class:`LocalCluster` runs a head (no CPUs: it holds the drivers and Ray's services, as on a
real cluster) and worker nodes, each its own raylet with its own object store and workers,
joined with ``ray start --address``. :meth:`LocalCluster.kill_node` SIGKILLs one node's raylet:
its workers die with it and the GCS marks the node dead, as when a machine is lost.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Lost nodes noticed within a few seconds (Ray's defaults take about 30 s).
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """Head + worker raylets on this host; every process inherits ``env`` (e.g. AWS_*) and
    the cluster's auth token (``self.env``: use it for every CLI call and driver)."""

    def __init__(self, env: dict[str, str], *, auth: bool = True) -> None:
        # short: Ray's socket paths under it must fit AF_UNIX's 107 bytes
        self.temp_dir = Path(tempfile.mkdtemp(prefix="selma-ray-"))
        self.workers_started = 0
        self.port = free_port()
        self.dashboard_port = free_port()
        self.env = {
            **env,
            # as with an activated venv: `python` and `ray` in jobs are this interpreter's
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        if auth:  # token authentication, as Ray 2.60 clusters use by default
            self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
        else:  # e.g. for a driver in the test process, which does not hold the token
            self.env.update(RAY_AUTH_MODE="disabled")

    @property
    def address(self) -> str:
        """The GCS address drivers connect to (``ray.init`` / ``--address``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        """The dashboard URL (jobs, state API, Serve REST)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.ray_tool("ray", *args, timeout=timeout)

    def ray_tool(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run one of Ray's CLIs (``ray``, ``serve``) of this interpreter against the cluster."""
        exe = str(Path(sys.executable).with_name(tool))
        return subprocess.run(
            [exe, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def start_head(self, worker_types: dict[str, dict] | None = None) -> None:
        """Start the head (no CPUs). With ``worker_types`` (autoscaler node types), Ray's real
        autoscaler runs on it with Ray's fake multi-node provider, which launches and
        terminates those nodes as raylets on this host, as ``ray.cluster_utils.
        AutoscalingCluster`` does (whose template config the Ray wheel does not ship)."""
        args = []
        if worker_types is not None:
            config = self.temp_dir / "autoscaling.json"
            config.write_text(json.dumps(self.autoscaling_config(worker_types)))
            args = [f"--autoscaling-config={config}"]
            # the provider refuses to run without RAY_FAKE_CLUSTER; decisions every second
            self.env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        out = self.ray(
            "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
            "--num-cpus", "0", "--num-gpus", "0", "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--temp-dir", str(self.temp_dir / "h"),
            "--system-config", json.dumps(FAST_NODE_DEATH, separators=(",", ":")),
            "--disable-usage-stats", *args,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]

    def autoscaling_config(self, worker_types: dict[str, dict]) -> dict:
        """A cluster config for the fake multi-node provider (Ray's fake_multi_node example)."""
        from ray._private.services import get_node_ip_address

        return {
            "cluster_name": "selma-fake",
            "max_workers": sum(t["max_workers"] for t in worker_types.values()),
            "provider": {
                "type": "fake_multinode",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
                "gcs_address": f"{get_node_ip_address()}:{self.port}",
            },
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                **worker_types,
            },
            "head_node_type": "ray.head.default",
            "auth": {},
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": 0.1,  # idle workers go after 6 s
            "docker": {},
            **dict.fromkeys(
                [
                    "initialization_commands",
                    "setup_commands",
                    "head_setup_commands",
                    "worker_setup_commands",
                    "head_start_ray_commands",
                    "worker_start_ray_commands",
                    "cluster_synced_files",
                    "rsync_exclude",
                    "rsync_filter",
                ],
                [],
            ),  # fmt: skip
            "file_mounts": {},
            "file_mounts_sync_continuously": False,
        }

    def add_worker(self, cpus: int = 2) -> str:
        """Start a worker node; its node id once the GCS lists it alive."""
        before = set(self.alive_nodes())
        self.workers_started += 1
        # its own session directory, as on its own machine: nodes sharing one would unpack a
        # job's working_dir into the same folder at once
        out = self.ray(
            "start", "--address", self.address, "--node-ip-address", "127.0.0.1",
            "--num-cpus", str(cpus), "--temp-dir", str(self.temp_dir / f"w{self.workers_started}"),
            "--disable-usage-stats",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        deadline = time.time() + 60
        while time.time() < deadline:
            new = set(self.alive_nodes()) - before
            if new:
                return new.pop()
            time.sleep(0.5)
        raise AssertionError("the new worker node never joined")

    def offer(self) -> dict:
        """What the preflight check sees of this cluster (``cluster_offer()``) from a driver
        joining it, once the head's monitor has reported (a few seconds after its start)."""
        script = (
            "import dataclasses, json, sys, time, ray\n"
            "from selma_ray.distributed import resources\n"
            "ray.init(address=sys.argv[1], log_to_driver=False)\n"
            "gcs = ray.get_runtime_context().gcs_address\n"
            "deadline = time.time() + 30\n"
            "while resources._autoscaler_can_add_nodes(gcs) is None and time.time() < deadline:\n"
            "    time.sleep(0.5)\n"
            "print(json.dumps(dataclasses.asdict(resources.cluster_offer())))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, self.address], env=self.env, cwd=ROOT,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def state(self, kind: str) -> list[dict]:
        """``ray list <kind>`` (Ray's state API through its CLI, with the cluster's token)."""
        out = self.ray(
            "list", kind, "--address", self.dashboard, "--format", "json", "--detail",
            "--limit", "10000",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        text = out.stdout.strip()
        return json.loads(text) if text.startswith("[") else []  # else "No resource in ..."

    def alive_nodes(self) -> dict[str, dict]:
        """Alive nodes by id (the head included)."""
        return {n["node_id"]: n for n in self.state("nodes") if n["state"] == "ALIVE"}

    def worker_nodes(self) -> list[str]:
        return [i for i, n in self.alive_nodes().items() if not n["is_head_node"]]

    def actors(self, name_part: str, *, alive_only: bool = False) -> list[dict]:
        """Actors whose class name contains ``name_part`` (dead ones too unless ``alive_only``)."""
        return [
            a
            for a in self.state("actors")
            if name_part in (a.get("class_name") or "")
            and (not alive_only or a["state"] == "ALIVE")
        ]

    def kill_node(self, node_id: str) -> None:
        """SIGKILL the node's raylet (its workers exit with it); wait until the GCS sees it dead."""
        pids = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _raylet_of(p, node_id)
        ]
        assert len(pids) == 1, f"raylet of node {node_id}: {pids}"
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.time() + 60
        while node_id in self.alive_nodes():
            assert time.time() < deadline, f"node {node_id} still alive after its raylet died"
            time.sleep(0.5)

    def stop(self) -> None:
        self.ray("stop", "--force")
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _raylet_of(proc: Path, node_id: str) -> bool:
    try:
        args = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(args) and args[0].endswith(b"/raylet") and f"--node_id={node_id}".encode() in args
