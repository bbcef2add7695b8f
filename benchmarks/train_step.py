"""Benchmark: one expert training step with the encoded-input cache against encoding every step.

    python benchmarks/train_step.py [--model tiny:sd] [--resolution 64] [--batch-size 4]
                                    [--steps 20] [--warmup 3] [--pairs 16] [--device cpu|cuda]
                                    [--mixed-precision no|fp16|bf16] [--threads N]
                                    [--rank 4] [--gradient-checkpointing]
                                    [--cached-only] [--json PATH]

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
``--cached-only`` leaves out the uncached run.

FLOPs (``torch.utils.flop_counter``, after the timed steps, cached run): one forward of the
trained UNet (LoRA layers included) on one sample of the training latents' size with 77 text
tokens, and
one whole extra training step (forward, backward, and the recomputed forward when gradient
checkpointing is on) divided by its samples. ``--json PATH`` writes every number to PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import selma_ray  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def latent_size(trainer: object, resolution: int) -> int:
    """The side of the latents the UNet trains on (``resolution`` / the VAE's downsampling)."""
    vae = trainer.comps.vae  # type: ignore[attr-defined]
    return resolution // 2 ** (len(vae.config.block_out_channels) - 1)


def count_flops(trainer: object, resolution: int) -> dict[str, float | None]:
    """FLOPs per sample of one UNet forward (batch 1) and of one whole training step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    out: dict[str, float | None] = {"forward_flop_per_sample": None, "step_flop_per_sample": None}
    unet = trainer.comps.unet  # type: ignore[attr-defined]
    param = next(unet.parameters())
    lat = latent_size(trainer, resolution)
    try:
        x = torch.randn(1, unet.config.in_channels, lat, lat, device=param.device)
        text = torch.randn(1, 77, unet.config.cross_attention_dim, device=param.device)
        t = torch.tensor([500], device=param.device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            unet(x.to(param.dtype), t, encoder_hidden_states=text.to(param.dtype))
        out["forward_flop_per_sample"] = float(counter.get_total_flops())
    except Exception as e:  # noqa: BLE001 - e.g. an SDXL UNet's extra inputs: no count
        print(f"forward FLOP count skipped: {type(e).__name__}: {e}", file=sys.stderr)
    cfg = trainer.cfg  # type: ignore[attr-defined]
    try:
        with FlopCounterMode(display=False) as counter:
            trainer.train_step()  # type: ignore[attr-defined]
        samples = cfg.batch_size * cfg.gradient_accumulation
        out["step_flop_per_sample"] = counter.get_total_flops() / samples
    except Exception as e:  # noqa: BLE001 - reported, the timings stand
        print(f"step FLOP count skipped: {type(e).__name__}: {e}", file=sys.stderr)
    return out


def measure(
    args: argparse.Namespace, run_dir: str, cache: bool, flops: bool = False
) -> dict[str, Any]:
    """Build a trainer, run warmup + timed optimizer steps; return timings in seconds (and,
    with ``flops``, the FLOP counts of :func:`count_flops`)."""
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
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    cache_info = dict(trainer.cache_info)
    unet = trainer.comps.unet
    base_params = sum(p.numel() for n, p in unet.named_parameters() if "lora_" not in n)
    checkpointing = bool(getattr(unet, "is_gradient_checkpointing", False))
    counted = count_flops(trainer, args.resolution) if flops else {}
    lat = latent_size(trainer, args.resolution)
    del trainer, unet
    if cuda:
        torch.cuda.empty_cache()
    return {
        "peak_gib": peak_gib,
        "last_loss": losses[-1],
        "step_s": statistics.mean(times),
        "step_sd_s": statistics.stdev(times) if len(times) > 1 else 0.0,
        "encode_once_s": float(cache_info.get("seconds", 0.0)) if cache else 0.0,
        "cache_built": bool(cache_info.get("built", False)),
        "unet_params": base_params,
        "latent_size": lat,
        "gradient_checkpointing": checkpointing,
        **counted,
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
    parser.add_argument("--cached-only", action="store_true", help="leave out the uncached run")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
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
        cached = measure(args, tmp, cache=True, flops=True)
        uncached = None if args.cached_only else measure(args, tmp, cache=False)

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"model {args.model}  device {args.device} ({name})  resolution {args.resolution}  "
        f"batch {args.batch_size}  steps {args.steps} (+{args.warmup} warmup)  "
        f"mixed precision {args.mixed_precision}  LoRA rank {args.rank}  gradient "
        f"checkpointing {'on' if args.gradient_checkpointing else 'off'}  torch threads "
        f"{torch.get_num_threads()}"
    )
    columns = {"cached": cached, **({"uncached": uncached} if uncached else {})}
    for c in columns.values():
        c["samples_per_s"] = args.batch_size / c["step_s"]
    fmt = {
        "step time (ms)": lambda c: f"{c['step_s'] * 1e3:.1f} ± {c['step_sd_s'] * 1e3:.1f}",
        "samples / s": lambda c: f"{c['samples_per_s']:.1f}",
        "one-time encode (s)": lambda c: f"{c['encode_once_s']:.2f}" if c["cache_built"] else "-",
        "last loss": lambda c: f"{c['last_loss']:.4f}",
    }
    if args.device.startswith("cuda"):
        fmt["peak GPU memory (GiB)"] = lambda c: f"{c['peak_gib']:.1f}"
    rows = [("", *columns)] + [(k, *(f(c) for c in columns.values())) for k, f in fmt.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [f"{v:>{w}}" for v, w in zip(r[1:], widths[1:], strict=True)]
        print(f"{r[0]:<{widths[0]}}  " + "  ".join(cells))
    forward = cached.get("forward_flop_per_sample")
    step = cached.get("step_flop_per_sample")
    if forward or step:
        parts = [f"UNet forward {forward / 1e9:,.3f}"] if forward else []
        if step:
            ratio = f" ({step / forward:.2f}x the forward)" if forward else ""
            parts.append(f"one whole step {step / 1e9:,.3f}{ratio}")
        print("GFLOP per sample: " + ", ".join(parts))
    if uncached:
        ratio = uncached["step_s"] / cached["step_s"]
        saved = uncached["step_s"] - cached["step_s"]
        breakeven = cached["encode_once_s"] / saved if saved > 0 else float("inf")
        print(f"ratio uncached / cached step time: {ratio:.2f}x")
        print(f"the cache pays for itself after {breakeven:.1f} steps")
    if args.json:
        result = {
            "model": args.model,
            "device": name,
            "resolution": args.resolution,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "mixed_precision": args.mixed_precision,
            "rank": args.rank,
            "gradient_checkpointing": cached["gradient_checkpointing"],
            "unet_params": cached["unet_params"],
            "latent_size": cached["latent_size"],
            "samples_per_s": cached["samples_per_s"],
            "forward_flop_per_sample": forward,
            "step_flop_per_sample": step,
            "columns": columns,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
