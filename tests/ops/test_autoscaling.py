"""The autoscaler adds nodes when the image stage's pool asks for them, and removes them after.

A cluster of a head with no CPUs and an autoscaler (Ray's real one, on Ray's fake multi-node
provider: :meth:`tests.ops.conftest.LocalCluster.start_head`) whose only node type carries 2
CPUs and 1 logical GPU (this machine has none). The test process is the driver. The image pool
asks for one GPU per actor: the autoscaler launches nodes for it and removes them once they
have been idle for the timeout. Each actor that Ray gave a GPU finds no CUDA device: it refuses
to run on the CPU unless the run allows it (``ray.cpu_fallback``).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from selma_ray import layout
from selma_ray.config import load_config
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


@pytest.fixture(scope="module")
def autoscaling(s3_env, _offline_cache, tiny_models):
    """The cluster, and this process connected to it as the driver."""
    import boto3
    import ray

    ray.shutdown()
    c = LocalCluster(dict(os.environ), auth=False)
    c.start_head(worker_types=WORKER_TYPES)
    boto3.client("s3").create_bucket(Bucket="selma-autoscaling")
    try:
        ray.init(address=c.address, log_to_driver=False, configure_logging=False)
        yield c
    finally:
        ray.shutdown()
        c.stop()


def _workers() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU"))


class NodeCounter(threading.Thread):
    """Samples the number of live worker nodes every half second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - t0, _workers()))
            time.sleep(0.5)


def test_image_pool_scales_worker_nodes_up_then_idle_nodes_go(autoscaling):
    from selma_ray.distributed import RayExecutor
    from selma_ray.pipeline import run_pipeline

    assert _workers() == 0  # the cluster starts without worker nodes
    counter = NodeCounter()
    counter.start()
    uri = "s3://selma-autoscaling/run"
    cfg = load_config(overrides=SETTINGS)
    summary = run_pipeline(
        cfg, uri, stages=["prompts", "images"], executor=RayExecutor(cpu_fallback=True)
    )
    done_at = counter.samples[-1][0]
    deadline = time.time() + 120
    while _workers() and time.time() < deadline:
        time.sleep(1)
    time.sleep(1)
    counter.stop.set()
    counter.join()
    counts = [n for _, n in counter.samples]
    assert summary.ran == ["prompts", "images"]
    rd = RunDir(uri)
    for skill in ("coco", "whoops"):
        assert len(rd.read_jsonl(*layout.images_metadata(skill))) == 6
    # up: nodes were added for the pool (two actors of one GPU each: two nodes)
    assert counts[0] == 0 and max(counts) == 2, counter.samples
    # down: after the stage, idle nodes are removed (idle timeout 6 s)
    after = [n for t, n in counter.samples if t > done_at]
    assert after and after[-1] == 0, counter.samples


def test_actor_given_a_gpu_without_cuda_refuses_naming_the_pool(autoscaling, tmp_path):
    """Without ray.cpu_fallback, the first image actor fails at once and says why."""
    from selma_ray.distributed import RayExecutor
    from selma_ray.pipeline import run_pipeline

    cfg = load_config(overrides=SETTINGS)
    t0 = time.monotonic()
    with pytest.raises(Exception) as e:  # noqa: PT011 - Ray wraps the actor's error
        run_pipeline(
            cfg, "s3://selma-autoscaling/refused", stages=["prompts", "images"],
            executor=RayExecutor(),
        )  # fmt: skip
    text = str(e.value)
    assert "ImageGenerator actor: Ray gave it 1 GPU (images.pool.gpus" in text, text[-3000:]
    assert "but torch finds no CUDA device: this torch" in text
    assert "set images.pool.gpus: 0 to run on CPUs" in text
    assert "ray.cpu_fallback: true" in text
    assert time.monotonic() - t0 < 180  # not after endless actor restarts
    # no image was drawn on the CPU behind the user's back
    assert not RunDir("s3://selma-autoscaling/refused").exists(layout.IMAGES, "coco")
