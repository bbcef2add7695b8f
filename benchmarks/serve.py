"""Serving overhead: a direct pipeline call vs the same request through Ray Serve over HTTP.

Three measurements, same model, run dir, prompt, size, steps and torch threads everywhere:

- latency p50 / p95 of one request (n=1) made directly on
  :class:`selma_ray.serving.model.VariantPipeline` in this process, and through Serve
  (``POST /v1/images/generations`` on loopback: HTTP proxy -> ingress -> model replica);
- the cost of switching LoRA variants: every request for the same expert vs requests alternating
  between experts (and ``merged``), directly and over HTTP; plus the raw switch time the
  replica recorded (``set_adapters``; with ``--hotswap on|both`` also the LoRA hot-swap's copy
  into one slot, ``--compile`` on a compiled UNet, where hot-swap avoids a recompile);
- throughput (images/s) with 1..C concurrent HTTP clients.

``--channels-last`` / ``--fuse-qkv`` run everything with ``serve.channels_last`` /
``serve.fuse_qkv`` (with fused QKV a switch also rebuilds the fused weights: its cost is in the
switch time); run once with and once without to compare.

The direct part runs first and is released before Serve starts, so the two never share cores.
Without ``--run-dir`` a run dir with random LoRAs on ``--model`` is written to a temp dir.

    python benchmarks/serve.py                                   # tiny:sd, 64 px, 4 steps
    python benchmarks/serve.py --run-dir /runs/sd15 --size 512 --steps 30 --num-gpus 1 \\
        --concurrency 1 4 8 --replicas 1
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import statistics
import tempfile
import time
from typing import Any

PROMPT = "two red apples to the left of a blue cup"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny:sd", help="base model when no --run-dir is given")
    p.add_argument("--run-dir", default=None, help="a finished run dir (config.yaml, experts/)")
    p.add_argument("--n", type=int, default=20, help="requests per latency measurement")
    p.add_argument("--warmup", type=int, default=4, help="untimed requests before each series")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="image width = height")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (direct + replica)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--replicas", type=int, default=1, help="model replicas (serve.pool size)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="serve.pool.cpus per replica")
    p.add_argument("--num-gpus", type=float, default=0.0, help="serve.pool.gpus per replica")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of a local Ray (default all)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument(
        "--hotswap", choices=("off", "on", "both"), default="off",
        help="direct part: switch variants by set_adapters (off), LoRA hot-swap (on) or both",
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="direct part: torch.compile the UNet")
    p.add_argument("--channels-last", action="store_true", help="serve.channels_last")
    p.add_argument("--fuse-qkv", action="store_true", help="serve.fuse_qkv")
    p.add_argument("--skip-direct", action="store_true")
    p.add_argument("--skip-serve", action="store_true")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) in milliseconds of values in seconds."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank] * 1000


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(pct(values, 50), 2),
        "p95_ms": round(pct(values, 95), 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
        "n": len(values),
    }


def body(args: argparse.Namespace, variant: str, seed: int) -> dict[str, Any]:
    return {
        "prompt": PROMPT,
        "model": variant,
        "n": 1,
        "seed": seed,
        "size": f"{args.size}x{args.size}",
        "num_inference_steps": args.steps,
        "response_format": "b64_json",
    }


def sequences(experts: list[str], merged: bool, n: int) -> dict[str, list[str]]:
    """Variant order of each latency series: one expert throughout, or cycling through all."""
    cycle = experts + (["merged"] if merged else [])
    same = experts[0] if experts else ("merged" if merged else "base")
    return {
        "same_variant": [same] * n,
        "alternating": [cycle[i % len(cycle)] for i in range(n)] if len(cycle) > 1 else [],
        "base": ["base"] * n,
    }


# --------------------------------------------------------------------------- direct


def bench_direct(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    import torch

    from selma_ray.serving.api import GenerationJob
    from selma_ray.serving.model import VariantPipeline

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    engine = VariantPipeline(spec, device=args.device, torch_threads=args.threads)
    out: dict[str, Any] = {
        "device": engine.device,
        "load_s": round(time.perf_counter() - t0, 2),
        "adapters_load_s": round(engine.adapter_load_seconds, 2),
    }
    experts = [v for v in spec.variants if spec.kinds.get(v) == "expert"]
    for name, order in sequences(experts, "merged" in spec.adapters, args.n).items():
        if not order:
            continue
        for i in range(args.warmup):
            engine.generate(GenerationJob.from_dict(body_job(args, order[i % len(order)], i)))
        switches0, switch_s0 = engine.stats["switches"], engine.stats["switch_seconds"]
        times = []
        for i, variant in enumerate(order):
            job = GenerationJob.from_dict(body_job(args, variant, 1000 + i))
            t = time.perf_counter()
            engine.generate(job)
            times.append(time.perf_counter() - t)
        out[name] = summary(times)
        switches = engine.stats["switches"] - switches0
        if switches:
            per = (engine.stats["switch_seconds"] - switch_s0) / switches
            out[name]["set_adapters_ms"] = round(per * 1000, 2)
            out[name]["switches"] = int(switches)
    del engine
    gc.collect()
    return out


def body_job(args: argparse.Namespace, variant: str, seed: int) -> dict[str, Any]:
    b = body(args, variant, seed)
    return {
        "variant": variant,
        "prompt": b["prompt"],
        "n": 1,
        "width": args.size,
        "height": args.size,
        "seed": seed,
        "num_inference_steps": args.steps,
        "guidance_scale": 7.5,
    }


# --------------------------------------------------------------------------- serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_serve(args: argparse.Namespace, run_dir: str, spec: Any) -> dict[str, Any]:
    import httpx
    import ray
    from ray import serve

    from selma_ray.distributed.serve import build_app

    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    top = max(args.concurrency)
    app = build_app(
        {
            "run_dir": run_dir,
            "serve": {
                "auth_token_env": "",
                "pool": {
                    "min_size": args.replicas,
                    "max_size": args.replicas,
                    "cpus": args.num_cpus,
                    "gpus": args.num_gpus,
                },
                "max_ongoing_requests": max(2, top),
                "max_queued_requests": 4 * top,
                "max_size": max(args.size, 64),
                "max_steps": max(args.steps, 1),
                "channels_last": args.channels_last,
                "fuse_qkv": args.fuse_qkv,
            },
            "torch_threads": args.threads,
            "device": args.device,
        }
    )
    serve.run(app, name="selma-bench", route_prefix="/")
    out["start_s"] = round(time.perf_counter() - t0, 2)
    url = f"http://127.0.0.1:{port}/v1/images/generations"
    try:
        with httpx.Client(timeout=600) as client:

            def post(variant: str, seed: int) -> None:
                r = client.post(url, json=body(args, variant, seed))
                r.raise_for_status()

            experts = [v for v in spec.variants if spec.kinds.get(v) == "expert"]
            for name, order in sequences(experts, "merged" in spec.adapters, args.n).items():
                if not order:
                    continue
                for i in range(args.warmup):
                    post(order[i % len(order)], i)
                times = []
                for i, variant in enumerate(order):
                    t = time.perf_counter()
                    post(variant, 1000 + i)
                    times.append(time.perf_counter() - t)
                out[name] = summary(times)
        out["throughput"] = {}
        for c in args.concurrency:
            out["throughput"][str(c)] = asyncio.run(throughput(args, url, c))
        model = serve.get_deployment_handle("SelmaImageModel", app_name="selma-bench")
        stats = model.stats.remote().result()
        if stats.get("switches"):
            out["replica_set_adapters_ms"] = round(
                stats["switch_seconds"] / stats["switches"] * 1000, 2
            )
    finally:
        serve.shutdown()
    return out


async def throughput(args: argparse.Namespace, url: str, concurrency: int) -> dict[str, Any]:
    import httpx

    total = max(args.n, 2 * concurrency)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    latencies: list[float] = []
    codes: dict[int, int] = {}

    async with httpx.AsyncClient(timeout=600) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t = time.perf_counter()
                r = await client.post(url, json=body(args, "merged", 5000 + i))
                latencies.append(time.perf_counter() - t)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        await client.post(url, json=body(args, "merged", 1))  # warm
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "images_per_s": round(total / wall, 2),
        "p50_ms": round(pct(latencies, 50), 1),
        "p95_ms": round(pct(latencies, 95), 1),
        "requests": total,
        "codes": codes,
    }


# --------------------------------------------------------------------------- main


def print_table(results: dict[str, Any]) -> None:
    direct, served = results.get("direct", {}), results.get("serve", {})
    print(f"\n{'series':<16}{'direct p50/p95 ms':>22}{'serve p50/p95 ms':>22}{'switch ms':>12}")
    for name in ("same_variant", "alternating", "base"):
        d, s = direct.get(name), served.get(name)
        if not d and not s:
            continue
        dd = f"{d['p50_ms']:.1f} / {d['p95_ms']:.1f}" if d else "-"
        ss = f"{s['p50_ms']:.1f} / {s['p95_ms']:.1f}" if s else "-"
        sw = f"{d['set_adapters_ms']:.2f}" if d and "set_adapters_ms" in d else ""
        print(f"{name:<16}{dd:>22}{ss:>22}{sw:>12}")
    hot = results.get("direct_hotswap", {}).get("alternating")
    if hot:
        print(
            f"{'alternating, hot-swap':<24}{hot['p50_ms']:>8.1f} / {hot['p95_ms']:.1f}"
            f"{'':>22}{hot.get('set_adapters_ms', 0.0):>12.2f}"
        )
    for c, t in served.get("throughput", {}).items():
        print(
            f"concurrency {c:<4} {t['images_per_s']:>7.2f} img/s   p50 {t['p50_ms']:.0f} ms   "
            f"p95 {t['p95_ms']:.0f} ms   codes {t['codes']}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from selma_ray.serving.model import discover_variants, make_random_run_dir

    tmp = None
    if args.run_dir:
        run_dir = args.run_dir
        spec = discover_variants(run_dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="selma-serve-bench-")
        run_dir = os.path.join(tmp.name, "run")
        options = {"channels_last": args.channels_last, "fuse_qkv": args.fuse_qkv}
        spec = make_random_run_dir(run_dir, base_model=args.model, serve_overrides=options)
    results: dict[str, Any] = {
        "model": spec.base_model,
        "variants": list(spec.variants),
        "size": args.size,
        "steps": args.steps,
        "threads": args.threads,
        "n": args.n,
        "channels_last": args.channels_last,
        "fuse_qkv": args.fuse_qkv,
    }
    if not args.skip_direct:
        import dataclasses

        modes = {"off": [False], "on": [True], "both": [False, True]}[args.hotswap]
        for hotswap in modes:
            key = "direct_hotswap" if hotswap else "direct"
            one = dataclasses.replace(
                spec, hotswap=hotswap, compile=args.compile, channels_last=args.channels_last,
                fuse_qkv=args.fuse_qkv,
            )  # fmt: skip
            results[key] = bench_direct(args, one)
    if not args.skip_serve:
        results["serve"] = bench_serve(args, run_dir, spec)
    print(json.dumps(results, indent=2))
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
