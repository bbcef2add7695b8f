"""Benchmark: one expert training step with the encoded-input cache against encoding every step.

    python benchmarks/train_step.py [--model tiny:sd] [--resolution 64] [--batch-size 4]
                                    [--gradient-accumulation 1] [--steps 20] [--warmup 3]
                                    [--pairs 16] [--device cpu|cuda] [--threads N]
                                    [--mixed-precision no|fp16|bf16] [--gradient-checkpointing]
                                    [--no-fused-optimizer] [--channels-last]
                                    [--compile [--compile-backend inductor]] [--rank 4]
                                    [--cached-only | --ladder] [--peak-tflops X] [--json PATH]

On a GPU with no downloadable weights, ``--model tiny:sd15-size`` is Stable Diffusion 1.5's
architecture at full size (random weights), e.g. the ``sd15`` preset's step:
``--model tiny:sd15-size --resolution 512 --batch-size 16 --gradient-accumulation 4 --rank 128
--mixed-precision bf16``.

Writes a synthetic imagefolder (``--pairs`` random images at 1.5x ``--resolution`` wide, so the
resize + crop is exercised), then runs the real training step of ``selma_ray.training.loop``
twice: with ``cache_inputs=true`` (latents and text states read from the cache built once up
front) and with ``cache_inputs=false`` (every step decodes the images, preprocesses them and
runs the VAE and the text encoder before the UNet). Prints the mean optimizer-step time of each
after ``--warmup`` steps, side by side, with the ratio and the one-time cost of building the
cache. ``--cached-only`` leaves out the uncached run.

``--ladder`` instead measures the step's speed options one at a time, each rung keeping the ones
before it (cached inputs; the same samples, draws and global batch in every rung, so the loss
columns must agree): the given settings (``before``, e.g. the old ``sd15`` step: ``--mixed-
precision fp16 --gradient-checkpointing --no-fused-optimizer``), then ``bf16`` autocast, no
gradient checkpointing, fused AdamW, channels_last, and the whole global batch in fewer, larger
micro-batches (``micro-batch <b>``: half the accumulation, then none). A rung that runs out of
memory is reported as such and the next starts from the rung before it. Every rung prints step
time, samples/s, MFU (``--peak-tflops``, else the table of ``gpu_unet.py``), peak memory and
the mean loss of its timed steps.

FLOPs (``torch.utils.flop_counter``, after the timed steps of each measured configuration): one
forward of the trained UNet (LoRA layers included) on one sample of the training latents' size
with 77 text tokens, and one whole extra optimizer step (forward, backward, and the recomputed
forward when gradient checkpointing is on) divided by its samples. MFU counts the forward x 2
(forward and input gradients; +1 with checkpointing) per sample. ``--json PATH`` writes every
number to PATH (after each rung with ``--ladder``).
"""

from __future__ import annotations

import argparse
import gc
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


def base_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``TrainConfig`` speed settings the command line gives."""
    return {
        "batch_size": args.batch_size,
        "gradient_accumulation": args.gradient_accumulation,
        "mixed_precision": args.mixed_precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "fused_optimizer": args.fused_optimizer,
        "channels_last": args.channels_last,
        "compile": args.compile,
    }


def ladder(settings: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The rungs of ``--ladder``: (name, changes to the rung before), starting from
    ``settings``; rungs that would change nothing are left out (except ``before``)."""
    rungs: list[tuple[str, dict[str, Any]]] = [("before", {})]
    for name, change in (
        ("bf16", {"mixed_precision": "bf16"}),
        ("no checkpointing", {"gradient_checkpointing": False}),
        ("fused AdamW", {"fused_optimizer": True}),
        ("channels_last", {"channels_last": True}),
    ):
        if any(settings[k] != v for k, v in change.items()):
            rungs.append((name, change))
            settings = {**settings, **change}
    batch, accum = settings["batch_size"], settings["gradient_accumulation"]
    while accum > 1:
        accum //= 2
        batch = settings["batch_size"] * settings["gradient_accumulation"] // accum
        change = {"batch_size": batch, "gradient_accumulation": accum}
        rungs.append((f"micro-batch {batch}", change))
    return rungs


def measure(
    args: argparse.Namespace,
    run_dir: str,
    cache: bool,
    flops: bool = False,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a trainer, run warmup + timed optimizer steps; return timings in seconds (and,
    with ``flops``, the FLOP counts of :func:`count_flops`). ``settings``: the speed
    settings (default: :func:`base_settings`)."""
    from selma_ray.config import TrainConfig
    from selma_ray.storage import RunDir
    from selma_ray.training import loop
    from selma_ray.training.loop import _Trainer

    settings = settings or base_settings(args)
    cfg = TrainConfig(
        resolution=args.resolution,
        max_steps=args.warmup + args.steps,
        cache_inputs=cache,
        validation_fraction=0.0,
        rank=args.rank,
        alpha=args.rank,
        learning_rate=1e-4,
        **settings,
    )
    loop.COMPILE_OPTIONS = {"backend": args.compile_backend}
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
    samples = settings["batch_size"] * settings["gradient_accumulation"]
    return {
        **settings,
        "peak_gib": peak_gib,
        "last_loss": losses[-1],
        "mean_loss": statistics.mean(losses),
        "samples_per_s": samples / statistics.mean(times),
        "step_s": statistics.mean(times),
        "step_sd_s": statistics.stdev(times) if len(times) > 1 else 0.0,
        "encode_once_s": float(cache_info.get("seconds", 0.0)) if cache else 0.0,
        "cache_built": bool(cache_info.get("built", False)),
        "unet_params": base_params,
        "latent_size": lat,
        "gradient_checkpointing": checkpointing,
        **counted,
    }


def _mfu(r: dict[str, Any], peak: float | None) -> float | None:
    """samples/s x forward FLOPs x (2 + checkpointing) / peak; None without a count or peak."""
    forward = r.get("forward_flop_per_sample")
    if not peak or not forward or "samples_per_s" not in r:
        return None
    return r["samples_per_s"] * forward * (2 + bool(r["gradient_checkpointing"])) / (peak * 1e12)


def _table(columns: dict[str, dict[str, Any]], cuda: bool) -> None:
    """Print ``columns`` (name -> measurement) side by side."""
    fmt = {
        "micro-batch x accumulation": lambda c: f"{c['batch_size']} x {c['gradient_accumulation']}",
        "step time (ms)": lambda c: f"{c['step_s'] * 1e3:.1f} ± {c['step_sd_s'] * 1e3:.1f}",
        "samples / s": lambda c: f"{c['samples_per_s']:.1f}",
        "MFU": lambda c: f"{c['mfu']:.1%}" if c.get("mfu") is not None else "-",
        "one-time encode (s)": lambda c: f"{c['encode_once_s']:.2f}" if c["cache_built"] else "-",
        "mean loss (timed steps)": lambda c: f"{c['mean_loss']:.5f}",
    }
    if cuda:
        fmt["peak GPU memory (GiB)"] = lambda c: f"{c['peak_gib']:.1f}"

    def cell(f: Any, c: dict[str, Any]) -> str:
        return c["error"][:24] if "error" in c else f(c)

    rows = [("", *columns)] + [(k, *(cell(f, c) for c in columns.values())) for k, f in fmt.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [f"{v:>{w}}" for v, w in zip(r[1:], widths[1:], strict=True)]
        print(f"{r[0]:<{widths[0]}}  " + "  ".join(cells))


def run_ladder(args: argparse.Namespace, run_dir: str, result: dict[str, Any], peak: float | None):
    """Measure each rung of :func:`ladder` into ``result["rungs"]`` (the JSON is rewritten
    after each); a rung out of memory is recorded and left out of the next rungs."""
    import torch

    settings = base_settings(args)
    rungs: list[dict[str, Any]] = result["rungs"]
    for name, change in ladder(settings):
        trial = {**settings, **change}
        try:
            r = measure(args, run_dir, cache=True, flops=True, settings=trial)
        except torch.cuda.OutOfMemoryError as e:
            r = {**trial, "error": f"out of memory: {str(e).splitlines()[0][:200]}"}
        else:
            settings = trial
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        r["rung"] = name
        r["mfu"] = _mfu(r, peak)
        rungs.append(r)
        done = f"{r['samples_per_s']:.1f} samples/s" if "error" not in r else r["error"]
        print(f"rung {name}: {done}", flush=True)
        _write_json(args.json, result)
        if "error" in r and "batch_size" in change:
            break  # a larger micro-batch needs more memory still


def _write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:sd", help="base model id / path / tiny:sd")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4, help="micro-batch")
    parser.add_argument("--gradient-accumulation", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=16, help="synthetic images in the skill")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (= alpha)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="(CUDA only)")
    parser.add_argument("--no-fused-optimizer", dest="fused_optimizer", action="store_false",
                        help="foreach AdamW instead of fused")  # fmt: skip
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--cached-only", action="store_true", help="leave out the uncached run")
    parser.add_argument("--ladder", action="store_true", help="one speed option per rung")
    parser.add_argument("--peak-tflops", type=float, default=None, help="for MFU")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from selma_ray.storage import RunDir
    from selma_ray.training.data import write_synthetic_skill

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_unet import peak_tflops

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = args.peak_tflops or (peak_tflops(name) if cuda else None)
    print(
        f"model {args.model}  device {args.device} ({name})  resolution {args.resolution}  "
        f"micro-batch {args.batch_size} x {args.gradient_accumulation} accumulation  steps "
        f"{args.steps} (+{args.warmup} warmup)  mixed precision {args.mixed_precision}  LoRA "
        f"rank {args.rank}  gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}"
        f"  fused AdamW {'on' if args.fused_optimizer else 'off'}  channels_last "
        f"{'on' if args.channels_last else 'off'}  compile "
        f"{args.compile_backend if args.compile else 'off'}  torch threads "
        f"{torch.get_num_threads()}  peak {peak or '-'} TFLOPS",
        flush=True,
    )
    result: dict[str, Any] = {
        "model": args.model,
        "device": name,
        "resolution": args.resolution,
        "steps": args.steps,
        "warmup": args.warmup,
        "rank": args.rank,
        "compile_backend": args.compile_backend if args.compile else None,
        "peak_tflops": peak,
        "ladder": args.ladder,
        "rungs": [],
    }
    with tempfile.TemporaryDirectory(prefix="selma-bench-train-") as tmp:
        size = (args.resolution * 3 // 2, args.resolution)
        write_synthetic_skill(RunDir(tmp), "bench", prompts=args.pairs, size=size)
        if args.ladder:
            run_ladder(args, tmp, result, peak)
            columns = {r["rung"]: r for r in result["rungs"]}
            uncached = None
        else:
            cached = measure(args, tmp, cache=True, flops=True)
            uncached = None if args.cached_only else measure(args, tmp, cache=False)
            columns = {"cached": cached, **({"uncached": uncached} if uncached else {})}
            for c in columns.values():
                c["mfu"] = _mfu(c, peak)
            result["rungs"] = [{**cached, "rung": "compiled" if args.compile else "cached"}]
            result["columns"] = columns

    measured = [r for r in result["rungs"] if "error" not in r]
    _table(columns, cuda)
    if measured:
        first = measured[0]
        result.update({k: first[k] for k in ("unet_params", "latent_size")})
        forward, step = first.get("forward_flop_per_sample"), first.get("step_flop_per_sample")
        parts = [f"UNet forward {forward / 1e9:,.3f}"] if forward else []
        if step:
            ratio = f" ({step / forward:.2f}x the forward)" if forward else ""
            parts.append(f"one whole step {step / 1e9:,.3f}{ratio}")
        if parts:
            print(f"GFLOP per sample ({first['rung']}): " + ", ".join(parts))
    if args.ladder and len(measured) > 1:
        before, best = measured[0], max(measured, key=lambda r: r["samples_per_s"])
        ratio = best["samples_per_s"] / before["samples_per_s"]
        print(f"ratio {best['rung']} / before samples/s: {ratio:.2f}x")
    if uncached:
        cached = columns["cached"]
        ratio = uncached["step_s"] / cached["step_s"]
        saved = uncached["step_s"] - cached["step_s"]
        breakeven = cached["encode_once_s"] / saved if saved > 0 else float("inf")
        print(f"ratio uncached / cached step time: {ratio:.2f}x")
        print(f"the cache pays for itself after {breakeven:.1f} steps")
    _write_json(args.json, result)
    return 0 if measured else 1


if __name__ == "__main__":
    raise SystemExit(main())
