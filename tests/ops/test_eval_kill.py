"""Failure drill: SIGKILL the eval stage while it asks the VQA model, then rerun it.

The stage runs in a subprocess (``run_eval_stage`` with the in-process executor, DSG-1k items
drawn by the base model only), printing the keys of every batch its VQA scorer is asked. The
scorer is slowed down in the first run only, so the kill lands after some answer parts are saved
and before the last. The rerun must ask exactly the questions with no saved part, fold the parts
into one, and its answers table must equal an undisturbed run's.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

OVERRIDES = [
    "eval.benchmarks=[dsg1k]",
    "eval.variants=[base]",
    "eval.max_items=6",
    "eval.rows_per_task=2",
    "eval.clip_model=null",
    "images.steps=2",
    "train.resolution=32",  # the variants are drawn at the experts' training resolution
]

SCRIPT = """
import json, sys, time
from selma_ray.config import load_config
from selma_ray.evaluation import stage, vqa
from selma_ray.execution import InProcessExecutor
from selma_ray.storage import RunDir

run_dir, delay, overrides = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
answer = vqa.VQAScorer.__call__


def recorded(self, batch):
    time.sleep(delay)
    cols = (batch["model"], batch["benchmark"], batch["item_id"], batch["question_id"])
    print("asked", json.dumps([[str(m), str(b), str(i), int(q)] for m, b, i, q in zip(*cols)]))
    return answer(self, batch)


vqa.VQAScorer.__call__ = recorded
stage.run_eval_stage(load_config(overrides=overrides), RunDir(run_dir), InProcessExecutor())
print("eval done")
"""


def _run(run_dir: Path, delay: float, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-c", SCRIPT, str(run_dir), str(delay), *OVERRIDES]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, **popen)


def _key(row: dict) -> tuple[str, str, str, int]:
    return (row["model"], row["benchmark"], row["item_id"], int(row["question_id"]))


def _parts(run_dir: Path) -> dict[str, list[tuple]]:
    """{part file name: answer keys in it}."""
    import pyarrow.parquet as pq

    folder = run_dir / "eval" / "answers"
    if not folder.exists():
        return {}
    out = {}
    for path in sorted(folder.glob("part-*.parquet")):
        rows = pq.read_table(path).to_pylist()
        out[path.name] = [_key(r) for r in rows]
    return out


def _answers(run_dir: Path):
    import pandas as pd

    return pd.read_parquet(io.BytesIO((run_dir / "eval" / "answers.parquet").read_bytes()))


def test_killed_eval_asks_only_unanswered_questions_again(tiny_models, tmp_path):
    import pandas as pd

    from selma_ray.config import load_config
    from selma_ray.evaluation import stage
    from selma_ray.execution import InProcessExecutor
    from selma_ray.models import resolve_model
    from selma_ray.storage import RunDir

    resolve_model("tiny:vqa")  # built once here, not raced by the subprocess
    run_dir = tmp_path / "killed"
    log = (tmp_path / "first.log").open("w")
    proc = _run(run_dir, 0.5, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(_parts(run_dir)) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    before = _parts(run_dir)
    first_log = (tmp_path / "first.log").read_text()[-3000:]
    assert len(before) >= 3, first_log
    assert not (run_dir / "eval" / "answers.parquet").exists(), "killed too late: " + first_log
    answered_before = [k for keys in before.values() for k in keys]

    rerun = _run(run_dir, 0.0, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0 and "eval done" in out, out[-3000:]

    asked_now = [tuple(k) for line in out.splitlines() if line.startswith("asked ")
                 for k in json.loads(line.removeprefix("asked "))]  # fmt: skip
    # no answered question was asked again, and every other question was asked once
    assert not set(asked_now) & set(answered_before)
    assert len(asked_now) == len(set(asked_now))
    table = _answers(run_dir)
    every = [_key(r) for r in table.to_dict("records")]
    assert sorted(asked_now + answered_before) == sorted(every)
    stats = RunDir(str(run_dir)).read_json("eval", "stats.json")
    assert stats["answered_before"] == len(answered_before) > 0
    assert stats["asked_now"] == len(asked_now) > 0
    assert stats["questions"] == len(every)
    # every answer in: the parts were folded into one, holding each answer once
    [folded] = _parts(run_dir).values()
    assert sorted(folded) == sorted(every)

    # the same answers, in the same order, as an undisturbed run
    import torch

    torch.set_num_threads(1)
    whole = tmp_path / "whole"
    stage.run_eval_stage(load_config(overrides=OVERRIDES), RunDir(str(whole)), InProcessExecutor())
    pd.testing.assert_frame_equal(table, _answers(whole))
    report = RunDir(str(run_dir)).read_json("eval", "report.json")
    assert report["variants"] == RunDir(str(whole)).read_json("eval", "report.json")["variants"]
