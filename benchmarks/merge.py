"""Benchmark: time of each LoRA merge method over random experts shaped like a real UNet.

    python benchmarks/merge.py [--arch tiny|sd15|sdxl] [--experts 3] [--rank 4] [--svd-rank R]
                               [--methods linear,cat,ties,dare_linear,dare_ties,svd]
                               [--repeat 3] [--device cpu|cuda] [--threads N] [--seed 0]

The UNet of ``--arch`` is built on PyTorch's ``meta`` device (no memory, no download: ``tiny``
reads the config of the offline ``tiny:sd`` model, ``sd15`` / ``sdxl`` use the public UNet
configs of Stable Diffusion 1.5 / XL), and every attention projection (``to_q``, ``to_k``,
``to_v``, ``to_out.0``) gets a random LoRA of ``--rank`` per expert, in the diffusers key style
the experts stage writes. Each method of :func:`selma_ray.merging.merge_loras_with_report` is
timed (best of ``--repeat``) and printed as a table with the merged rank, size, and the
relative error of the SVD refactoring (0 for exact merges).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

try:
    import selma_ray  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selma_ray.merging.methods import METHODS  # noqa: E402

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}


def unet_config(arch: str) -> dict[str, Any]:
    if arch == "sd15":
        return SD15_UNET
    if arch == "sdxl":
        return SDXL_UNET
    from selma_ray.models import resolve_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(resolve_model("tiny:sd")) / "unet" / "config.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def lora_shapes(arch: str) -> dict[str, tuple[int, int]]:
    """``{unet.<module>: (out, in)}`` of the attention projections, from a meta-device UNet."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config(arch))
    return {
        f"unet.{name}": (m.out_features, m.in_features)
        for name, m in unet.named_modules()
        if isinstance(m, torch.nn.Linear) and name.endswith(TARGETS)
    }


def random_experts(
    shapes: dict[str, tuple[int, int]], n: int, rank: int, seed: int
) -> list[dict[str, Any]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        state = {}
        for m, (o, i) in shapes.items():
            state[f"{m}.lora.down.weight"] = torch.randn(rank, i, generator=g) / rank
            state[f"{m}.lora.up.weight"] = torch.randn(o, rank, generator=g) * 0.01
        out.append(state)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("tiny", "sd15", "sdxl"), default="tiny")
    p.add_argument("--experts", type=int, default=3)
    p.add_argument("--rank", type=int, default=4, help="rank of every expert (paper: 128)")
    p.add_argument("--svd-rank", type=int, default=None, help="default: sum of expert ranks")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--density", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from selma_ray.merging import lora_file_bytes, merge_loras_with_report

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = lora_shapes(args.arch)
    states = random_experts(shapes, args.experts, args.rank, args.seed)
    alphas = [float(args.rank)] * args.experts
    in_mb = sum(t.numel() * 4 for t in states[0].values()) / 2**20
    print(
        f"arch {args.arch}: {len(shapes)} LoRA modules, {args.experts} experts of rank "
        f"{args.rank} ({in_mb:.1f} MiB each), device {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    header = f"{'method':<12} {'seconds':>9} {'rank':>6} {'MiB':>8} {'write s':>8} {'rel err':>9}"
    print(header)
    print("-" * len(header))
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        best = float("inf")
        for _ in range(max(1, args.repeat)):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            merged, alpha, report = merge_loras_with_report(
                states,
                alphas,
                method,
                density=args.density,
                svd_rank=args.svd_rank,
                seed=args.seed,
                device=args.device,
            )
            best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        blob = lora_file_bytes(merged, alpha)
        write_s = time.perf_counter() - t0
        s = report.summary()
        print(
            f"{method:<12} {best:>9.3f} {s['rank']:>6} {len(blob) / 2**20:>8.1f} "
            f"{write_s:>8.3f} {s['max_relative_error']:>9.2e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
