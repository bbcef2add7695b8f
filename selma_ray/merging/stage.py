"""SELMA stage 4 as a pipeline stage: merge a run's skill experts and export the merged model.

:func:`merge_run` reads the expert of every skill of ``cfg.prompts.skills`` from the run
directory (its LoRA file ``layout.expert_lora(skill)`` and its record
``layout.expert_meta(skill)``), merges them with
:func:`~selma_ray.merging.ops.merge_loras_with_report` (``cfg.merge``: method, weights,
density, svd_rank; DARE seeded from ``cfg.seed``) and writes:

* ``layout.merged_lora()`` -- the merged LoRA in diffusers format, with LoRA adapter metadata
  (ranks, one alpha: the largest rank, target modules) so that ``pipe.load_lora_weights`` on
  its folder applies it at the right scale;
* ``layout.merged_card()`` -- a model card: base model, experts (steps, selected step),
  weights, method, how to load it with diffusers;
* ``layout.merged_pipeline()`` -- only with ``merge.export_fused``: the base pipeline with the
  merged LoRA fused into its weights (:func:`~selma_ray.merging.fused.export_fused`), with the
  same model card; without it, a stale one is removed;
* ``layout.merged_meta()`` -- what was merged and how (:func:`merge_info`), written last: it
  marks a finished merge.

:func:`run_merge_stage` is the pipeline's stage function; it returns the manifest counts.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from selma_ray import layout
from selma_ray.config import ConfigError, SelmaConfig
from selma_ray.merging.card import model_card
from selma_ray.merging.fused import export_fused
from selma_ray.merging.lora_io import alpha_from_metadata, lora_file_bytes, read_lora_bytes
from selma_ray.merging.methods import (
    DENSITY_METHODS,
    EXACT_METHODS,
    SVD_METHODS,
    MergeOptionError,
)
from selma_ray.merging.ops import MergeReport, merge_loras_with_report
from selma_ray.merging.state import Alpha, module_ranks
from selma_ray.storage import RunDir

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Expert", "load_experts", "merge_info", "merge_run", "run_merge_stage"]

log = logging.getLogger(__name__)


@dataclass
class Expert:
    """One skill expert as read from the run directory."""

    skill: str
    state: dict[str, Tensor]
    alpha: Alpha
    alpha_source: str
    meta: dict[str, Any]
    sha256: str

    @property
    def ranks(self) -> list[int]:
        return sorted(set(module_ranks(self.state).values()))


# --------------------------------------------------------------------------- reading experts


def _check_present(run_dir: RunDir, skills: list[str]) -> None:
    """Raise FileNotFoundError naming the skills without a finished expert, and the fix."""
    missing = [
        s
        for s in skills
        if not (run_dir.exists(*layout.expert_lora(s)) and run_dir.exists(*layout.expert_meta(s)))
    ]
    if not missing:
        return
    present = [
        d for d in run_dir.listdir(*layout.experts_dir()) if run_dir.exists(*layout.expert_lora(d))
    ]
    msg = (
        f"no finished expert for skill(s) {missing} in {run_dir.uri}: "
        f"{'/'.join(layout.expert_lora('<skill>'))} and {layout.EXPERT_META_FILE} are missing "
        f"(experts present: {present or 'none'}); run the experts stage first: selma-ray run "
        f"--run-dir {run_dir.uri} --stages experts (with the same config)"
    )
    raise FileNotFoundError(msg)


def _expert_alpha(
    skill: str, state: dict[str, Tensor], metadata: dict[str, str], meta: dict[str, Any]
) -> tuple[Alpha, str]:
    """(alpha, where it came from): the file's LoRA metadata, else the expert record's
    ``alpha``, else diffusers' no-metadata convention (alpha = rank, scale 1)."""
    alpha = alpha_from_metadata(state, metadata, name=f"expert {skill!r}")
    if alpha is not None:
        return alpha, "file metadata"
    if meta.get("alpha") is not None:
        return float(meta["alpha"]), layout.EXPERT_META_FILE
    return {m: float(r) for m, r in module_ranks(state).items()}, "none (alpha = rank)"


def _read_expert(run_dir: RunDir, skill: str) -> Expert:
    data = run_dir.read_bytes(*layout.expert_lora(skill))
    state, metadata = read_lora_bytes(data, name=f"expert {skill!r} ({layout.LORA_FILE})")
    meta = run_dir.read_json(*layout.expert_meta(skill))
    alpha, source = _expert_alpha(skill, state, metadata, meta)
    return Expert(
        skill=skill,
        state=state,
        alpha=alpha,
        alpha_source=source,
        meta=meta,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def load_experts(cfg: SelmaConfig, run_dir: RunDir) -> list[Expert]:
    """The experts of ``cfg.prompts.skills``, in that order; missing ones raise naming the skill.

    The alpha of an expert is read from its file's LoRA metadata (what ``load_lora_weights``
    uses), else from its record (``alpha``), else diffusers' no-metadata convention
    (alpha = rank, scale 1).
    """
    skills = [s.name for s in cfg.prompts.skills]
    _check_present(run_dir, skills)
    return [_read_expert(run_dir, skill) for skill in skills]


# --------------------------------------------------------------------------- merging


def _merge_experts(
    cfg: SelmaConfig, experts: list[Expert], method: str, weights: list[float] | None
) -> tuple[dict[str, Tensor], Alpha, MergeReport]:
    """The one validated merge; a bad option is a ConfigError naming its ``merge.*`` field."""
    try:
        return merge_loras_with_report(
            [e.state for e in experts],
            [e.alpha for e in experts],
            method=method,
            weights=weights if weights is not None else cfg.merge.weights,
            density=cfg.merge.density,
            svd_rank=cfg.merge.svd_rank,
            seed=cfg.seed,
            names=[e.skill for e in experts],
            base_models=[e.meta.get("base_model") for e in experts],
            weights_field="merge.weights",
        )
    except MergeOptionError as e:
        raise ConfigError(str(e)) from None


def _alpha_json(alpha: Alpha) -> float | dict[str, float]:
    return float(alpha) if isinstance(alpha, (int, float)) else dict(alpha)


def _expert_entry(e: Expert) -> dict[str, Any]:
    return {
        "skill": e.skill,
        "ranks": e.ranks,
        "alpha": _alpha_json(e.alpha),
        "alpha_source": e.alpha_source,
        "steps": e.meta.get("steps"),
        "selected_step": e.meta.get("selected_step"),
        "best_val_loss": e.meta.get("best_val_loss"),
        "text_encoder_lora": e.meta.get("text_encoder_lora"),
        "sha256": e.sha256,
    }


def _merged_entry(report: MergeReport, alpha: Alpha, lora_bytes: bytes) -> dict[str, Any]:
    summary = report.summary()
    exact = report.method in EXACT_METHODS or (
        report.method == "svd" and summary["max_relative_error"] < 1e-5
    )
    return {
        "file": "/".join(layout.merged_lora()),
        "rank": summary["rank"],
        "ranks": summary["ranks"],
        "alpha": "rank (scale 1)" if not isinstance(alpha, (int, float)) else float(alpha),
        "modules": summary["modules"],
        "exact": exact,
        "max_relative_error": summary["max_relative_error"],
        "mean_relative_error": summary["mean_relative_error"],
        "bytes": len(lora_bytes),
        "sha256": hashlib.sha256(lora_bytes).hexdigest(),
    }


def merge_info(
    cfg: SelmaConfig,
    experts: list[Expert],
    report: MergeReport,
    alpha: Alpha,
    lora_bytes: bytes,
    weights_source: str,
) -> dict[str, Any]:
    """The merge record (``layout.merged_meta()``), less the timings :func:`merge_run` adds."""
    method, mcfg = report.method, cfg.merge
    base_model = next((b for e in experts if (b := e.meta.get("base_model"))), None)
    return {
        "method": method,
        "weights": dict(zip([e.skill for e in experts], report.weights, strict=True)),
        "weights_source": weights_source,
        "density": mcfg.density if method in DENSITY_METHODS else None,
        "svd_rank": (
            mcfg.svd_rank or sum(max(e.ranks) for e in experts) if method in SVD_METHODS else None
        ),
        "seed": cfg.seed,
        "base_model": base_model or cfg.train.base_model or cfg.images.model,
        "experts": [_expert_entry(e) for e in experts],
        "merged": _merged_entry(report, alpha, lora_bytes),
        "fused_pipeline": "/".join(layout.merged_pipeline()) if mcfg.export_fused else None,
    }


# --------------------------------------------------------------------------- the stage


def _write_lora(
    run_dir: RunDir, state: dict[str, Tensor], alpha: Alpha, method: str, skills: list[str]
) -> bytes:
    extra = {"selma_ray.merge": f"{method} of {','.join(skills)}"}
    lora_bytes = lora_file_bytes(state, alpha, extra=extra)
    run_dir.write_bytes(lora_bytes, *layout.merged_lora())
    return lora_bytes


def _write_fused(
    cfg: SelmaConfig, run_dir: RunDir, info: dict[str, Any], lora_bytes: bytes, card: str
) -> None:
    """Export the fused pipeline when asked (timing it in ``info``), else remove a stale one."""
    if cfg.merge.export_fused:
        seconds = export_fused(cfg, run_dir, info["base_model"], lora_bytes, card)
        info["fused_seconds"] = round(seconds, 3)
    else:
        run_dir.remove(*layout.merged_pipeline())  # a stale one would not match this merge


def _weights_source(cfg: SelmaConfig, weights: list[float] | None) -> str:
    if weights is not None:
        return "argument"
    return "merge.weights" if cfg.merge.weights else "1/N"


def merge_run(
    cfg: SelmaConfig,
    run_dir: RunDir,
    method: str | None = None,
    weights: list[float] | None = None,
) -> dict[str, Any]:
    """Merge the run's experts (see the module docstring); returns the merge record.

    ``method`` / ``weights`` override ``cfg.merge.method`` / ``cfg.merge.weights``. Raises
    FileNotFoundError for a missing expert, ConfigError for a bad option and ValueError for
    experts that cannot be merged.
    """
    started = time.perf_counter()
    method = method or cfg.merge.method
    experts = load_experts(cfg, run_dir)
    skills = [e.skill for e in experts]
    state, alpha, report = _merge_experts(cfg, experts, method, weights)
    lora_bytes = _write_lora(run_dir, state, alpha, method, skills)
    info = merge_info(cfg, experts, report, alpha, lora_bytes, _weights_source(cfg, weights))
    card = model_card(info)
    run_dir.write_text(card, *layout.merged_card())
    _write_fused(cfg, run_dir, info, lora_bytes, card)
    info["seconds"] = round(time.perf_counter() - started, 3)
    info["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run_dir.write_json(info, *layout.merged_meta())
    log.info(
        "merged %d experts (%s) with %s: rank %s, %d modules",
        len(experts),
        ", ".join(skills),
        method,
        info["merged"]["rank"],
        info["merged"]["modules"],
    )
    return info


def run_merge_stage(cfg: SelmaConfig, run_dir: RunDir) -> dict[str, Any]:
    """The pipeline's ``merge`` stage: :func:`merge_run` with the config; returns counts."""
    info = merge_run(cfg, run_dir)
    return {
        "experts": len(info["experts"]),
        "method": info["method"],
        "rank": info["merged"]["rank"],
        "modules": info["merged"]["modules"],
        "exact": info["merged"]["exact"],
        "fused": bool(info["fused_pipeline"]),
    }
