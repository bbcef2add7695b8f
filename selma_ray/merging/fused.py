"""The fused pipeline of a merge: the base pipeline with the merged LoRA baked into its weights."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
import warnings
from typing import Any

from selma_ray import layout
from selma_ray.config import SelmaConfig
from selma_ray.storage import RunDir

__all__ = ["ADAPTER_NAME", "export_fused"]

ADAPTER_NAME = "selma_merged"


def _load_base_pipeline(cfg: SelmaConfig, base_model: str) -> Any:
    import torch
    from diffusers import DiffusionPipeline

    from selma_ray.models import resolve_model

    path = resolve_model(base_model, cfg.storage.cache_dir)
    try:
        with warnings.catch_warnings():
            # diffusers >= 0.40 renames torch_dtype -> dtype; older ones only know torch_dtype
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32)
    except OSError as e:
        msg = (
            f"base model {base_model!r} (resolved to {path!r}) of the experts could not be "
            f"loaded as a diffusers pipeline for merge.export_fused: {e}"
        )
        raise OSError(msg) from e
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _fuse(pipe: Any, lora_bytes: bytes, tmp: str) -> None:
    """Load the LoRA file's bytes into ``pipe`` and fuse it into the weights (scale 1)."""
    lora_dir = os.path.join(tmp, "lora")
    os.makedirs(lora_dir)
    with open(os.path.join(lora_dir, layout.LORA_FILE), "wb") as f:
        f.write(lora_bytes)
    pipe.load_lora_weights(lora_dir, adapter_name=ADAPTER_NAME)
    pipe.fuse_lora(lora_scale=1.0, adapter_names=[ADAPTER_NAME])
    pipe.unload_lora_weights()  # keeps the fused weights, drops the LoRA layers


def export_fused(
    cfg: SelmaConfig, run_dir: RunDir, base_model: str, lora_bytes: bytes, card: str
) -> float:
    """Write ``layout.merged_pipeline()``: the base pipeline with the LoRA fused in, with the
    model card as its README.md; returns the seconds it took.

    A local run directory gets the pipeline saved next to its place and renamed into it, so a
    reader never sees half a pipeline; a remote one gets it uploaded from a temporary folder.
    """
    started = time.perf_counter()
    target = layout.merged_pipeline()
    *parent, name = target
    pipe = _load_base_pipeline(cfg, base_model)
    with tempfile.TemporaryDirectory(prefix="selma-merge-") as tmp:
        _fuse(pipe, lora_bytes, tmp)
        if run_dir.is_local:
            staging = run_dir.path(*parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        else:
            staging = os.path.join(tmp, name)
        try:
            pipe.save_pretrained(staging, safe_serialization=True)
            with open(os.path.join(staging, layout.MODEL_CARD_FILE), "w", encoding="utf-8") as f:
                f.write(card)
            run_dir.remove(*target)
            if run_dir.is_local:
                os.replace(staging, run_dir.path(*target))
            else:
                run_dir.fs.put(staging, run_dir.path(*target), recursive=True)
        finally:
            if run_dir.is_local and os.path.isdir(staging):
                shutil.rmtree(staging, ignore_errors=True)
    return time.perf_counter() - started
