"""Extrapolated wall time of a preset's whole recipe on N GPUs, from per-stage rates.

    python benchmarks/recipe_time.py [--preset sd15] [--gpus 8]
                                     [--summary benchmarks/results/<date>-<gpu>/summary.json]
                                     [--images-per-s X [--images-steps 30]]
                                     [--train-samples-per-s Y] [--llm-tokens-per-s Z]
                                     [--vqa-questions-per-s W] [--json PATH]

The work of each stage comes from the preset (``selma_ray/presets/<preset>.yaml``): prompts
(skills x ``prompts.num_prompts``, the candidates the LLM writes for them, their DSG questions),
images (one per prompt and ``images.images_per_prompt`` at ``images.steps``), experts (one
Ray Train run per skill, plus the joint baseline with ``train.joint``, each ``max_steps`` x
``batch_size`` x ``gradient_accumulation`` samples on ``train.num_workers`` GPUs, as many at once
as the GPUs hold) and eval (every variant draws DSG-1k and the held-out skill prompts, then the
VQA model answers their questions). Each stage's time is its work over the per-GPU rate times
the GPUs it can use.

Rates: per GPU, measured by ``benchmarks/gpu_check.sh`` (``--summary``: its
``images_per_s_batched`` at the check's 30 steps, scaled to the preset's steps, since the UNet
calls dominate; ``train_samples_per_s``) or given on the command line; the defaults are the
H200 figures of 2026-11-26 (``benchmarks/results/2026-11-26-h200``). The LLM's and the VQA
model's rates have no GPU figure yet: their defaults are assumptions, printed as such (vLLM
decoding an 8B model in bf16 on one H200 with many requests in flight; BLIP-2 FLAN-T5-XL
answering batched questions). Model loading, compilation and Ray start-up are left out except a
fixed engine start for stage 1. The merge (seconds on a CPU) is left out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

try:
    import selma_ray  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: ``gpu_check.sh`` draws its images at this many denoising steps.
GPU_CHECK_STEPS = 30
#: Measured on one H200, 2026-11-26 (benchmarks/results/2026-11-26-h200): batched drawing at
#: SD 1.5 size, 512 px, 30 steps; the ``sd15`` preset's old step (fp16, checkpointing).
MEASURED = {"images_per_s": 3.79, "images_steps": 30, "train_samples_per_s": 40.4}
#: Assumptions (no GPU figure yet), each printed beside the stage it sizes.
ASSUMED = {
    "llm_tokens_per_s": 5000.0,  # generated tokens/s per GPU, 8B model, vLLM, many requests
    "llm_engine_start_s": 120.0,  # load + CUDA graphs of the vLLM engines, once per stage
    "tokens_per_word": 1.4,  # a prompt's words -> tokens
    "kept_fraction": 0.5,  # candidates the ROUGE-L filter keeps
    "question_tokens_per_prompt": 200.0,  # DSG questions the LLM writes per prompt
    "questions_per_prompt": 7.7,  # DSG-1k: 8,182 questions over 1,060 prompts
    "vqa_questions_per_s": 100.0,  # BLIP-2 FLAN-T5-XL, batched, one GPU
}
DSG1K_PROMPTS, DSG1K_QUESTIONS = 1060, 8182


@dataclass
class Stage:
    name: str
    work: str
    rate: str
    seconds: float
    source: str


def recipe(cfg: Any, gpus: int, rates: dict[str, float], sources: dict[str, str]) -> list[Stage]:
    """Per-stage wall time of ``cfg``'s recipe on ``gpus`` GPUs at ``rates`` (per GPU)."""
    a = {**ASSUMED, **rates}
    skills = [s.name for s in cfg.prompts.skills]
    prompts = len(skills) * cfg.prompts.num_prompts
    stages: list[Stage] = []

    # 1 prompts: the kept prompts' candidates, then their DSG questions
    words = sum(s.word_limit or 50 for s in cfg.prompts.skills) / len(skills)
    candidates = prompts / a["kept_fraction"]
    tokens = candidates * words * a["tokens_per_word"]
    if cfg.prompts.dsg_questions.enabled:
        tokens += prompts * a["question_tokens_per_prompt"]
    seconds = a["llm_engine_start_s"] + tokens / (a["llm_tokens_per_s"] * gpus)
    stages.append(Stage(
        "1 prompts", f"{candidates:,.0f} candidates + questions: {tokens / 1e6:.2f} M tokens",
        f"{a['llm_tokens_per_s']:,.0f} tokens/s", seconds, sources["llm_tokens_per_s"],
    ))  # fmt: skip

    # 2 images: per-GPU rate scaled from the measured steps to the preset's
    per_gpu = a["images_per_s"] * a["images_steps"] / cfg.images.steps
    images = prompts * cfg.images.images_per_prompt
    stages.append(Stage(
        "2 images", f"{images:,} images, {cfg.images.steps} steps, {cfg.images.resolution} px",
        f"{per_gpu:.2f} images/s", images / (per_gpu * gpus), sources["images_per_s"],
    ))  # fmt: skip

    # 3 experts: all runs at once as far as the GPUs go, then the rest (whole waves)
    t = cfg.train
    runs = len(skills) + bool(t.joint)
    samples = t.max_steps * t.batch_size * t.gradient_accumulation
    at_once = max(1, gpus // t.num_workers)
    waves = math.ceil(runs / at_once)
    seconds = waves * samples / (a["train_samples_per_s"] * t.num_workers)
    stages.append(Stage(
        "3 experts", f"{runs} LoRAs x {samples:,} samples, {t.num_workers} GPU each, "
        f"{waves} wave(s)", f"{a['train_samples_per_s']:.1f} samples/s", seconds,
        sources["train_samples_per_s"],
    ))  # fmt: skip

    # 5 eval: every variant draws every item; the VQA model answers every question
    variants = sum(len(skills) if v == "experts" else 1 for v in cfg.eval.variants)
    items = questions = 0.0
    if "dsg1k" in cfg.eval.benchmarks:
        items, questions = DSG1K_PROMPTS, DSG1K_QUESTIONS
    if "skills" in cfg.eval.benchmarks:
        held = prompts * t.validation_fraction
        items += held
        questions += held * a["questions_per_prompt"]
    draw = variants * items / (per_gpu * gpus)
    answer = variants * questions / (a["vqa_questions_per_s"] * gpus)
    stages.append(Stage(
        "5 eval", f"{variants} variants x {items:,.0f} items ({variants * items:,.0f} images, "
        f"{variants * questions:,.0f} questions)",
        f"{per_gpu:.2f} images/s, {a['vqa_questions_per_s']:.0f} questions/s", draw + answer,
        f"images: {sources['images_per_s']}; VQA: {sources['vqa_questions_per_s']}",
    ))  # fmt: skip
    return stages


def rates_from(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, str]]:
    """The per-GPU rates and where each came from: the command line, ``--summary``, the
    measured defaults or the assumptions."""
    rates = {k: float(v) for k, v in MEASURED.items()}
    sources = {k: "H200, 2026-11-26" for k in MEASURED}
    sources.update({k: "assumed" for k in ASSUMED})
    if args.summary:
        summary = json.loads(Path(args.summary).read_text())
        label = f"{summary.get('device')}, {summary.get('date')}"
        for key, field in (("images_per_s", "images_per_s_batched"),
                           ("train_samples_per_s", "train_samples_per_s")):  # fmt: skip
            if isinstance(summary.get(field), (int, float)):
                rates[key], sources[key] = float(summary[field]), label
                if key == "images_per_s":
                    rates["images_steps"] = GPU_CHECK_STEPS
    for key in ("images_per_s", "images_steps", "train_samples_per_s", "llm_tokens_per_s",
                "vqa_questions_per_s"):  # fmt: skip
        value = getattr(args, key)
        if value is not None:
            rates[key], sources[key] = float(value), "given"
    return rates, sources


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="sd15")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--summary", default=None, help="a gpu_check summary.json (its rates)")
    p.add_argument("--images-per-s", type=float, default=None, help="per GPU, batched")
    p.add_argument("--images-steps", type=int, default=None, help="steps of --images-per-s")
    p.add_argument("--train-samples-per-s", type=float, default=None, help="per GPU")
    p.add_argument("--llm-tokens-per-s", type=float, default=None, help="per GPU")
    p.add_argument("--vqa-questions-per-s", type=float, default=None, help="per GPU")
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args(argv)

    from selma_ray.config import SelmaConfig, preset_dict

    cfg = SelmaConfig.model_validate({**preset_dict(args.preset), "preset": args.preset})
    rates, sources = rates_from(args)
    stages = recipe(cfg, args.gpus, rates, sources)
    total = sum(s.seconds for s in stages)
    print(f"preset {args.preset} on {args.gpus} GPUs (per-GPU rates; model loading left out)")
    rows = [("stage", "work", "rate per GPU", "wall time", "rate from")]
    rows += [(s.name, s.work, s.rate, f"{s.seconds / 60:.1f} min", s.source) for s in stages]
    rows.append(("total", "", "", f"{total / 60:.1f} min", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(f"{v:<{w}}" for v, w in zip(r, widths, strict=True)).rstrip())
    if args.json:
        out = {"preset": args.preset, "gpus": args.gpus, "rates": rates, "sources": sources,
               "stages": [asdict(s) for s in stages], "total_s": total}  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
