"""SELMA stage 3 as a pipeline stage: train every unfinished skill expert, concurrently.

An expert is finished when ``experts/<skill>/pytorch_lora_weights.safetensors`` and its
``expert.json`` exist; those are skipped, and the rest are launched together on Ray Train
(``selma_ray.distributed.train``), each resuming from its own latest checkpoint.
"""

from __future__ import annotations

from typing import Any

from selma_ray.config import SelmaConfig
from selma_ray.storage import RunDir

EXPERTS_DIR = "experts"
LORA_FILE = "pytorch_lora_weights.safetensors"


def expert_done(run_dir: RunDir, skill: str) -> bool:
    return run_dir.exists(EXPERTS_DIR, skill, LORA_FILE) and run_dir.exists(
        EXPERTS_DIR, skill, "expert.json"
    )


def train_storage_path(cfg: SelmaConfig, run_dir: RunDir) -> str:
    """Where Ray Train keeps runs: ``train.storage_path`` or ``<run_dir>/train``."""
    if cfg.train.storage_path:
        return cfg.train.storage_path
    from fsspec.implementations.memory import MemoryFileSystem

    if isinstance(run_dir.fs, MemoryFileSystem):
        msg = (
            f"run directory {run_dir.uri} is in this process's memory, which Ray Train workers "
            "cannot reach: set train.storage_path to a local path or cloud URI"
        )
        raise ValueError(msg)
    return run_dir.url("train")


def run_experts_stage(cfg: SelmaConfig, run_dir: RunDir) -> dict[str, Any]:
    """Train the experts that are not finished; returns per-skill expert metadata."""
    from selma_ray.distributed.train import train_experts

    skills = [s.name for s in cfg.prompts.skills]
    todo = [s for s in skills if not expert_done(run_dir, s)]
    if todo:
        train_experts(cfg, todo, run_dir.uri, train_storage_path(cfg, run_dir))
    missing = [s for s in skills if not expert_done(run_dir, s)]
    if missing:
        msg = f"training ended without an expert for {missing}; see the logs, then rerun to resume"
        raise RuntimeError(msg)
    return {s: run_dir.read_json(EXPERTS_DIR, s, "expert.json") for s in skills}
