"""benchmarks/gpu_check.sh and gpu_summary.py: the CPU smoke run of the whole GPU check
(every check exits 0, summary.json holds every number) and the summary's arithmetic and nulls
on hand-written check outputs of a GPU run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
#: A nominal peak for the CPU (which has no entry in the table), so the MFU keys are numbers.
SMOKE_PEAK_TFLOPS = 0.5


def _summary_module():
    spec = importlib.util.spec_from_file_location("gpu_summary", BENCHMARKS / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _smoke_check(out: Path, cache: Path, timeout: int, **env: str) -> None:
    """``SMOKE=1 bash benchmarks/gpu_check.sh`` into ``out`` with ``env`` added; exit 0."""
    env = {
        **os.environ,
        "SMOKE": "1",
        "OUT": str(out),
        "SELMA_RAY_CACHE": str(cache),
        "RAY_AUTH_MODE": "disabled",
        # the script runs `python3`: this interpreter's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **env,
    }
    env.pop("RESULTS", None)
    proc = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_smoke_run_exits_0_everywhere_and_summarizes_every_number(tmp_path, _offline_cache):
    out = tmp_path / "out"
    _smoke_check(out, _offline_cache, timeout=600, PEAK_TFLOPS=str(SMOKE_PEAK_TFLOPS))
    gpu_summary = _summary_module()
    checks = [json.loads(line) for line in (out / "checks.jsonl").read_text().splitlines()]
    assert [c["check"] for c in checks] == list(gpu_summary.CHECKS)
    failed = {c["check"]: c for c in checks if c["exit"] != 0}
    assert not failed, {n: (out / f"{n}.log").read_text()[-2000:] for n in failed}

    summary = json.loads((out / "summary.json").read_text())
    # every key is a number (the bytes check a bool): none is null by design on the CPU, since
    # PEAK_TFLOPS stands in for the CPU's missing peak, torch.compile runs with the aot_eager
    # backend and the Serve part runs on this box's Ray
    for key in gpu_summary.SUMMARY_KEYS:
        value = summary[key]
        if key == "batched_bytes_identical":
            assert value is True, summary
        else:
            assert isinstance(value, float), (key, value)
    assert summary["smoke"] is True and summary["device"] == "cpu"
    assert summary["unet_compile_backend"] == "aot_eager"
    assert {n: c["exit"] for n, c in summary["checks"].items()} == dict.fromkeys(
        gpu_summary.CHECKS, 0
    )

    # the numbers are the checks' own, combined as documented
    read = {n: json.loads((out / f"{n}.json").read_text()) for n in gpu_summary.CHECKS[1:]}
    images, unet = read["images"]["columns"], read["unet_bf16"]
    assert summary["images_default_mode"] == "batched"  # the sd15 preset's
    assert summary["images_per_s_default"] == summary["images_per_s_batched"]
    assert summary["images_per_s_batched"] == images["core batched"]["steady_ips"]
    assert summary["images_per_s_exact"] == images["core exact"]["steady_ips"]
    for option in ("channels_last", "fuse_qkv"):
        columns = read[f"images_{option}"]["columns"]
        assert list(columns) == ["core batched"]  # --core-mode batched
        rate = summary[f"images_per_s_batched_{option}"]
        assert rate == columns["core batched"]["steady_ips"]
    assert read["batch_invariance"]["task_splits_identical"] == read["batch_invariance"]["n"]

    # the training ladder: one speed option more per rung from the old sd15 step, then the
    # compiled step; every rung trains on the same samples and draws, so (float32 on the CPU)
    # the same loss
    rungs = read["train_step"]["rungs"] + read["train_compiled"]["rungs"]
    names = [r["rung"] for r in rungs]
    assert names == [
        "before", "bf16", "no checkpointing", "fused AdamW", "channels_last", "micro-batch 4",
        "compiled",
    ]  # fmt: skip
    assert [(r["batch_size"], r["gradient_accumulation"]) for r in rungs[-2:]] == [(4, 1), (2, 2)]
    assert rungs[0]["fused_optimizer"] is False and rungs[-1]["fused_optimizer"] is True
    assert [r["mean_loss"] for r in rungs] == pytest.approx([rungs[0]["mean_loss"]] * 7, rel=1e-4)
    assert [x["rung"] for x in summary["train_ladder"]] == names
    best = max(rungs, key=lambda r: r["samples_per_s"])
    assert summary["train_best"] == best["rung"]
    assert summary["train_samples_per_s"] == best["samples_per_s"]
    assert summary["train_samples_per_s_before"] == rungs[0]["samples_per_s"]
    # the trained UNet is tiny:sd's, gpu_unet --tiny's too: same parameters, and the step's own
    # forward count is the UNet's plus its LoRA layers' (a little more)
    for train in (rungs[0], best):
        assert unet["params"] == train["unet_params"]
        assert unet["latent_size"] == train["latent_size"]
        assert 1.0 < train["forward_flop_per_sample"] / unet["flop_per_sample"] < 1.1
        assert train["gradient_checkpointing"] is False  # CUDA only
    flop = unet["flop_per_sample"] * 2  # forward + input gradients; no checkpointing on CPU
    assert summary["train_flop_per_sample"] == flop
    # the count the formula stands for: what one real step executes, within LoRA's share
    assert 0.9 < best["step_flop_per_sample"] / flop < 1.1
    peak = SMOKE_PEAK_TFLOPS * 1e12
    assert summary["train_mfu"] == pytest.approx(best["samples_per_s"] * flop / peak)
    assert summary["train_mfu_before"] == pytest.approx(rungs[0]["samples_per_s"] * flop / peak)
    executed = best["samples_per_s"] * best["step_flop_per_sample"] / peak
    assert summary["train_mfu_executed"] == pytest.approx(executed)
    assert summary["unet_mfu_eager"] == unet["mfu"]
    assert unet["peak_tflops"] == SMOKE_PEAK_TFLOPS  # PEAK_TFLOPS reached gpu_unet.py
    direct = read["serve_switch"]["direct"]["same_variant"]["p50_ms"]
    served = read["serve_http"]["serve"]["same_variant"]["p50_ms"]
    assert summary["serve_overhead_fraction"] == pytest.approx((served - direct) / served)
    switch = read["serve_switch"]
    assert summary["expert_switch_ms"] == switch["direct_hotswap"]["alternating"]["set_adapters_ms"]
    assert (
        summary["expert_switch_ms_set_adapters"]
        == switch["direct"]["alternating"]["set_adapters_ms"]
    )
    fused = read["serve_switch_fused"]["direct_hotswap"]["alternating"]["set_adapters_ms"]
    assert summary["expert_switch_ms_fused"] == fused

    # summary.json and the logs under $OUT/results/<date>-cpu (SMOKE keeps out of the repo)
    dest = out / "results" / f"{summary['date']}-cpu"
    assert json.loads((dest / "summary.json").read_text()) == summary
    assert {p.name for p in dest.glob("*.log")} == {f"{n}.log" for n in gpu_summary.CHECKS}


def _write_gpu_run(out: Path, train_exit: int) -> dict[str, dict]:
    """Check outputs as an H200 run writes them (numbers made up), the two training checks
    exiting ``train_exit``; the later checks skipped, serve_http for want of Ray."""
    out.mkdir()
    env = {"date": "2026-12-01", "smoke": False, "device": "NVIDIA H200", "cuda": "13.0"}
    (out / "env.json").write_text(json.dumps(env))
    sd15 = {"latent_size": 64, "unet_params": 859_520_964, "forward_flop_per_sample": 8.1e11}
    files = {
        "unet_bf16": {"latent_size": 64, "params": 859_520_964, "flop_per_sample": 8.0e11,
                      "mfu": 0.26},
        "unet_compile": {"mfu": 0.37, "compile_backend": "inductor"},
        "train_step": {"ladder": True, "rungs": [
            {**sd15, "rung": "before", "samples_per_s": 40.0, "gradient_checkpointing": True,
             "step_flop_per_sample": 2.4e12, "batch_size": 16, "gradient_accumulation": 2,
             "peak_gib": 6.1, "mean_loss": 1.05},
            {**sd15, "rung": "no checkpointing", "samples_per_s": 80.0,
             "gradient_checkpointing": False, "step_flop_per_sample": 1.6e12, "batch_size": 16,
             "gradient_accumulation": 2, "peak_gib": 30.0, "mean_loss": 1.05},
            {"rung": "micro-batch 32", "batch_size": 32, "gradient_accumulation": 1,
             "gradient_checkpointing": False, "error": "out of memory: CUDA out of memory"},
        ]},
        "train_compiled": {"rungs": [
            {**sd15, "rung": "compiled", "samples_per_s": 100.0, "gradient_checkpointing": False,
             "step_flop_per_sample": 1.7e12, "batch_size": 16, "gradient_accumulation": 2,
             "peak_gib": 25.0, "mean_loss": 1.05},
        ]},
        "images": {"columns": {"core exact": {"steady_ips": 0.9},
                               "core batched": {"steady_ips": float("nan")}}},
        "batch_invariance": {"n": 16, "task_splits_identical": 15,
                             "task_splits_all_identical": False},
        "serve_switch": {"direct": {"same_variant": {"p50_ms": 1000.0},
                                    "alternating": {"set_adapters_ms": 30.0}},
                         "direct_hotswap": {"alternating": {"set_adapters_ms": 12.5}}},
        "images_channels_last": {"columns": {"core batched": {"steady_ips": 4.2}}},
    }  # fmt: skip
    lines = []
    for name, data in files.items():
        (out / f"{name}.json").write_text(json.dumps(data))
        code = train_exit if name.startswith("train_") else 0
        lines.append({"check": name, "exit": code, "seconds": 1, "limit_s": 60})
    for name in ("images_fuse_qkv", "serve_switch_fused"):
        lines.append({"check": name, "exit": None, "seconds": 0, "limit_s": 75,
                      "skipped": "no time left"})  # fmt: skip
    lines.append({"check": "serve_http", "exit": None, "seconds": 0, "limit_s": 0,
                  "skipped": "ray or httpx not importable"})  # fmt: skip
    (out / "checks.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (out / "train_step.log").write_text("log\n")
    return files


def test_summary_of_a_gpu_run_uses_the_peak_table_and_the_checkpointing_formula(tmp_path):
    gpu_summary = _summary_module()
    _write_gpu_run(tmp_path / "out", train_exit=0)
    gpu_summary.main([str(tmp_path / "out"), "--results", str(tmp_path / "results")])
    summary = json.loads((tmp_path / "results" / "2026-12-01-h200" / "summary.json").read_text())
    assert (tmp_path / "results" / "2026-12-01-h200" / "train_step.log").read_text() == "log\n"
    assert summary["peak_tflops"] == 989.0 and summary["peak_source"] == "table"
    # before: forward from gpu_unet (same UNet, same resolution) x (2 + 1 recompute), the
    # issue's 2.4 TF per sample
    assert summary["train_samples_per_s_before"] == 40.0
    assert summary["train_mfu_before"] == pytest.approx(40.0 * 2.4e12 / 989e12)
    # after: the fastest configuration (compiled), no recompute: forward x 2
    assert summary["train_best"] == "compiled" and summary["train_samples_per_s"] == 100.0
    assert summary["train_flop_per_sample"] == 8.0e11 * 2
    assert summary["train_flop_formula"] == "forward x 2, forward from gpu_unet"
    assert summary["train_mfu"] == pytest.approx(100.0 * 1.6e12 / 989e12)
    assert summary["train_mfu_executed"] == pytest.approx(100.0 * 1.7e12 / 989e12)
    ladder = {x["rung"]: x for x in summary["train_ladder"]}
    assert list(ladder) == ["before", "no checkpointing", "micro-batch 32", "compiled"]
    assert ladder["no checkpointing"]["mfu"] == pytest.approx(80.0 * 1.6e12 / 989e12)
    oom = ladder["micro-batch 32"]
    assert oom["samples_per_s"] is None and oom["mfu"] is None
    assert oom["error"].startswith("out of memory") and oom["micro_batch"] == 32
    assert summary["unet_mfu_eager"] == 0.26 and summary["unet_mfu_compiled"] == 0.37
    assert summary["images_per_s_exact"] == 0.9
    # NaN (too few images for a steady rate) is no number; the default mode is batched
    assert summary["images_per_s_batched"] is None and summary["images_per_s_default"] is None
    assert summary["images_per_s_batched_channels_last"] == 4.2
    assert summary["batched_bytes_identical"] is False
    assert summary["batched_bytes_identical_count"] == 15
    assert summary["expert_switch_ms"] == 12.5 and summary["expert_switch_ms_set_adapters"] == 30.0
    # checks the run had no time for, or no Ray: null numbers, the reason kept
    assert summary["images_per_s_batched_fuse_qkv"] is None
    assert summary["expert_switch_ms_fused"] is None
    assert summary["checks"]["images_fuse_qkv"]["skipped"] == "no time left"
    assert summary["serve_overhead_fraction"] is None  # serve_http skipped
    assert summary["checks"]["serve_http"]["skipped"] == "ray or httpx not importable"
    assert list(summary["checks"]) == list(gpu_summary.CHECKS)


def test_summary_nulls_the_numbers_of_a_failed_check(tmp_path):
    gpu_summary = _summary_module()
    _write_gpu_run(tmp_path / "out", train_exit=124)  # timed out, its JSON left from before
    summary = gpu_summary.summarize(tmp_path / "out")
    assert summary["checks"]["train_step"]["exit"] == 124
    for key in (
        "train_samples_per_s",
        "train_mfu",
        "train_mfu_executed",
        "train_flop_per_sample",
        "train_samples_per_s_before",
        "train_mfu_before",
    ):
        assert summary[key] is None
    assert summary["train_ladder"] == []
    assert summary["unet_mfu_eager"] == 0.26  # the other checks' numbers stand
    # the forward count falls back to train_step's own when gpu_unet measured another UNet
    files = _write_gpu_run(tmp_path / "other", train_exit=0)
    files["unet_bf16"]["latent_size"] = 32
    (tmp_path / "other" / "unet_bf16.json").write_text(json.dumps(files["unet_bf16"]))
    summary = gpu_summary.summarize(tmp_path / "other")
    before = summary["train_ladder"][0]
    assert before["flop_per_sample"] == 8.1e11 * 3
    assert before["flop_formula"] == "forward x 3, forward from train_step"
    assert summary["train_flop_per_sample"] == 8.1e11 * 2


def test_only_runs_the_named_checks_and_records_the_others_as_skipped(tmp_path, _offline_cache):
    out = tmp_path / "out"
    _smoke_check(out, _offline_cache, timeout=300, ONLY="build")
    lines = (out / "checks.jsonl").read_text().splitlines()
    checks = {c["check"]: c for c in map(json.loads, lines)}
    gpu_summary = _summary_module()
    assert list(checks) == list(gpu_summary.CHECKS)
    assert checks["build"]["exit"] == 0
    assert {c.get("skipped") for n, c in checks.items() if n != "build"} == {"not in ONLY"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_samples_per_s"] is None and summary["checks"]["images"]["exit"] is None
