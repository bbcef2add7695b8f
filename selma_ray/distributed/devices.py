"""GPUs Ray reserved for an actor or training worker, and whether torch can use them.

Ray hands out GPUs as logical resources: a node may advertise GPUs (a node type's
``resources``, ``ray start --num-gpus``) that its torch cannot use (a CPU build of torch, no
driver, a fake node in a test cluster). The stage cores pick CUDA when torch finds it and the
CPU otherwise, so without this check such an actor would quietly run on the CPU, hours slower,
while holding a GPU. :func:`check_gpus_visible` runs first in every actor of a pool with
``gpus > 0``, in every training worker with ``train.use_gpu`` and in every Serve replica with
``serve.pool.gpus > 0``: it refuses, naming the config field and the fixes, unless the run
allows the CPU fallback (``ray.cpu_fallback``, or a rehearsal), when it warns and goes on.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["GpuNotVisible", "check_gpus_visible", "device_checked"]


class GpuNotVisible(RuntimeError):
    """Ray gave this process GPUs that torch cannot see, and the CPU fallback is off."""


def check_gpus_visible(who: str, fld: str, gpus: float, *, cpu_fallback: bool) -> bool:
    """In a Ray worker that asked for ``gpus`` GPUs (config field ``fld``): True when torch
    sees a CUDA device, False when it does not and ``cpu_fallback`` allows running on the CPU
    (logged as a warning); else :class:`GpuNotVisible` with what to do."""
    import torch

    if gpus <= 0 or torch.cuda.is_available():
        return True
    import ray

    ids: list[str] = []
    if ray.is_initialized():  # asked outside Ray, ray.get_gpu_ids() would start a local Ray
        try:
            ids = [str(i) for i in ray.get_gpu_ids()]
        except Exception:  # noqa: BLE001 - e.g. a Ray Client: say what the environment says
            ids = []
    why = (
        f"this torch ({torch.__version__}) is built without CUDA"
        if torch.version.cuda is None
        else "no CUDA driver or device is visible"
    )
    problem = (
        f"{who}: Ray gave it {gpus:g} GPU{'s' if gpus != 1 else ''} ({fld}; GPU ids "
        f"{ids or 'none'}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}) "
        f"but torch finds no CUDA device: {why}"
    )
    if cpu_fallback:
        log.warning("%s; running on the CPU (ray.cpu_fallback or a rehearsal)", problem)
        return False
    off = f"{fld}: false" if fld.endswith("use_gpu") else f"{fld}: 0"
    msg = (
        f"{problem}; install a CUDA build of torch on the GPU nodes, or set {off} to run on "
        "CPUs, or allow running on the CPU with ray.cpu_fallback: true"
    )
    raise GpuNotVisible(msg)


def device_checked(fn_cls: type, pool: Any, *, cpu_fallback: bool) -> type:
    """``fn_cls`` whose constructor first runs :func:`check_gpus_visible` for ``pool`` (an
    :class:`~selma_ray.config.ActorPool`); ``fn_cls`` itself when the pool asks for no GPU.
    The subclass keeps the class's name, so Ray's actor names stay ``...(ImageGenerator)``."""
    if not pool.gpus:
        return fn_cls
    gpus, fld = pool.gpus, f"{pool.field}.gpus"

    class Checked(fn_cls):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            check_gpus_visible(f"{fn_cls.__name__} actor", fld, gpus, cpu_fallback=cpu_fallback)
            super().__init__(*args, **kwargs)

    Checked.__name__ = fn_cls.__name__
    Checked.__qualname__ = fn_cls.__qualname__
    Checked.__doc__ = fn_cls.__doc__
    return Checked
