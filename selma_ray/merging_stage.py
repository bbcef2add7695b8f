"""SELMA stage 4 as a pipeline stage: merge a run's skill experts and export the merged model.

:func:`merge_run` reads every expert of ``cfg.prompts.skills`` from
``experts/<skill>/pytorch_lora_weights.safetensors`` + ``expert.json``, merges them with
:func:`selma_ray.merging.merge_loras_with_report` (``cfg.merge``: method, weights, density,
svd_rank; DARE seeded from ``cfg.seed``) and writes, under ``merged/``:

* ``pytorch_lora_weights.safetensors`` -- diffusers format, with LoRA adapter metadata (rank,
  alpha = rank, target modules) so that ``pipe.load_lora_weights("merged")`` applies it at the
  right scale;
* ``README.md`` -- a model card: base model, experts (steps, selected step), weights, method,
  how to load it with diffusers;
* ``pipeline/`` -- only with ``merge.export_fused``: the base pipeline with the merged LoRA fused
  into its weights (``load_lora_weights`` + ``fuse_lora`` + ``unload_lora_weights`` +
  ``save_pretrained``), with the same model card;
* ``merge.json`` -- what was merged and how (written last: it marks a finished merge).

:func:`run_merge_stage` is the pipeline's stage function; it returns the manifest counts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from selma_ray.config import ConfigError, SelmaConfig
from selma_ray.merging import (
    Alpha,
    MergeReport,
    alpha_from_metadata,
    lora_file_bytes,
    merge_loras_with_report,
    module_ranks,
    read_lora_bytes,
    resolve_weights,
    validate_experts,
)
from selma_ray.storage import RunDir

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

EXPERTS_DIR = "experts"
MERGED_DIR = "merged"
LORA_FILE = "pytorch_lora_weights.safetensors"
EXPERT_JSON = "expert.json"
MERGE_JSON = "merge.json"
CARD_FILE = "README.md"
PIPELINE_DIR = "pipeline"
ADAPTER_NAME = "selma_merged"


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


def _fix_experts(run_dir: RunDir) -> str:
    return (
        f"run the experts stage first: selma-ray run --run-dir {run_dir.uri} --stages experts "
        "(with the same config)"
    )


def load_experts(cfg: SelmaConfig, run_dir: RunDir) -> list[Expert]:
    """The experts of ``cfg.prompts.skills``, in that order; missing ones raise naming the skill.

    The alpha of an expert is read from its file's LoRA metadata (what ``load_lora_weights``
    uses), else from ``expert.json`` (``alpha``), else diffusers' no-metadata convention
    (alpha = rank, scale 1).
    """
    skills = [s.name for s in cfg.prompts.skills]
    missing = [
        s
        for s in skills
        if not (
            run_dir.exists(EXPERTS_DIR, s, LORA_FILE)
            and run_dir.exists(EXPERTS_DIR, s, EXPERT_JSON)
        )
    ]
    if missing:
        present = [
            d for d in run_dir.listdir(EXPERTS_DIR) if run_dir.exists(EXPERTS_DIR, d, LORA_FILE)
        ]
        msg = (
            f"no finished expert for skill(s) {missing} in {run_dir.uri}: "
            f"{EXPERTS_DIR}/<skill>/{LORA_FILE} and {EXPERT_JSON} are missing "
            f"(experts present: {present or 'none'}); {_fix_experts(run_dir)}"
        )
        raise FileNotFoundError(msg)
    experts = []
    for skill in skills:
        data = run_dir.read_bytes(EXPERTS_DIR, skill, LORA_FILE)
        state, metadata = read_lora_bytes(data, name=f"expert {skill!r} ({LORA_FILE})")
        meta = run_dir.read_json(EXPERTS_DIR, skill, EXPERT_JSON)
        alpha = alpha_from_metadata(state, metadata, name=f"expert {skill!r}")
        source = "file metadata"
        if alpha is None and meta.get("alpha") is not None:
            alpha, source = float(meta["alpha"]), "expert.json"
        if alpha is None:
            alpha = {m: float(r) for m, r in module_ranks(state).items()}
            source = "none (alpha = rank)"
        experts.append(
            Expert(
                skill=skill,
                state=state,
                alpha=alpha,
                alpha_source=source,
                meta=meta,
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
    return experts


def _alpha_json(alpha: Alpha) -> float | dict[str, float]:
    return float(alpha) if isinstance(alpha, (int, float)) else dict(alpha)


def merge_run(
    cfg: SelmaConfig,
    run_dir: RunDir,
    method: str | None = None,
    weights: list[float] | None = None,
) -> dict[str, Any]:
    """Merge the run's experts into ``merged/`` (see the module docstring); returns merge.json.

    ``method`` / ``weights`` override ``cfg.merge.method`` / ``cfg.merge.weights``.
    """
    started = time.perf_counter()
    mcfg = cfg.merge
    method = method or mcfg.method
    if method not in ("linear", "cat", "ties", "dare_linear", "dare_ties", "svd"):
        msg = (
            f"merge.method {method!r} is unknown; choose linear, cat, ties, dare_linear, "
            "dare_ties or svd"
        )
        raise ConfigError(msg)
    experts = load_experts(cfg, run_dir)
    skills = [e.skill for e in experts]
    given = weights if weights is not None else mcfg.weights
    try:
        resolved = resolve_weights(given, len(experts), skills, field_name="merge.weights")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    base_models = [e.meta.get("base_model") for e in experts]
    names = [f"expert {s!r}" for s in skills]
    validate_experts([e.state for e in experts], names=names, base_models=base_models)
    state, alpha, report = merge_loras_with_report(
        [e.state for e in experts],
        [e.alpha for e in experts],
        method=method,
        weights=resolved,
        density=mcfg.density,
        svd_rank=mcfg.svd_rank,
        seed=cfg.seed,
        names=names,
    )
    base_model = next((b for b in base_models if b), None) or (
        cfg.train.base_model or cfg.images.model
    )
    summary = report.summary()
    lora_bytes = lora_file_bytes(
        state, alpha, extra={"selma_ray.merge": f"{method} of {','.join(skills)}"}
    )
    run_dir.write_bytes(lora_bytes, MERGED_DIR, LORA_FILE)
    info: dict[str, Any] = {
        "method": method,
        "weights": dict(zip(skills, resolved, strict=True)),
        "weights_source": (
            "argument" if weights is not None else "merge.weights" if mcfg.weights else "1/N"
        ),
        "density": mcfg.density if method in ("ties", "dare_linear", "dare_ties") else None,
        "svd_rank": (
            mcfg.svd_rank or sum(max(e.ranks) for e in experts)
            if method in ("svd", "ties", "dare_linear", "dare_ties")
            else None
        ),
        "seed": cfg.seed,
        "base_model": base_model,
        "experts": [
            {
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
            for e in experts
        ],
        "merged": {
            "file": f"{MERGED_DIR}/{LORA_FILE}",
            "rank": summary["rank"],
            "ranks": summary["ranks"],
            "alpha": "rank (scale 1)" if not isinstance(alpha, (int, float)) else float(alpha),
            "modules": summary["modules"],
            "exact": method in ("linear", "cat")
            or (method == "svd" and summary["max_relative_error"] < 1e-5),
            "max_relative_error": summary["max_relative_error"],
            "mean_relative_error": summary["mean_relative_error"],
            "bytes": len(lora_bytes),
            "sha256": hashlib.sha256(lora_bytes).hexdigest(),
        },
        "fused_pipeline": f"{MERGED_DIR}/{PIPELINE_DIR}" if mcfg.export_fused else None,
    }
    card = model_card(info, report)
    run_dir.write_text(card, MERGED_DIR, CARD_FILE)
    if mcfg.export_fused:
        fused_s = export_fused(cfg, run_dir, base_model, lora_bytes, card)
        info["fused_seconds"] = round(fused_s, 3)
    else:
        run_dir.remove(MERGED_DIR, PIPELINE_DIR)  # a stale one would not match this merge
    info["seconds"] = round(time.perf_counter() - started, 3)
    info["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run_dir.write_json(info, MERGED_DIR, MERGE_JSON)
    log.info(
        "merged %d experts (%s) with %s: rank %s, %d modules",
        len(experts),
        ", ".join(skills),
        method,
        summary["rank"],
        summary["modules"],
    )
    return info


# --------------------------------------------------------------------------- fused pipeline


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


def export_fused(
    cfg: SelmaConfig, run_dir: RunDir, base_model: str, lora_bytes: bytes, card: str
) -> float:
    """Write ``merged/pipeline/``: the base pipeline with the merged LoRA fused in; seconds."""
    started = time.perf_counter()
    pipe = _load_base_pipeline(cfg, base_model)
    with tempfile.TemporaryDirectory(prefix="selma-merge-") as tmp:
        lora_dir = os.path.join(tmp, "lora")
        os.makedirs(lora_dir)
        with open(os.path.join(lora_dir, LORA_FILE), "wb") as f:
            f.write(lora_bytes)
        pipe.load_lora_weights(lora_dir, adapter_name=ADAPTER_NAME)
        pipe.fuse_lora(lora_scale=1.0, adapter_names=[ADAPTER_NAME])
        pipe.unload_lora_weights()  # keeps the fused weights, drops the LoRA layers
        if run_dir.is_local:
            # save next to the target and rename, so a reader never sees half a pipeline
            staging = run_dir.path(MERGED_DIR, f".{PIPELINE_DIR}.tmp-{uuid.uuid4().hex[:8]}")
        else:
            staging = os.path.join(tmp, PIPELINE_DIR)
        try:
            pipe.save_pretrained(staging, safe_serialization=True)
            with open(os.path.join(staging, CARD_FILE), "w", encoding="utf-8") as f:
                f.write(card)
            run_dir.remove(MERGED_DIR, PIPELINE_DIR)
            if run_dir.is_local:
                os.replace(staging, run_dir.path(MERGED_DIR, PIPELINE_DIR))
            else:
                run_dir.fs.put(staging, run_dir.path(MERGED_DIR, PIPELINE_DIR), recursive=True)
        finally:
            if run_dir.is_local and os.path.isdir(staging):
                shutil.rmtree(staging, ignore_errors=True)
    return time.perf_counter() - started


# --------------------------------------------------------------------------- model card


def _is_hub_id(ref: str) -> bool:
    return (
        ref.count("/") == 1
        and not ref.startswith(("/", ".", "~"))
        and ":" not in ref
        and not os.path.exists(ref)
    )


def _load_line(base_model: str) -> tuple[str, str]:
    """(import lines, expression giving the base model path) for the card's code sample."""
    if base_model.startswith("tiny:"):
        return (
            "from selma_ray.models import resolve_model\n",
            f'resolve_model("{base_model}")',
        )
    return "", f'"{base_model}"'


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def model_card(info: dict[str, Any], report: MergeReport | None = None) -> str:
    """The README.md of ``merged/`` (and of ``merged/pipeline/``) from a merge.json dict."""
    base = str(info["base_model"])
    skills = [e["skill"] for e in info["experts"]]
    merged = info["merged"]
    front = ["---", "library_name: diffusers"]
    if _is_hub_id(base):
        front.append(f"base_model: {base}")
    front += [
        "tags:",
        "- text-to-image",
        "- diffusers",
        "- lora",
        "- selma",
        "- selma-ray",
        "---",
    ]
    method = info["method"]
    params = [f"method `{method}`"]
    if info.get("density") is not None:
        params.append(f"density {info['density']}")
    if info.get("svd_rank") is not None:
        params.append(f"SVD rank {info['svd_rank']} (capped per module at min(out, in))")
    if method in ("dare_linear", "dare_ties"):
        params.append(f"seed {info['seed']}")
    if merged["exact"]:
        fidelity = "Its update equals the weighted sum of the experts' updates (exact)."
    else:
        what = "weighted sum" if method == "svd" else f"`{method}` merge"
        fidelity = (
            f"Its update is a rank-{merged['rank']} SVD approximation of the {what} of the "
            f"experts' updates (relative Frobenius error: mean "
            f"{merged['mean_relative_error']:.3g}, max {merged['max_relative_error']:.3g})."
        )
    rows = [
        "| skill | weight | rank | alpha | steps | selected step | best val loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in info["experts"]:
        alpha = e["alpha"] if not isinstance(e["alpha"], dict) else "per module"
        rows.append(
            f"| {e['skill']} | {_fmt(info['weights'][e['skill']])} | "
            f"{'/'.join(str(r) for r in e['ranks'])} | {_fmt(alpha)} | {_fmt(e['steps'])} | "
            f"{_fmt(e['selected_step'])} | {_fmt(e['best_val_loss'])} |"
        )
    imports, base_expr = _load_line(base)
    tiny_note = (
        f"\n`{base}` is a tiny, randomly initialised test model built by selma-ray "
        "(`resolve_model` builds it offline); its images are noise.\n"
        if base.startswith("tiny:")
        else ""
    )
    fused = ""
    if info.get("fused_pipeline"):
        fused = f"""
### Fused pipeline

`{info["fused_pipeline"]}/` is the base pipeline with this LoRA fused into its weights
(float32); it loads without PEFT and without `load_lora_weights`:

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("path/to/{info["fused_pipeline"]}")
```
"""
    return (
        "\n".join(front)
        + f"""

# SELMA multi-skill LoRA: {", ".join(skills)}

A LoRA for `{base}` made by selma-ray with SELMA (skill-specific
expert learning and merging with auto-generated data): one LoRA expert was trained per skill on
auto-generated images, then the {len(skills)} experts were merged into this one LoRA
({", ".join(params)}).

- Base model: `{base}`
- Merged LoRA: rank {merged["rank"]}, alpha {_fmt(merged["alpha"])}, {merged["modules"]} modules
  (`{merged["file"]}`, sha256 `{merged["sha256"][:16]}...`)
- {fidelity}

## Experts

{chr(10).join(rows)}

## Use with diffusers

```python
import torch
from diffusers import DiffusionPipeline
{imports}
pipe = DiffusionPipeline.from_pretrained({base_expr}, torch_dtype=torch.float32)
pipe.load_lora_weights("path/to/merged")  # the directory holding {LORA_FILE}
image = pipe("a photo of three red apples on a wooden table").images[0]

# optional: bake the LoRA into the weights for faster inference
pipe.fuse_lora()
pipe.unload_lora_weights()
```

The file's metadata carries the adapter config (alpha = rank, scale 1): no extra scale is
needed. `load_lora_weights(..., adapter_name="selma")` then
`pipe.set_adapters(["selma"], adapter_weights=[s])` scales it by `s` if wanted.
{tiny_note}{fused}"""
    )


# --------------------------------------------------------------------------- stage


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
