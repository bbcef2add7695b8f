"""GPU roofline check for stage 2: SD-1.5-sized UNet denoising throughput vs the device's peak.

Plain PyTorch + diffusers, no Ray, no download: a ``UNet2DConditionModel`` with Stable Diffusion
1.5's config and random weights denoises ``--batch`` latents of ``--resolution`` px for
``--steps`` steps with classifier-free guidance (the UNet sees a doubled batch each step), in
fp16 or bf16 with SDPA attention, optionally under ``torch.compile``. UNet FLOPs are counted on
one step with ``torch.utils.flop_counter.FlopCounterMode``; the script prints images/s (UNet
denoising only: text encoder and VAE excluded) and achieved TFLOP/s against the device's dense
peak (table below, or ``--peak-tflops``).

    python benchmarks/gpu_unet.py                       # SD-1.5 UNet, 512 px, 30 steps, batch 8
    python benchmarks/gpu_unet.py --compile --dtype fp16
    python benchmarks/gpu_unet.py --tiny                # tiny:sd's UNet on CPU (smoke test)
    python benchmarks/gpu_unet.py --json out.json       # also the results as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

try:
    import selma_ray  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Stable Diffusion 1.5's UNet config, shared with the ``tiny:sd15-size`` pipeline builder; the
# ``--tiny`` UNet is ``tiny:sd``'s (so its FLOP count is that of the tiny pipeline's UNet)
from selma_ray.models.tiny import SD15_UNET_CONFIG as SD15_UNET  # noqa: E402
from selma_ray.models.tiny import SD_VAE_CONFIG, TINY_SD_VAE_CONFIG  # noqa: E402
from selma_ray.models.tiny import TINY_SD_UNET_CONFIG as TINY_UNET  # noqa: E402

#: Image px per latent px of the pipeline's VAE (8 for SD's; 2 for tiny:sd's two blocks).
VAE_FACTOR = 2 ** (len(SD_VAE_CONFIG["block_out_channels"]) - 1)
TINY_VAE_FACTOR = 2 ** (len(TINY_SD_VAE_CONFIG["block_out_channels"]) - 1)

#: Dense fp16/bf16 tensor-core peak, TFLOP/s, by device-name substring (first match wins).
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM / HBM3
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
    ("V100", 125.0),
)

TEXT_TOKENS = 77


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="images per denoising run (8)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (30)")
    p.add_argument(
        "--resolution", type=int, default=None, help="image px (512); latents /8 (tiny: /2)"
    )
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None, help="(bf16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument(
        "--compile-backend", default="inductor",
        help="torch.compile backend (inductor; aot_eager traces without code generation: a "
        "CPU smoke test of the compiled path in seconds)",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=None, help="timed runs after warm-up (3)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the peak table")
    p.add_argument("--no-cfg", action="store_true", help="no classifier-free guidance")
    p.add_argument("--tiny", action="store_true", help="tiny:sd's UNet on CPU: a smoke test")
    p.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH",
        help="also print one JSON line of results (and write it to PATH when given)",
    )  # fmt: skip
    args = p.parse_args(argv)
    tiny = args.tiny
    args.batch = args.batch or (1 if tiny else 8)
    args.steps = args.steps or (2 if tiny else 30)
    args.resolution = args.resolution or (64 if tiny else 512)
    args.dtype = args.dtype or ("fp32" if tiny else "bf16")
    args.repeats = args.repeats or (1 if tiny else 3)
    factor = TINY_VAE_FACTOR if tiny else VAE_FACTOR
    if args.resolution % factor:
        p.error(f"--resolution {args.resolution}: must be a multiple of {factor} (the latents')")
    return args


def main(argv: list[str] | None = None) -> int:
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from torch.utils.flop_counter import FlopCounterMode

    args = parse_args(argv)
    if args.tiny:
        device = "cpu"
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        print("no CUDA device: run with --tiny for a CPU smoke test", file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    cfg = TINY_UNET if args.tiny else SD15_UNET
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).to(device=device, dtype=dtype).eval()
    unet.set_attn_processor(AttnProcessor2_0())
    n_params = sum(p.numel() for p in unet.parameters())
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    cfg_scale = 1.0 if args.no_cfg else 7.5
    copies = 1 if args.no_cfg else 2
    lat = args.resolution // (TINY_VAE_FACTOR if args.tiny else VAE_FACTOR)
    latents0 = torch.randn(args.batch, 4, lat, lat, device=device, dtype=dtype)
    text = torch.randn(
        args.batch * copies, TEXT_TOKENS, cfg["cross_attention_dim"], device=device, dtype=dtype
    )
    # a fixed DDIM-like schedule: the update is cheap next to the UNet, as in a real sampler
    timesteps = torch.linspace(999, 0, args.steps, device=device).long()
    alphas = torch.linspace(0.1, 0.99, args.steps, device=device, dtype=dtype)

    model = torch.compile(unet, backend=args.compile_backend) if args.compile else unet

    def step(latents: torch.Tensor, i: int) -> torch.Tensor:
        x = torch.cat([latents] * copies) if copies > 1 else latents
        eps = model(x, timesteps[i], encoder_hidden_states=text, return_dict=False)[0]
        if copies > 1:
            uncond, cond = eps.chunk(2)
            eps = uncond + cfg_scale * (cond - uncond)
        a = alphas[i]
        return (latents - (1 - a).sqrt() * eps) / a.sqrt()

    def denoise() -> torch.Tensor:
        latents = latents0.clone()
        for i in range(args.steps):
            latents = step(latents, i)
        return latents

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            unet(
                torch.cat([latents0] * copies),
                timesteps[0],
                encoder_hidden_states=text,
                return_dict=False,
            )
        flops_per_step = counter.get_total_flops()

        t0 = time.perf_counter()
        denoise()  # warm-up (compilation, cudnn autotuning)
        sync()
        warmup_s = time.perf_counter() - t0

        times = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            out = denoise()
            sync()
            times.append(time.perf_counter() - t0)
        if not torch.isfinite(out.float()).all():
            print("warning: non-finite latents (random weights overflowed)", file=sys.stderr)

    best = min(times)
    images_per_s = args.batch / best
    achieved = flops_per_step * args.steps / best / 1e12
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = args.peak_tflops or (peak_tflops(name) if device == "cuda" else None)
    result = {
        "device": name,
        "unet": "tiny" if args.tiny else "sd15",
        "params_m": round(n_params / 1e6, 1),
        "params": n_params,
        "dtype": args.dtype,
        "compile": args.compile,
        "compile_backend": args.compile_backend if args.compile else None,
        "batch": args.batch,
        "resolution": args.resolution,
        "latent_size": lat,
        "steps": args.steps,
        "cfg": copies > 1,
        "gflop_per_unet_call": round(flops_per_step / 1e9, 2),
        # one image's UNet forward (the call sees batch x CFG copies of it)
        "flop_per_sample": flops_per_step // (args.batch * copies),
        "warmup_s": round(warmup_s, 3),
        "seconds_per_batch": round(best, 4),
        "images_per_s": round(images_per_s, 3),
        "achieved_tflops": round(achieved, 3),
        "peak_tflops": peak,
        "mfu": round(achieved / peak, 4) if peak else None,
    }
    mode = f"compiled ({args.compile_backend})" if args.compile else "eager"
    unet_desc = f"{result['unet']} ({result['params_m']} M params), {args.dtype}, {mode}, SDPA"
    cfg_desc = ", CFG (UNet batch x2)" if copies > 1 else ""
    work_desc = f"batch {args.batch} x {args.steps} steps, {args.resolution} px{cfg_desc}"
    rows = [
        ("device", name),
        ("UNet", unet_desc),
        ("work", work_desc),
        ("UNet GFLOP / call", f"{flops_per_step / 1e9:,.1f}"),
        ("warm-up", f"{warmup_s:.2f} s"),
        ("time / batch", f"{best:.3f} s (best of {args.repeats})"),
        ("images/s", f"{images_per_s:.3f}"),
        ("achieved TFLOP/s", f"{achieved:.2f}"),
        ("peak TFLOP/s", f"{peak:g} (dense)" if peak else "unknown (pass --peak-tflops)"),
        ("of peak", f"{100 * achieved / peak:.1f} %" if peak else "-"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.json:
        print(json.dumps(result))
        if args.json != "-":
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
