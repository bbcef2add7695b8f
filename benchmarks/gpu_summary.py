"""The GPU check's summary: the numbers of ``benchmarks/gpu_check.sh``'s checks in one file.

    python benchmarks/gpu_summary.py OUT_DIR --record-env [--smoke]   # first: env.json
    python benchmarks/gpu_summary.py OUT_DIR [--dest DIR | --results ROOT] [--peak-tflops X]

``--record-env`` writes ``OUT_DIR/env.json`` (device, library versions, smoke or not). The
summary reads it, ``OUT_DIR/checks.jsonl`` (one line per check, written by ``gpu_check.sh``:
``check``, ``exit``, ``seconds``, ``limit_s``, or ``skipped`` with the reason) and the JSON file
each check wrote (``OUT_DIR/<check>.json``), and writes ``summary.json`` to ``OUT_DIR`` and to
``--dest`` (default ``<--results>/<date>-<device slug>``, ``--results`` defaulting to
``benchmarks/results``) with the check logs (``OUT_DIR/*.log``) beside it. A number is null
where its check was skipped, failed (exit code not 0) or timed out.

Keys (see ``SUMMARY_KEYS``):

- ``images_per_s_exact`` / ``images_per_s_batched``: the stage's ``ImageGenerator`` (no Ray),
  one image per pipeline call / ``images_per_call`` images per call, steady state (``images``
  check); ``images_per_s_default`` is the rate of the mode the GPU presets draw in
  (``images.exact_per_image`` of the ``sd15`` preset), ``images_default_mode`` names it;
- ``batched_bytes_identical``: every image byte-identical between two batched drawings
  through the stage's ``draw_rows`` with two task splits (``batch_invariance`` check);
- ``train_samples_per_s``: the expert's training step with cached inputs, in the fastest
  configuration measured (``train_best`` names it): a rung of ``train_step.py --ladder`` (the
  ``train_step`` check: the old ``sd15`` step first, then one speed option more per rung) or the
  compiled step (``train_compiled``); ``train_samples_per_s_before`` / ``train_mfu_before``: the
  ladder's first rung (the ``sd15`` preset's step before [throughput] item 0: fp16, gradient
  checkpointing, foreach AdamW); ``train_ladder`` lists every rung (samples/s, MFU, peak
  memory, mean loss: the same samples and draws in each);
- ``train_mfu`` = ``train_samples_per_s`` x ``train_flop_per_sample`` / peak, where
  ``train_flop_per_sample`` = F x (2 + 1 if gradient checkpointing was on): F is one UNet
  forward per sample at the training resolution, counted by ``gpu_unet.py`` (the
  ``unet_bf16`` check) when its UNet and latent size are the trained ones, else by
  ``train_step.py``; x2 counts the forward and the backward's input gradients (a LoRA step:
  the frozen base weights get no weight gradients, and the LoRA's own are negligible), +1 the
  forward that checkpointing recomputes; the issue's ~2.4 TFLOP per sample for the ``sd15``
  step (803 GFLOP forward, checkpointing on) is this count.
  ``train_mfu_executed`` divides instead the FLOPs ``train_step.py`` counted in one
  whole real step of that configuration (a check on the formula: within a few % without
  checkpointing);
- ``images_per_s_batched_channels_last`` / ``images_per_s_batched_fuse_qkv``: batched drawing
  with ``images.channels_last`` / ``images.fuse_qkv`` (``images_channels_last`` /
  ``images_fuse_qkv`` checks), beside ``images_per_s_batched``;
- ``unet_mfu_eager`` / ``unet_mfu_compiled``: ``gpu_unet.py`` in bf16, eager / under
  ``torch.compile`` (``unet_bf16`` / ``unet_compile`` checks; ``unet_compile_backend`` names
  the backend: inductor, or aot_eager in a CPU smoke run);
- ``serve_overhead_fraction`` = (Serve p50 - direct p50) / Serve p50 of the same request
  (one expert throughout), Serve from the ``serve_http`` check (needs Ray), direct from
  ``serve_switch``;
- ``expert_switch_ms``: the mean switch time between alternating experts with LoRA hot-swap;
  ``expert_switch_ms_set_adapters`` the same with ``set_adapters`` (``serve_switch``);
  ``expert_switch_ms_fused``: hot-swap with ``serve.fuse_qkv`` (the fused QKV weights rebuilt
  on each switch; ``serve_switch_fused``).

Peak: ``--peak-tflops``, else ``gpu_unet.py``'s table of dense bf16 peaks by device name (none
for a CPU: the MFU keys are then null).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import re
import shutil
import sys
from pathlib import Path
from typing import Any

try:
    import selma_ray  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_unet import peak_tflops  # noqa: E402

#: The numbers every summary has (null where not measured).
SUMMARY_KEYS: tuple[str, ...] = (
    "images_per_s_default",
    "images_per_s_exact",
    "images_per_s_batched",
    "batched_bytes_identical",
    "train_samples_per_s",
    "train_mfu",
    "train_mfu_executed",
    "train_samples_per_s_before",
    "train_mfu_before",
    "images_per_s_batched_channels_last",
    "images_per_s_batched_fuse_qkv",
    "unet_mfu_eager",
    "unet_mfu_compiled",
    "serve_overhead_fraction",
    "expert_switch_ms",
    "expert_switch_ms_set_adapters",
    "expert_switch_ms_fused",
)
#: The checks gpu_check.sh runs, in order (most wanted first: a run out of time skips the last).
CHECKS: tuple[str, ...] = (
    "build",
    "unet_bf16",
    "train_step",
    "images",
    "batch_invariance",
    "train_compiled",
    "unet_compile",
    "serve_switch",
    "images_channels_last",
    "images_fuse_qkv",
    "serve_switch_fused",
    "serve_http",
)


def record_env(out_dir: Path, smoke: bool) -> dict[str, Any]:
    """Device and library versions of this machine, written to ``out_dir/env.json``."""
    env: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "smoke": smoke,
        "python": platform.python_version(),
    }
    for name in ("torch", "diffusers", "transformers", "peft"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    try:
        import torch

        cuda = torch.cuda.is_available()
        env["cuda"] = torch.version.cuda if cuda else None
        env["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    except ImportError:
        env["cuda"], env["device"] = None, "unknown"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    return env


def device_slug(device: str) -> str:
    """``NVIDIA H200`` -> ``h200``; ``cpu`` -> ``cpu`` (the results folder's suffix)."""
    name = re.sub(r"^(nvidia|amd)\s+", "", device.strip(), flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _get(data: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def read_checks(out_dir: Path) -> dict[str, dict[str, Any]]:
    """``checks.jsonl``: per check its exit code (None: skipped), seconds and time limit."""
    checks: dict[str, dict[str, Any]] = {}
    path = out_dir / "checks.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                checks[row.pop("check")] = row
    return checks


def check_results(out_dir: Path, checks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each check's JSON, only where the check exited 0 (else None)."""
    results: dict[str, Any] = {}
    for name, info in checks.items():
        path = out_dir / f"{name}.json"
        ok = info.get("exit") == 0 and path.exists()
        results[name] = json.loads(path.read_text()) if ok else None
    return results


def _batched_rate(images: dict[str, Any] | None) -> float | None:
    """The steady batched rate of a ``benchmarks/images.py`` result."""
    return _number(_get(images, "columns", "core batched", "steady_ips"))


def default_mode() -> str:
    """``batched`` or ``exact``: how the GPU presets (``sd15``) draw images."""
    from selma_ray.config import ImagesConfig, preset_dict

    images = ImagesConfig.model_validate(preset_dict("sd15").get("images", {}))
    return "exact" if images.exact_per_image else "batched"


def train_flops(
    rung: dict[str, Any] | None, unet: dict[str, Any] | None
) -> tuple[float | None, str | None, int]:
    """(FLOP per training sample, where F came from, multiplier): F x (2 + checkpointing),
    for one measured configuration (a rung of ``train_step.py``'s JSON)."""
    if not rung:
        return None, None, 3
    multiplier = 2 + bool(rung.get("gradient_checkpointing"))
    same_unet = (
        unet is not None
        and unet.get("latent_size") == rung.get("latent_size")
        and unet.get("params") == rung.get("unet_params")
    )
    if same_unet and _number(unet.get("flop_per_sample")):
        return unet["flop_per_sample"] * multiplier, "gpu_unet", multiplier
    forward = _number(rung.get("forward_flop_per_sample"))
    if forward:
        return forward * multiplier, "train_step", multiplier
    return None, None, multiplier


def train_rungs(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The measured training configurations: the ladder's rungs, then the compiled step."""
    rungs = list(_get(res.get("train_step"), "rungs") or [])
    compiled = _get(res.get("train_compiled"), "rungs") or []
    return [*rungs, *({**r, "rung": "compiled"} for r in compiled)]


def summarize(out_dir: Path, peak_override: float | None = None) -> dict[str, Any]:
    """The summary of the checks in ``out_dir`` (see the module docstring)."""
    env_path = out_dir / "env.json"
    env = json.loads(env_path.read_text()) if env_path.exists() else {}
    checks = read_checks(out_dir)
    res = check_results(out_dir, checks)
    device = env.get("device") or "unknown"
    peak = peak_override or (peak_tflops(device) if env.get("cuda") else None)

    def mfu(rate: float | None, flop: float | None) -> float | None:
        if rate is None or flop is None or not peak:
            return None
        return rate * flop / (peak * 1e12)

    images = _get(res.get("images"), "columns")
    exact = _number(_get(images, "core exact", "steady_ips"))
    batched = _number(_get(images, "core batched", "steady_ips"))
    mode = default_mode()
    invariance = res.get("batch_invariance")
    unet = res.get("unet_bf16")
    rungs = train_rungs(res)
    ladder = []
    for r in rungs:
        flop, flop_source, multiplier = train_flops(r, unet)
        rate = _number(r.get("samples_per_s")) if "error" not in r else None
        ladder.append({
            "rung": r.get("rung"),
            "micro_batch": r.get("batch_size"),
            "gradient_accumulation": r.get("gradient_accumulation"),
            "samples_per_s": rate,
            "mfu": mfu(rate, flop),
            "mfu_executed": mfu(rate, _number(r.get("step_flop_per_sample"))),
            "flop_per_sample": flop,
            "flop_formula": f"forward x {multiplier}, forward from {flop_source}" if flop else None,
            "peak_gib": _number(r.get("peak_gib")),
            "mean_loss": _number(r.get("mean_loss")),
            "error": r.get("error"),
        })  # fmt: skip
    measured = [x for x in ladder if x["samples_per_s"] is not None]
    best = max(measured, key=lambda x: x["samples_per_s"]) if measured else {}
    before = ladder[0] if ladder and ladder[0]["rung"] == "before" else {}
    direct_p50 = _number(_get(res.get("serve_switch"), "direct", "same_variant", "p50_ms"))
    serve_p50 = _number(_get(res.get("serve_http"), "serve", "same_variant", "p50_ms"))
    switch = res.get("serve_switch")

    versions = ("python", "torch", "diffusers", "transformers", "peft", "cuda")
    names = (*CHECKS, *sorted(set(checks) - set(CHECKS)))
    overhead = None
    if direct_p50 is not None and serve_p50:
        overhead = (serve_p50 - direct_p50) / serve_p50
    summary: dict[str, Any] = {
        "date": env.get("date"),
        "device": device,
        "smoke": bool(env.get("smoke")),
        "versions": {k: env.get(k) for k in versions},
        "checks": {n: checks.get(n, {"exit": None, "skipped": "not run"}) for n in names},
        "peak_tflops": peak,
        "peak_source": None if not peak else "--peak-tflops" if peak_override else "table",
        "images_default_mode": mode,
        "images_per_s_default": batched if mode == "batched" else exact,
        "images_per_s_exact": exact,
        "images_per_s_batched": batched,
        "images_batched_vs_exact": batched / exact if batched and exact else None,
        "images_per_s_batched_channels_last": _batched_rate(res.get("images_channels_last")),
        "images_per_s_batched_fuse_qkv": _batched_rate(res.get("images_fuse_qkv")),
        "batched_bytes_identical": _get(invariance, "task_splits_all_identical"),
        "batched_bytes_identical_count": _get(invariance, "task_splits_identical"),
        "train_samples_per_s": best.get("samples_per_s"),
        "train_best": best.get("rung"),
        "train_flop_per_sample": best.get("flop_per_sample"),
        "train_flop_formula": best.get("flop_formula"),
        "train_mfu": best.get("mfu"),
        "train_mfu_executed": best.get("mfu_executed"),
        "train_samples_per_s_before": before.get("samples_per_s"),
        "train_mfu_before": before.get("mfu"),
        "train_ladder": ladder,
        "unet_mfu_eager": _number(_get(unet, "mfu")),
        "unet_mfu_compiled": _number(_get(res.get("unet_compile"), "mfu")),
        "unet_compile_backend": _get(res.get("unet_compile"), "compile_backend"),
        "serve_direct_p50_ms": direct_p50,
        "serve_p50_ms": serve_p50,
        "serve_overhead_fraction": overhead,
        "expert_switch_ms": _number(
            _get(switch, "direct_hotswap", "alternating", "set_adapters_ms")
        ),
        "expert_switch_ms_set_adapters": _number(
            _get(switch, "direct", "alternating", "set_adapters_ms")
        ),
        "expert_switch_ms_fused": _number(
            _get(res.get("serve_switch_fused"), "direct_hotswap", "alternating", "set_adapters_ms")
        ),
    }
    return summary


def write(out_dir: Path, dest: Path, summary: dict[str, Any]) -> None:
    """summary.json in ``out_dir`` and in ``dest``, the check logs beside the latter."""
    text = json.dumps(summary, indent=2) + "\n"
    (out_dir / "summary.json").write_text(text)
    dest.mkdir(parents=True, exist_ok=True)
    if dest.resolve() != out_dir.resolve():
        (dest / "summary.json").write_text(text)
        for log in sorted(out_dir.glob("*.log")):
            shutil.copyfile(log, dest / log.name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path, help="where gpu_check.sh wrote its logs and JSON")
    p.add_argument("--record-env", action="store_true", help="only write OUT_DIR/env.json")
    p.add_argument("--smoke", action="store_true", help="(with --record-env) a CPU smoke run")
    p.add_argument("--dest", type=Path, default=None, help="folder for summary.json + logs")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"),
                   help="parent of the default --dest, <date>-<device slug>")  # fmt: skip
    p.add_argument("--peak-tflops", type=float, default=None, help="override the peak table")
    args = p.parse_args(argv)
    if args.record_env:
        print(json.dumps(record_env(args.out_dir, args.smoke)))
        return 0
    summary = summarize(args.out_dir, args.peak_tflops)
    date = summary["date"] or datetime.date.today().isoformat()
    dest = args.dest or args.results / f"{date}-{device_slug(summary['device'])}"
    write(args.out_dir, dest, summary)
    print(json.dumps(summary, indent=2))
    print(f"summary: {dest / 'summary.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
