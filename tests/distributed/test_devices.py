"""The GPU check that actors, training workers and replicas run first (no CUDA on this box)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from selma_ray.config import load_config
from selma_ray.distributed.devices import GpuNotVisible, check_gpus_visible, device_checked

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


class Doubler:
    def __init__(self, factor: int = 2) -> None:
        self.factor = factor


def test_no_gpu_asked_is_fine():
    assert check_gpus_visible("x", "images.pool.gpus", 0, cpu_fallback=False) is True


def test_training_worker_given_a_gpu_without_cuda_names_the_field_and_fixes():
    with pytest.raises(GpuNotVisible) as e:
        check_gpus_visible("expert 'coco' training worker", "train.use_gpu", 1, cpu_fallback=False)
    msg = str(e.value)
    assert msg.startswith("expert 'coco' training worker: Ray gave it 1 GPU (train.use_gpu; ")
    assert f"this torch ({torch.__version__}) is built without CUDA" in msg
    assert msg.endswith(
        "install a CUDA build of torch on the GPU nodes, or set train.use_gpu: false to run on "
        "CPUs, or allow running on the CPU with ray.cpu_fallback: true"
    )


def test_the_check_outside_ray_starts_no_ray():
    """Asked in a process without Ray (the in-process executor), the message is written
    without ``ray.get_gpu_ids()``, which would start a local Ray to answer."""
    code = (
        "import ray\n"
        "from selma_ray.distributed.devices import check_gpus_visible\n"
        "check_gpus_visible('x', 'images.pool.gpus', 1, cpu_fallback=True)\n"
        "print('ray started:', ray.is_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ray started: False"


def test_cpu_fallback_warns_and_goes_on(caplog):
    with caplog.at_level(logging.WARNING, logger="selma_ray.distributed.devices"):
        ok = check_gpus_visible("SelmaImageModel replica", "serve.pool.gpus", 2, cpu_fallback=True)
    assert ok is False
    (record,) = caplog.records
    assert "SelmaImageModel replica: Ray gave it 2 GPUs (serve.pool.gpus" in record.message
    assert record.message.endswith("running on the CPU (ray.cpu_fallback or a rehearsal)")


def test_device_checked_pool_class_checks_before_building_and_keeps_the_name():
    cfg = load_config(overrides=["eval.pool.gpus=1"])
    assert device_checked(Doubler, load_config().eval.pool, cpu_fallback=False) is Doubler
    checked = device_checked(Doubler, cfg.eval.pool, cpu_fallback=False)
    assert checked.__name__ == "Doubler" and issubclass(checked, Doubler)
    with pytest.raises(GpuNotVisible, match=r"^Doubler actor: .*\(eval\.pool\.gpus; .*eval\.pool"):
        checked(factor=3)
    lenient = device_checked(Doubler, cfg.eval.pool, cpu_fallback=True)
    assert lenient(factor=3).factor == 3
