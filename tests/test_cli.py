"""The selma-ray command line, run as users run it (subprocesses for the kill drill)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selma_ray.cli import main
from selma_ray.storage import RunDir


def test_bad_config_exits_2_naming_the_field(capsys, tmp_path):
    code = main(["run", "--run-dir", str(tmp_path), "--set", "prompts.num_prompts=-5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "prompts.num_prompts" in err and "greater than or equal to 1" in err


def test_unknown_key_in_file_exits_2(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prompts:\n  enigne: vllm\n")
    assert main(["config", "validate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "prompts.enigne: unknown key" in err and "engine" in err


def test_missing_config_file_exits_2(capsys, tmp_path):
    assert main(["run", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_config_show_prints_resolved_yaml(capsys):
    assert main(["config", "show", "--preset", "sd15", "--set", "seed=4"]) == 0
    out = capsys.readouterr().out
    assert "preset: sd15" in out and "seed: 4" in out and "rank: 128" in out


def test_prompts_dedup_cli(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    rows = [
        {"prompt": "A red cup on a wooden table.", "k": 1},
        {"prompt": "A red cup on a wooden table!", "k": 2},
        {"prompt": "Two dogs run along a beach at dawn.", "k": 3},
        {"prompt": "A man sleeps in the middle of the highway.", "k": 4},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    existing = tmp_path / "seeds.txt"
    existing.write_text("A man sleeps in the middle of the highway.\n")
    out = tmp_path / "out.jsonl"
    code = main(
        ["prompts", "dedup", "--input", str(src), "--output", str(out), "--existing", str(existing)]
    )
    assert code == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["k"] for r in kept] == [1, 3]


def test_prompts_command_runs_stage_alone(tmp_path, capsys):
    uri = str(tmp_path / "run")
    code = main(
        ["prompts", "--run-dir", uri, "--no-progress", "--set", "prompts.num_prompts=4",
         "--set", "prompts.skills=[coco]"]
    )  # fmt: skip
    assert code == 0
    assert len(RunDir(uri).read_jsonl("prompts", "coco.jsonl")) == 4
    assert "prompts: done" in capsys.readouterr().out


def _tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_models_make_tiny_writes_the_seeded_models_and_prints_their_paths(tmp_path, capsys):
    """`selma-ray models make-tiny DIR --seed 3` writes exactly what make_tiny(DIR, seed=3)
    writes (the layout itself is tested in tests/models/test_tiny.py), and prints both paths."""
    from selma_ray.models.tiny import make_tiny

    out = tmp_path / "m"
    assert main(["models", "make-tiny", str(out), "--seed", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"sd: {out / 'sd'}", f"llm: {out / 'llm'}"]
    ref = make_tiny(tmp_path / "ref", seed=3)
    for kind in ("sd", "llm"):
        written = _tree_bytes(out / kind)
        assert "model_index.json" in written or "config.json" in written
        assert written == _tree_bytes(Path(ref[kind])), kind


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "selma_ray.cli", *args]


@pytest.mark.slow
def test_killed_prompts_run_resumes_without_repeating_rounds(tmp_path):
    """SIGKILL `selma-ray prompts` mid-run; the rerun finishes at the target, same as unbroken."""
    common = [
        "--no-progress",
        "--set", "prompts.num_prompts=400",
        "--set", "prompts.requests_per_round=1",
        "--set", "prompts.prompts_per_request=10",
        "--set", "prompts.skills=[coco, whoops]",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli("prompts", "--run-dir", str(killed), *common),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = killed / "prompts" / "state" / "whoops.json"
    deadline = time.time() + 120
    rounds_at_kill = 0
    while time.time() < deadline:
        if state.exists():
            try:
                rounds_at_kill = json.loads(state.read_text())["rounds"]
            except (json.JSONDecodeError, OSError):
                rounds_at_kill = 0
            if rounds_at_kill >= 3:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rounds_at_kill >= 3, "the run finished or never started before the kill"
    assert not (killed / "prompts" / "stats.json").exists(), "killed too late to test resume"
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["stages"]["prompts"]["status"] == "running"

    rerun = subprocess.run(
        _cli("prompts", "--run-dir", str(killed), *common),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    whole = tmp_path / "whole"
    unbroken = subprocess.run(
        _cli("prompts", "--run-dir", str(whole), *common),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]

    for skill in ("coco", "whoops"):
        a = (killed / "prompts" / f"{skill}.jsonl").read_text()
        b = (whole / "prompts" / f"{skill}.jsonl").read_text()
        assert a == b
        assert len(a.splitlines()) == 400
    stats_k = json.loads((killed / "prompts" / "stats.json").read_text())
    stats_w = json.loads((whole / "prompts" / "stats.json").read_text())
    # rounds and request counts match the unbroken run: no finished round was repeated
    for skill in ("coco", "whoops"):
        for key in ("rounds", "requested", "parsed", "dropped", "accepted"):
            assert stats_k[skill][key] == stats_w[skill][key], (skill, key)
    assert (
        json.loads((killed / "manifest.json").read_text())["stages"]["prompts"]["status"] == "done"
    )
    # a third run does nothing
    before = Path(killed / "prompts" / "coco.jsonl").stat().st_mtime_ns
    again = subprocess.run(
        _cli("prompts", "--run-dir", str(killed), *common),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "already done" in again.stdout
    assert Path(killed / "prompts" / "coco.jsonl").stat().st_mtime_ns == before


_SIGTERM_RUN = """
import dataclasses, os, signal, sys
from selma_ray import pipeline
from selma_ray.cli import main

def killed(ctx):
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not interrupt the stage")

before = signal.getsignal(signal.SIGTERM)
pipeline.STAGES = [
    dataclasses.replace(s, run=killed) if s.name == "prompts" else s for s in pipeline.STAGES
]
try:
    main(["run", "--run-dir", sys.argv[1], "--stages", "prompts", "--no-progress"])
except KeyboardInterrupt as e:
    assert signal.getsignal(signal.SIGTERM) is before, "the handler was not put back"
    print(f"interrupted: {e}")
    sys.exit(3)
"""


def test_sigterm_ends_a_run_as_ctrl_c_does_and_the_stage_is_marked_failed(tmp_path):
    """``ray job stop`` sends SIGTERM: the run ends as on Ctrl-C, the running stage marked failed
    in the manifest and the handler put back, instead of the process dying on the spot (-15).
    In a child process, so that a regression kills the child, not the test session."""
    from selma_ray.storage import RunDir

    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", _SIGTERM_RUN, str(run)], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
    assert "interrupted: stopped by signal SIGTERM" in proc.stdout
    entry = RunDir(str(run)).read_json("manifest.json")["stages"]["prompts"]
    assert entry["status"] == "failed" and "SIGTERM" in entry["error"]


def test_evaluate_rescore_cli(tmp_path, capsys):
    answers = tmp_path / "answers.csv"
    answers.write_text(
        "item_id,question_id,answer\nwhoops_5,1,yes\nwhoops_5,2,no\nwhoops_5,3,yes\n"
    )
    out = tmp_path / "report.json"
    code = main(
        ["evaluate", "rescore", "--benchmark", "dsg1k", "--answers", str(answers),
         "--output", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    model = report["models"]["default"]
    # only the 'defying' category has answers; its other items count as missing (score 0)
    assert set(model["by_category"]) == {"defying"}
    assert model["n_missing"] == model["n_items"] - 1
    assert "overall" in capsys.readouterr().out
    # --items answered: whoops_5 alone, [1, 0, 1] (questions 2 and 3 depend on question 1)
    code = main(
        ["evaluate", "rescore", "--answers", str(answers), "--items", "answered",
         "--output", str(out)]
    )  # fmt: skip
    assert code == 0
    model = json.loads(out.read_text())["models"]["default"]
    assert (model["n_items"], model["n_missing"]) == (1, 0)
    assert model["overall"] == pytest.approx(100 * 2 / 3, abs=1e-3)


def test_evaluate_rescore_missing_columns_exit_2(tmp_path, capsys):
    answers = tmp_path / "answers.csv"
    answers.write_text("item,answer\nwhoops_5,yes\n")
    assert main(["evaluate", "rescore", "--answers", str(answers)]) == 2
    err = capsys.readouterr().err
    assert "item_id" in err and "answer" in err


def test_serve_arg_that_names_a_command_option_exits_2(tmp_path, capsys):
    code = main(["serve", "--run-dir", str(tmp_path), "--arg", "host=0.0.0.0"])
    assert code == 2
    assert "--arg host=...: not a serve argument; use --host" in capsys.readouterr().err
