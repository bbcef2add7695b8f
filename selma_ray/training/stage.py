"""SELMA stage 3 as a pipeline stage: train every unfinished skill expert, concurrently.

An expert is finished when its LoRA file and ``expert.json`` exist in the run directory; those
are skipped. For the rest, the input caches are first encoded by a map of
:class:`~selma_ray.training.encoder.CacheEncoder` over the skills on the executor
(``train.cache_inputs``, on ``train.cache_pool``; a summary goes to the cache summary file),
then the executor trains one expert per skill (on Ray: all at once on Ray Train), each resuming
from its own latest checkpoint. With ``train.joint``, one more job trains the paper's joint
baseline beside them: the expert :data:`~selma_ray.layout.JOINT`, one LoRA on the union of every
skill's pairs with the same recipe, steps and held-out prompts (each skill's own split).
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from typing import Any

from selma_ray import layout
from selma_ray.config import SelmaConfig
from selma_ray.execution import Executor, ExpertJob
from selma_ray.storage import RunDir, open_filesystem

log = logging.getLogger(__name__)


def expert_done(run_dir: RunDir, skill: str) -> bool:
    return run_dir.exists(*layout.expert_lora(skill)) and run_dir.exists(*layout.expert_meta(skill))


def train_storage_path(cfg: SelmaConfig, run_dir: RunDir) -> str:
    """Where expert checkpoints live: the run directory's train/, or with ``train.storage_path``
    this run's own folder in it (:func:`run_storage_name`), so that two runs sharing a storage
    path never resume from each other's checkpoints.

    A URI (an absolute path when local); the Ray layer opens an object store through the run
    directory's fsspec filesystem (:func:`selma_ray.storage.arrow_filesystem`)."""
    if cfg.train.storage_path:
        return posixpath.join(cfg.train.storage_path.rstrip("/"), run_storage_name(run_dir))
    return run_dir.url(*layout.train_dir())


def run_storage_name(run_dir: RunDir) -> str:
    """A run's folder name under a shared ``train.storage_path``: the run directory's name and
    a hash of its full URI (the same for every rerun of that run, another for any other)."""
    url = run_dir.url().rstrip("/")
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return f"{posixpath.basename(url) or 'run'}-{digest}"


def discard_checkpoints(cfg: SelmaConfig, run_dir: RunDir) -> None:
    """Remove this run's expert checkpoints kept outside the run directory
    (``train.storage_path``), as ``--redo experts`` discards the stage's outputs: otherwise the
    redone experts would resume from the old ones."""
    if not cfg.train.storage_path:
        return  # under the run directory: the stage's outputs (train/) cover them
    fs, path = open_filesystem(train_storage_path(cfg, run_dir))
    if fs.exists(path):
        fs.rm(path, recursive=True)


def job_names(cfg: SelmaConfig) -> list[str]:
    """The experts stage's jobs: one per skill, then the joint baseline with ``train.joint``."""
    skills = [s.name for s in cfg.prompts.skills]
    return [*skills, layout.JOINT] if cfg.train.joint else skills


def job_sources(cfg: SelmaConfig, name: str) -> tuple[str, ...]:
    """The skills whose pairs job ``name`` trains on (empty: its own)."""
    return tuple(s.name for s in cfg.prompts.skills) if name == layout.JOINT else ()


def expert_jobs(cfg: SelmaConfig, run_dir: RunDir, skills: list[str]) -> list[ExpertJob]:
    storage = train_storage_path(cfg, run_dir)
    return [
        ExpertJob(
            skill=skill,
            train=cfg.train,
            run_dir_uri=run_dir.uri,
            base_model=cfg.train.base_model or cfg.images.model,
            storage_path=storage,
            model_cache_dir=cfg.storage.cache_dir,
            seed=cfg.seed,
            sources=job_sources(cfg, skill),
        )
        for skill in skills
    ]


def run_experts_stage(cfg: SelmaConfig, run_dir: RunDir, executor: Executor) -> dict[str, Any]:
    """Train the experts (and the joint baseline) that are not finished; returns per-job
    expert metadata."""
    skills = job_names(cfg)
    todo = [s for s in skills if not expert_done(run_dir, s)]
    if todo:
        if cfg.train.cache_inputs:
            encode_caches(cfg, run_dir, todo, executor)
        executor.train_experts(expert_jobs(cfg, run_dir, todo))
    missing = [s for s in skills if not expert_done(run_dir, s)]
    if missing:
        msg = f"training ended without an expert for {missing}; see the logs, then rerun to resume"
        raise RuntimeError(msg)
    return {s: run_dir.read_json(*layout.expert_meta(s)) for s in skills}


def encode_caches(
    cfg: SelmaConfig, run_dir: RunDir, skills: list[str], executor: Executor
) -> dict[str, Any]:
    """Encode ``skills``' input caches (one skill per task, at most one actor per skill); the
    summary is kept in the cache summary file.

    Not fatal: if the encoding job itself fails (an actor that keeps dying, say), each expert's
    training worker encodes its own inputs instead, so the stage still finishes; a skill with
    unusable data is reported here and fails in training with its own error.
    """
    from selma_ray.training.encoder import CacheEncoder

    pool = cfg.train.cache_pool
    pool = pool.model_copy(
        update={"max_size": min(len(skills), pool.max_size), "min_size": min(1, pool.min_size)}
    )
    try:
        out = executor.map_rows(
            [{"skill": s, "sources": ",".join(job_sources(cfg, s))} for s in skills],
            CacheEncoder,
            fn_kwargs={
                "train": cfg.train,
                "base_model": cfg.train.base_model or cfg.images.model,
                "run_dir_uri": run_dir.uri,
                "model_cache_dir": cfg.storage.cache_dir,
                "seed": cfg.seed,
            },
            pool=pool,
            rows_per_task=1,
            whole_tasks=True,
        )
    except Exception as e:  # noqa: BLE001 - training falls back to encoding in its workers
        log.warning(
            "encoding the input caches failed (%s: %s); each expert's training worker "
            "encodes its own inputs instead",
            type(e).__name__,
            e,
        )
        return {}
    rows = {str(r["skill"]): r for r in out}
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
        dict(run_dir.read_json(*layout.cache_summary()))
        if run_dir.exists(*layout.cache_summary())
        else {}
    )
    summary.update(rows)
    run_dir.write_json(summary, *layout.cache_summary())
    return rows
