"""Stage 1 on vLLM: engines kept across the self-instruct rounds vs new engines every round.

    python benchmarks/vllm_rounds.py [--model tiny:llm] [--rounds 3] [--requests 2]
                                     [--skills coco] [--max-tokens 48] [--engines 1]
                                     [--set prompts.KEY=VALUE ...] [--json out.json]

The prompts stage (``generate_prompts``) runs ``--rounds`` rounds of ``--requests`` requests
per skill on Ray (a local Ray of 2 CPUs unless one is running), twice on fresh run directories:

- ``kept``: the ``vllm`` engine as the stage runs it, one pool of ``--engines`` engines (Ray
  actors) opened on the first call and closed when the stage ends;
- ``restarted``: ``keep_engines=False``, the former way: every engine call is one Ray Data job
  whose actors start new engines (model load and warm-up each round).

Prints the wall time of each (model fitting on the driver included, a ``tiny:*`` model's build
not), the ratio restarted / kept, the engine starts (each start leaves
a file) and whether both wrote the same prompts (per-request seeds: they must). ``kept`` runs
first, so any warm-up of the machine (page cache, imports) favours ``restarted``. With
tiny:llm's 512 positions the DSG question requests do not fit and are not sent; a model with a
longer context sends them through the same engines, one more engine call per round.
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


def _run(cfg: Any, run_dir: str, starts: Path, *, keep_engines: bool) -> dict[str, Any]:
    from selma_ray.distributed import RayExecutor
    from selma_ray.prompts.engines.vllm_engine import VllmEngine, VllmPredictor
    from selma_ray.prompts.stage import generate_prompts, read_prompts
    from selma_ray.storage import RunDir

    class Counted(VllmPredictor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            (starts / f"{os.getpid()}-{time.monotonic_ns()}").touch()
            super().__init__(*args, **kwargs)

    class Engine(VllmEngine):
        predictor = Counted
        calls = 0

        def generate(self, requests: list[Any]) -> list[Any]:
            Engine.calls += bool(requests)
            return super().generate(requests)

    before = len(list(starts.iterdir()))
    engine = Engine(cfg.model, cfg.vllm, RayExecutor(), keep_engines=keep_engines)
    t0 = time.perf_counter()
    try:
        stats = generate_prompts(cfg, RunDir(run_dir), engine, seed=0)
    finally:
        engine.close()
    seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 2),
        "engine_calls": Engine.calls,
        "engine_starts": len(list(starts.iterdir())) - before,
        "rounds": {s: v["rounds"] for s, v in stats.items()},
        "prompts": {s.name: read_prompts(RunDir(run_dir), s.name) for s in cfg.skills},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny:llm")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=2, help="requests per skill per round")
    p.add_argument("--skills", default="coco", help="comma-separated built-in skills")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--engines", type=int, default=1, help="pool size (min = max)")
    p.add_argument("--set", action="append", default=[], help="more config overrides")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from selma_ray.config import load_config

    cfg = load_config(
        overrides=[
            "prompts.engine=vllm",
            f"prompts.model={args.model}",
            f"prompts.skills=[{args.skills}]",
            "prompts.num_prompts=100000",  # never reached: every run does all its rounds
            f"prompts.max_rounds={args.rounds}",
            f"prompts.requests_per_round={args.requests}",
            f"prompts.max_tokens={args.max_tokens}",
            f"prompts.vllm.pool.min_size={args.engines}",
            f"prompts.vllm.pool.max_size={args.engines}",
            *args.set,
        ]
    ).prompts
    from selma_ray.models import resolve_model

    resolve_model(cfg.model)  # a tiny:* model is built (once) before any timing
    if not ray.is_initialized():
        ray.init(num_cpus=max(2, args.engines), include_dashboard=False, configure_logging=False)
    with tempfile.TemporaryDirectory() as tmp:
        starts = Path(tmp, "starts")
        starts.mkdir()
        kept = _run(cfg, str(Path(tmp, "kept")), starts, keep_engines=True)
        restarted = _run(cfg, str(Path(tmp, "restarted")), starts, keep_engines=False)
    same = kept.pop("prompts") == restarted.pop("prompts")
    result = {
        "model": args.model,
        "rounds": args.rounds,
        "engines": args.engines,
        "kept": kept,
        "restarted": restarted,
        "restarted_over_kept": round(restarted["seconds"] / kept["seconds"], 2),
        "same_prompts": same,
    }
    print(f"{args.rounds}-round prompts stage on vLLM ({args.model}, {args.engines} engine(s)):")
    for name in ("kept", "restarted"):
        r = result[name]
        print(
            f"  {name:10s} {r['seconds']:8.1f} s  {r['engine_calls']} engine calls, "
            f"{r['engine_starts']} engine starts, rounds {r['rounds']}"
        )
    print(f"  restarted / kept: {result['restarted_over_kept']:.2f}x; same prompts: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
