"""The autoscaler adds nodes when the image stage's pool asks for them, and removes them after.

A cluster of a head with no CPUs and an autoscaler (Ray's real one, on Ray's fake multi-node
provider: :meth:`tests.ops.conftest.LocalCluster.start_head`) whose only node type carries 2
CPUs and 1 logical GPU (this machine has none). `selma-ray run` is the driver. The image pool
asks for one GPU per actor: the autoscaler launches nodes for it and removes them once they
have been idle for the timeout. Each actor that Ray gave a GPU finds no CUDA device: it refuses
to run on the CPU unless the run allows it (``ray.cpu_fallback``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from selma_ray import layout
from selma_ray.storage import RunDir
from tests.ops.conftest import LocalCluster

pytestmark = pytest.mark.slow

WORKER_TYPES = {
    "gpu_worker": {
        "resources": {"CPU": 2, "GPU": 1},
        "node_config": {},
        "min_workers": 0,
        "max_workers": 2,
    }
}
SETTINGS = [
    "prompts.num_prompts=6",
    "prompts.skills=[coco, whoops]",
    "images.resolution=32",
    "images.steps=2",
    "images.rows_per_task=2",
    "images.pool.min_size=1",
    "images.pool.max_size=2",
    "images.pool.gpus=1",
]


def _run(cluster: LocalCluster, uri: str, *extra: str) -> subprocess.CompletedProcess:
    """`selma-ray run` through stage 2 as a driver joining the cluster (as users run it)."""
    args = [a for setting in (*SETTINGS, *extra) for a in ("--set", setting)]
    return subprocess.run(
        [sys.executable, "-m", "selma_ray.cli", "run", "--address", cluster.address,
         "--run-dir", uri, "--stages", "prompts,images", "--no-progress", *args],
        env=cluster.env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def autoscaling(s3_env, _offline_cache, tiny_models):
    import boto3
    import ray

    ray.shutdown()  # the session's Ray; the drivers here are CLI processes
    c = LocalCluster(dict(os.environ), auth=False)
    c.start_head(worker_types=WORKER_TYPES)
    boto3.client("s3").create_bucket(Bucket="selma-autoscaling")
    try:
        yield c
    finally:
        c.stop()


class NodeCounter(threading.Thread):
    """Samples the number of live worker nodes (Ray's state API) about every second."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - self.t0, len(self.cluster.worker_nodes())))
            time.sleep(0.5)


def test_a_cluster_with_an_autoscaler_is_seen_as_able_to_grow(autoscaling):
    """The head runs Ray's autoscaler with a config's node types: a request its current
    nodes cannot hold stays a warning (the autoscaler may add a node for it)."""
    offer = autoscaling.offer()
    assert offer["can_grow"] is True
    assert "whose autoscaler may add nodes" in offer["where"]


def test_image_pool_scales_worker_nodes_up_then_idle_nodes_go(autoscaling):
    assert autoscaling.worker_nodes() == []  # the cluster starts without worker nodes
    counter = NodeCounter(autoscaling)
    counter.start()
    uri = "s3://selma-autoscaling/run"
    out = _run(autoscaling, uri, "ray.cpu_fallback=true")
    done_at = time.monotonic() - counter.t0
    deadline = time.time() + 120
    while autoscaling.worker_nodes() and time.time() < deadline:
        time.sleep(1)
    time.sleep(1)
    counter.stop.set()
    counter.join()
    assert out.returncode == 0, out.stderr[-3000:]
    counts = [n for _, n in counter.samples]
    rd = RunDir(uri)
    for skill in ("coco", "whoops"):
        assert len(rd.read_jsonl(*layout.images_metadata(skill))) == 6
    # up: nodes were added for the pool (two actors of one GPU each: two nodes)
    assert counts[0] == 0 and max(counts) == 2, counter.samples
    # down: after the stage, idle nodes are removed (idle timeout 6 s)
    after = [n for t, n in counter.samples if t > done_at]
    assert after and after[-1] == 0, counter.samples


def test_actor_given_a_gpu_without_cuda_refuses_naming_the_pool(autoscaling):
    """Without ray.cpu_fallback, the first image actor fails at once and says why."""
    uri = "s3://selma-autoscaling/refused"
    t0 = time.monotonic()
    out = _run(autoscaling, uri)
    assert out.returncode == 1, out.stderr[-3000:]
    assert time.monotonic() - t0 < 240  # not after endless actor restarts
    assert "selma-ray: stage images failed: " in out.stderr
    rd = RunDir(uri)
    (log_name,) = [n for n in rd.listdir(layout.LOGS) if n.startswith("driver-")]
    text = rd.read_text(layout.LOGS, log_name)  # the full traceback
    assert "ImageGenerator actor: Ray gave it 1 GPU (images.pool.gpus" in text, text[-3000:]
    assert "but torch finds no CUDA device: this torch" in text
    assert "set images.pool.gpus: 0 to run on CPUs" in text
    assert "ray.cpu_fallback: true" in text
    # no image was drawn on the CPU behind the user's back
    assert not rd.exists(layout.IMAGES, "coco")
