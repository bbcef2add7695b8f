"""Benchmark (stage 5): VQA scoring through Ray Data vs a bare loop, and merge time per method.

    python benchmarks/eval.py [--questions 64] [--batch-size 8] [--actors 1] [--threads 1]
                              [--vqa-model tiny:vqa] [--experts 2] [--rank 4] [--repeat 3]
                              [--json out.json]

1. VQA: ``--questions`` rows (image, question) over a handful of 32x32 PNGs are answered by
   :class:`selma_ray.evaluation.vqa.VQAScorer` once in a plain loop over batches (model loaded
   once, in this process) and once through ``RayExecutor.map_rows`` (Ray Data actor pool of
   ``--actors``; includes actor start + model load, as the stage pays it). Prints both times
   and the ratio Ray / loop.
2. Merge: ``--experts`` random LoRA experts on the tiny UNet (``add_lora`` + ``save_lora``, the
   experts stage's file format) merged with each method of :func:`selma_ray.merging.merge_loras`
   (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import selma_ray  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selma_ray.merging.methods import METHODS  # noqa: E402


def _rows(root: Path, n: int) -> list[dict[str, Any]]:
    from PIL import Image

    uris = []
    for i in range(8):
        p = root / f"img{i}.png"
        Image.new("RGB", (32, 32), (30 * i, 255 - 30 * i, 100)).save(p)
        uris.append(str(p))
    qs = ("Is there a cat?", "Is the cat red?", "Are there two dogs?", "Is it on the left?")
    return [
        {"image_uri": uris[i % len(uris)], "question": qs[i % len(qs)], "choices": ""}
        for i in range(n)
    ]


def bench_vqa(args: argparse.Namespace, root: Path) -> dict[str, float]:
    import ray

    from selma_ray.config import ActorPool
    from selma_ray.distributed import RayExecutor
    from selma_ray.evaluation.vqa import VQAScorer
    from selma_ray.execution import rows_to_batch

    rows = _rows(root, args.questions)
    t0 = time.perf_counter()
    scorer = VQAScorer(args.vqa_model, num_threads=args.threads)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(rows), args.batch_size):
        n += len(scorer(rows_to_batch(rows[i : i + args.batch_size]))["answer"])
    loop_s = time.perf_counter() - t0
    if not ray.is_initialized():
        ray.init(num_cpus=max(2, args.actors), include_dashboard=False, configure_logging=False)
    t0 = time.perf_counter()
    pool = ActorPool(min_size=args.actors, max_size=args.actors)
    kwargs = {"model_ref": args.vqa_model, "num_threads": args.threads}
    ray_map = RayExecutor().map_rows
    out = ray_map(rows, VQAScorer, fn_kwargs=kwargs, pool=pool, rows_per_task=args.batch_size)
    ray_s = time.perf_counter() - t0
    assert n == len(out) == len(rows)
    # a second Ray pass: Ray Data's fixed overhead (actor start + model load) vs throughput
    t0 = time.perf_counter()
    ray_map(rows * 4, VQAScorer, fn_kwargs=kwargs, pool=pool, rows_per_task=args.batch_size)
    ray4_s = time.perf_counter() - t0
    return {
        "questions": len(rows),
        "model_load_s": round(load_s, 3),
        "loop_s": round(loop_s, 3),
        "loop_questions_per_s": round(len(rows) / loop_s, 1),
        "ray_s": round(ray_s, 3),
        "ray_over_loop": round(ray_s / (load_s + loop_s), 2),
        "ray_4x_rows_s": round(ray4_s, 3),
        "ray_4x_rows_questions_per_s": round(4 * len(rows) / ray4_s, 1),
    }


def bench_merge(args: argparse.Namespace, root: Path) -> dict[str, float]:
    import torch
    from diffusers import UNet2DConditionModel

    from selma_ray.merging import merge_loras, read_lora_bytes
    from selma_ray.models import resolve_model
    from selma_ray.training.lora import add_lora, save_lora

    sd = resolve_model("tiny:sd")
    states = []
    for i in range(args.experts):
        unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
        torch.manual_seed(i)
        for p in add_lora(unet, rank=args.rank, alpha=float(args.rank)):
            p.data.add_(0.1 * torch.randn_like(p))
        path = save_lora(unet, str(root / f"expert{i}"))
        state, _ = read_lora_bytes(Path(path).read_bytes())
        states.append(state)
    out = {}
    for method in METHODS:
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            merge_loras(states, [float(args.rank)] * len(states), method=method)
            best = min(best, time.perf_counter() - t0)
        out[method] = round(best * 1000, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vqa-model", default="tiny:vqa")
    p.add_argument("--experts", type=int, default=2)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-vqa", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_vqa:
            result["vqa"] = bench_vqa(args, root)
            print("VQA:", json.dumps(result["vqa"]))
        result["merge_ms"] = bench_merge(args, root)
        print(f"merge ({args.experts} tiny experts, rank {args.rank}), best of {args.repeat}, ms:")
        for method, ms in result["merge_ms"].items():
            print(f"  {method:12s} {ms:9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
