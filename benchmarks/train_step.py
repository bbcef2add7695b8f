"""Benchmark: one expert training step with the encoded-input cache against encoding every step.

    python benchmarks/train_step.py [--model tiny:sd] [--resolution 64] [--batch-size 4]
                                    [--steps 20] [--warmup 3] [--pairs 16] [--device cpu|cuda]
                                    [--mixed-precision no|fp16|bf16] [--threads N]
                                    [--rank 4] [--gradient-checkpointing]

On a GPU with no downloadable weights, ``--model tiny:sd15-size`` is Stable Diffusion 1.5's
architecture at full size (random weights), e.g. the ``sd15`` preset's step:
``--model tiny:sd15-size --resolution 512 --batch-size 16 --rank 128 --mixed-precision fp16
--gradient-checkpointing``.

Writes a synthetic imagefolder (``--pairs`` random images at 1.5x ``--resolution`` wide, so the
resize + crop is exercised), then runs the real training step of ``selma_ray.training.loop``
twice: with ``cache_inputs=true`` (latents and text states read from the cache built once up
front) and with ``cache_inputs=false`` (every step decodes the images, preprocesses them and
runs the VAE and the text encoder before the UNet). Prints the mean step time of each after
``--warmup`` steps, side by side, with the ratio and the one-time cost of building the cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    import selma_ray  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(args: argparse.Namespace, run_dir: str, cache: bool) -> dict[str, float]:
    """Build a trainer, run warmup + timed optimizer steps; return timings in seconds."""
    from selma_ray.config import TrainConfig
    from selma_ray.storage import RunDir
    from selma_ray.training.loop import _Trainer

    cfg = TrainConfig(
        resolution=args.resolution,
        batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        cache_inputs=cache,
        validation_fraction=0.0,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        rank=args.rank,
        alpha=args.rank,
        learning_rate=1e-4,
    )
    trainer = _Trainer(
        cfg,
        skill="bench",
        run_dir=RunDir(run_dir),
        base_model=args.model,
        cache_dir=None,
        seed=0,
        device=__import__("torch").device(args.device),
        world_size=1,
        rank=0,
        model_cache_dir=None,
    )
    import torch

    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        trainer.train_step()
    times = []
    losses = []
    for _ in range(args.steps):
        _sync(args.device)
        start = time.perf_counter()
        losses.append(trainer.train_step())
        _sync(args.device)
        times.append(time.perf_counter() - start)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    cache_info = dict(trainer.cache_info)
    del trainer
    if cuda:
        torch.cuda.empty_cache()
    return {
        "peak_gib": peak_gib,
        "last_loss": losses[-1],
        "step_s": statistics.mean(times),
        "step_sd_s": statistics.stdev(times) if len(times) > 1 else 0.0,
        "encode_once_s": float(cache_info.get("seconds", 0.0)) if cache else 0.0,
        "cache_built": bool(cache_info.get("built", False)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:sd", help="base model id / path / tiny:sd")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=16, help="synthetic images in the skill")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (= alpha)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="(CUDA only)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from selma_ray.storage import RunDir
    from selma_ray.training.data import write_synthetic_skill

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="selma-bench-train-") as tmp:
        size = (args.resolution * 3 // 2, args.resolution)
        write_synthetic_skill(RunDir(tmp), "bench", prompts=args.pairs, size=size)
        cached = measure(args, tmp, cache=True)
        uncached = measure(args, tmp, cache=False)

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"model {args.model}  device {args.device} ({name})  resolution {args.resolution}  "
        f"batch {args.batch_size}  steps {args.steps} (+{args.warmup} warmup)  "
        f"mixed precision {args.mixed_precision}  LoRA rank {args.rank}  gradient "
        f"checkpointing {'on' if args.gradient_checkpointing else 'off'}  torch threads "
        f"{torch.get_num_threads()}"
    )
    rows = [
        ("", "cached", "uncached"),
        (
            "step time (ms)",
            f"{cached['step_s'] * 1e3:.1f} ± {cached['step_sd_s'] * 1e3:.1f}",
            f"{uncached['step_s'] * 1e3:.1f} ± {uncached['step_sd_s'] * 1e3:.1f}",
        ),
        (
            "samples / s",
            f"{args.batch_size / cached['step_s']:.1f}",
            f"{args.batch_size / uncached['step_s']:.1f}",
        ),
        ("one-time encode (s)", f"{cached['encode_once_s']:.2f}", "-"),
        ("last loss", f"{cached['last_loss']:.4f}", f"{uncached['last_loss']:.4f}"),
    ]
    if args.device.startswith("cuda"):
        rows.append(
            ("peak GPU memory (GiB)", f"{cached['peak_gib']:.1f}", f"{uncached['peak_gib']:.1f}")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}")
    ratio = uncached["step_s"] / cached["step_s"]
    saved = uncached["step_s"] - cached["step_s"]
    breakeven = cached["encode_once_s"] / saved if saved > 0 else float("inf")
    print(f"ratio uncached / cached step time: {ratio:.2f}x")
    print(f"the cache pays for itself after {breakeven:.1f} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
