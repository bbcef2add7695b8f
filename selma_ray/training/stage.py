"""SELMA stage 3 as a pipeline stage: train every unfinished skill expert, concurrently.

An expert is finished when ``experts/<skill>/pytorch_lora_weights.safetensors`` and its
``expert.json`` exist; those are skipped. For the rest, the input caches are first encoded on a
Ray Data actor pool (``train.cache_inputs``; a summary goes to ``cache/encode.json``), then the
experts are launched together on Ray Train (``selma_ray.distributed.train``), each resuming
from its own latest checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any

from selma_ray.config import SelmaConfig
from selma_ray.storage import RunDir

log = logging.getLogger(__name__)

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
        storage = train_storage_path(cfg, run_dir)
        if cfg.train.cache_inputs:
            encode_caches(cfg, run_dir, todo)
        train_experts(cfg, todo, run_dir.uri, storage)
    missing = [s for s in skills if not expert_done(run_dir, s)]
    if missing:
        msg = f"training ended without an expert for {missing}; see the logs, then rerun to resume"
        raise RuntimeError(msg)
    return {s: run_dir.read_json(EXPERTS_DIR, s, "expert.json") for s in skills}


def encode_caches(cfg: SelmaConfig, run_dir: RunDir, skills: list[str]) -> dict[str, Any]:
    """Encode ``skills``' input caches on Ray Data; the summary is kept in ``cache/encode.json``.

    Not fatal: if the encoding job itself fails (an actor that keeps dying, say), each expert's
    training worker encodes its own inputs instead, so the stage still finishes; a skill with
    unusable data is reported here and fails in training with its own error.
    """
    from selma_ray.distributed.train import encode_input_caches

    try:
        rows = encode_input_caches(cfg, skills, run_dir.uri)
    except Exception as e:  # noqa: BLE001 - training falls back to encoding in its workers
        log.warning(
            "encoding the input caches on Ray Data failed (%s: %s); each expert's training "
            "worker encodes its own inputs instead",
            type(e).__name__,
            e,
        )
        return {}
    for skill, row in rows.items():
        if row["error"]:
            log.warning("input cache for skill %r not built: %s", skill, row["error"])
        else:
            log.info(
                "input cache for skill %r: %s (%d pairs, %.1f s)",
                skill,
                "built" if row["built"] else "up to date",
                row["pairs"],
                row["seconds"],
            )
    summary = (
        dict(run_dir.read_json("cache", "encode.json"))
        if run_dir.exists("cache", "encode.json")
        else {}
    )
    summary.update(rows)
    run_dir.write_json(summary, "cache", "encode.json")
    return rows
