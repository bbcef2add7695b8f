"""`selma-ray status` (selma_ray/status.py), the quiet console and the run's driver log."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest

from selma_ray import layout
from selma_ray.config import load_config
from selma_ray.status import STALE_AFTER_S, format_status, run_status
from selma_ray.storage import Manifest, RunDir

SMALL = [
    "prompts.num_prompts=4",
    "prompts.skills=[coco, whoops]",
    "images.resolution=32",
    "images.steps=2",
    "train.max_steps=10",
]


def _run_dir(tmp_path: Path) -> RunDir:
    rd = RunDir(str(tmp_path / "run"))
    rd.makedirs()
    rd.write_text(load_config(overrides=SMALL).to_yaml(), *layout.config())
    return rd


def _driver(rd: RunDir, *, host: str, beat_at: float, state: str = "running") -> None:
    data = {"host": host, "pid": 4242, "started_at": beat_at - 100, "beat_at": beat_at}
    rd.write_json({**data, "state": state}, *layout.driver_heartbeat())


def test_running_images_stage_shows_progress_and_eta_from_outputs(tmp_path):
    rd = _run_dir(tmp_path)
    now = time.time()
    m = Manifest(rd)
    m.start("prompts", {}, "h")
    m.finish("prompts", {"coco": 4, "whoops": 4}, 1.5)
    m.start("images", {}, "h")
    m.stages["images"]["started_at"] = now - 30
    m.save()
    for skill in ("coco", "whoops"):
        rd.write_jsonl([{"id": f"{skill}-{i}"} for i in range(4)], *layout.prompts_file(skill))
    for name in ("coco-0_0.png", "coco-1_0.png"):  # 2 of 8 drawn so far, on any node
        rd.write_bytes(b"png", *layout.images_dir("coco", name))
    _driver(rd, host="gpu-node-7", beat_at=now - 5)  # another host: judged by its heartbeat

    st = run_status(rd.uri, now=now)
    assert st.alive and st.running_stage == "images"
    images = st.stages[1]
    assert (images.state, images.done, images.total, images.unit) == ("running", 2, 8, "images")
    assert images.seconds == pytest.approx(30, abs=0.01)
    assert images.eta_s == pytest.approx(90, abs=0.01)  # 6 more at 15 s each
    text = format_status(st, now=now)
    lines = text.splitlines()
    assert lines[0] == f"run directory: {rd.uri}"
    assert lines[1] == "running: driver pid 4242 on gpu-node-7, last heard 5.0 s ago"
    assert lines[3].split()[:3] == ["prompts", "done", "coco"]
    assert "images   running  2/8 images (25 %)" in lines[4]
    assert " 30.0 s " in lines[4] and lines[4].endswith(" ETA 1 min 30 s")
    assert [line.split()[:2] for line in lines[5:]] == [
        ["experts", "pending"], ["merge", "pending"], ["eval", "pending"]
    ]  # fmt: skip

    # a resumed attempt that found 1 image drawn by the one before drew 1 in its 30 s
    m.stages["images"]["progress_at_start"] = 1
    m.save()
    assert run_status(rd.uri, now=now).stages[1].eta_s == pytest.approx(180, abs=0.01)
    m.stages["images"]["progress_at_start"] = 2  # nothing drawn yet by this attempt
    m.save()
    assert run_status(rd.uri, now=now).stages[1].eta_s is None
    m.stages["images"]["progress_at_start"] = 0
    m.save()

    # the same driver silent for longer than STALE_AFTER_S: killed or lost
    later = now + STALE_AFTER_S + 1
    st = run_status(rd.uri, now=later)
    assert not st.alive and st.stages[1].state == "interrupted"
    lines = format_status(st, now=later).splitlines()
    assert lines[1].startswith("not running: the driver (pid 4242 on gpu-node-7) was last heard")
    assert lines[2] == f"resume: selma-ray run --run-dir {rd.uri} (same config)"


def test_dead_driver_on_this_host_is_seen_at_once(tmp_path):
    rd = _run_dir(tmp_path)
    m = Manifest(rd)
    m.start("prompts", {}, "h")
    dead = 2**22 + 12345  # above the default pid_max: no such process
    rd.write_json(
        {"host": socket.gethostname(), "pid": dead, "state": "running", "beat_at": time.time()},
        *layout.driver_heartbeat(),
    )
    st = run_status(rd.uri)  # beat a moment ago, but the process is gone
    assert not st.alive and st.stages[0].state == "interrupted"


def test_running_experts_progress_counts_checkpoint_steps(tmp_path):
    rd = _run_dir(tmp_path)
    m = Manifest(rd)
    m.start("experts", {}, "h")
    _driver(rd, host="elsewhere", beat_at=time.time())
    state = {"step": 6}
    rd.write_json(state, *layout.train_dir(), "expert-coco", "checkpoint_000006", "state.json")
    rd.write_bytes(b"lora", *layout.expert_lora("whoops"))  # whoops finished: all 10 steps
    experts = run_status(rd.uri).stages[2]
    assert (experts.done, experts.total, experts.unit) == (16, 20, "training steps")

    # with train.storage_path the checkpoints are this run's folder there
    from selma_ray.training.stage import train_storage_path

    cfg = load_config(overrides=[*SMALL, f"train.storage_path={tmp_path / 'ckpt'}"])
    rd.write_text(cfg.to_yaml(), *layout.config())
    elsewhere = RunDir(train_storage_path(cfg, rd))
    elsewhere.write_json({"step": 8}, "expert-coco", "checkpoint_000008", "state.json")
    experts = run_status(rd.uri).stages[2]
    assert (experts.done, experts.total) == (18, 20)


def test_cli_status_json_and_missing_run(tmp_path, capsys, monkeypatch):
    from selma_ray.cli import main

    rd = _run_dir(tmp_path)
    m = Manifest(rd)
    m.start("prompts", {}, "h")
    m.finish("prompts", {"coco": 4}, 1.0)
    _driver(rd, host="elsewhere", beat_at=time.time() - 10, state="finished")
    assert main(["status", "--run-dir", rd.uri, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["alive"] is False and data["driver"]["state"] == "finished"
    assert [s["state"] for s in data["stages"]] == ["done"] + ["pending"] * 4
    assert main(["status", "--run-dir", rd.uri]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "not running: the driver finished"
    assert out[2] == f"resume: selma-ray run --run-dir {rd.uri} (same config)"  # unfinished
    monkeypatch.chdir(tmp_path)
    assert main(["status"]) == 2
    assert "no selma-runs/latest here: give --run-dir" in capsys.readouterr().err
    assert main(["status", "--run-dir", str(tmp_path)]) == 2
    assert "not a selma-ray run directory" in capsys.readouterr().err


def test_failed_stage_is_one_line_naming_it_and_the_log_with_the_traceback(
    tiny_models, tmp_path, capsys, monkeypatch
):
    import selma_ray.images.stage as images_stage
    from selma_ray.cli import main

    def broken(cfg, run_dir, executor):
        raise RuntimeError("skill 'coco' row 3: the image actor ran out of memory\nmore detail")

    monkeypatch.setattr(images_stage, "run_images_stage", broken)
    run = tmp_path / "run"
    args = ["run", "--run-dir", str(run), "--no-progress", "--set", "ray.executor=in-process"]
    args += [a for s in SMALL for a in ("--set", s)]
    assert main(args) == 1
    err = capsys.readouterr().err.splitlines()
    logs = sorted((run / layout.LOGS).glob("driver-*.log"))
    assert len(logs) == 1
    assert err[-3:] == [
        "selma-ray: stage images failed: RuntimeError: skill 'coco' row 3: the image actor ran "
        "out of memory",
        f"  full traceback: {logs[0]}",
        "  finished work is kept; rerun the same command to resume",
    ]
    text = logs[0].read_text()
    assert "Traceback (most recent call last)" in text and "more detail" in text
    manifest = RunDir(str(run)).read_json(*layout.manifest())["stages"]
    assert manifest["prompts"]["status"] == "done"
    assert manifest["images"]["status"] == "failed"
    assert manifest["images"]["error"].startswith("RuntimeError: skill 'coco' row 3")
    driver = RunDir(str(run)).read_json(*layout.driver_heartbeat())
    assert driver["state"] == "failed"


def test_quiet_console_keeps_library_info_out_but_in_the_driver_log(tmp_path, capsys):
    from selma_ray.runlog import configure_console, driver_log

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        configure_console()
        rd = RunDir(str(tmp_path / "run"))
        with driver_log(rd) as url:
            logging.getLogger("selma_ray.pipeline").info("stage images: running")
            logging.getLogger("botocore.hooks").info("Execution plan of Dataset ...")
            logging.getLogger("transformers").warning("requires torchvision; falling back")
            logging.getLogger("urllib3.connectionpool").error("worker group failed")
        err = capsys.readouterr().err.splitlines()
        assert err == ["stage images: running", "error: worker group failed"], "\n".join(err)
        text = Path(url).read_text()
        for line in ("stage images: running", "Execution plan", "falling back", "worker group"):
            assert line in text
    finally:
        for h in list(root.handlers):
            if h not in saved[1]:
                root.removeHandler(h)
        root.setLevel(saved[0])


def test_native_output_goes_to_the_driver_log_not_the_console(tmp_path):
    """A quiet run's fds 1 and 2 point at the driver log (Ray's C++ core worker writes to fd 2,
    Ray prints the raylet's messages to sys.stdout); selma-ray's lines still reach the
    terminal's stderr, and both fds are back when the run ends."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import logging, os, sys
        from selma_ray.runlog import configure_console, driver_log
        from selma_ray.storage import RunDir
        configure_console()
        with driver_log(RunDir({str(tmp_path / "run")!r})) as url:
            os.write(2, b"core_worker.cc:2465: NATIVE-ERR\\n")
            os.write(1, b"NATIVE-OUT\\n")
            print("(raylet) PY-OUT")
            print("PY-ERR", file=sys.stderr)
            logging.getLogger("selma_ray.pipeline").info("OURS")
            logging.getLogger("ray.data").warning("THEIRS")
        print("AFTER", url)
        print("AFTER-ERR", file=sys.stderr)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stderr.splitlines() == ["OURS", "AFTER-ERR"], out.stderr
    assert out.stdout.startswith("AFTER ") and len(out.stdout.splitlines()) == 1, out.stdout
    log = Path(out.stdout.split()[1]).read_text()
    for text in ("NATIVE-ERR", "NATIVE-OUT", "(raylet) PY-OUT", "PY-ERR", "OURS", "THEIRS"):
        assert text in log, text


class _Terminal:
    """A stream that says it is a terminal and keeps what is written to it."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


def test_live_bar_follows_the_stage_outputs_on_a_terminal_only(tmp_path):
    from selma_ray.status import LiveProgress

    rd = _run_dir(tmp_path)
    cfg = load_config(overrides=SMALL)
    for skill in ("coco", "whoops"):
        rd.write_jsonl([{"id": f"{skill}-{i}"} for i in range(4)], *layout.prompts_file(skill))
    term = _Terminal()
    with LiveProgress(rd, cfg, "images", term, interval=0.05) as live:
        rd.write_bytes(b"png", *layout.images_dir("coco", "coco-0_0.png"))
        deadline = time.time() + 10
        while (live.bar is None or live.bar.n < 1) and time.time() < deadline:
            time.sleep(0.05)
        assert (live.bar.n, live.bar.total) == (1, 8)
        for i in range(1, 4):
            rd.write_bytes(b"png", *layout.images_dir("whoops", f"whoops-{i}_0.png"))
    assert (live.bar.n, live.bar.total) == (4, 8)  # the last redraw on leaving
    assert "images" in term.text and "4/8" in term.text
    # not a terminal (a log, a pipe): no bar, no thread
    import io

    pipe = io.StringIO()
    with LiveProgress(rd, cfg, "images", pipe, interval=0.05) as quiet:
        time.sleep(0.2)
    assert quiet.bar is None and pipe.getvalue() == ""


def test_running_eval_progress_counts_images_and_saved_answers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from selma_ray.status import stage_progress

    rd = _run_dir(tmp_path)
    cfg = load_config(overrides=SMALL)
    rd.write_json({"images": 6, "questions": 20}, *layout.eval_plan())
    for variant in ("base", "merged"):
        rd.write_bytes(b"png", *layout.eval_images(variant, "vrd_1.png"))
    for part, n in (("part-a.parquet", 5), ("part-b.parquet", 3)):
        buf = pa.BufferOutputStream()
        pq.write_table(pa.table({"answer": ["yes"] * n}), buf)
        rd.write_bytes(buf.getvalue().to_pybytes(), *layout.eval_answer_parts(part))
    seen: dict[str, int] = {}
    assert stage_progress(rd, cfg, "eval", seen) == (2 + 8, 26, "images + answers")
    assert seen == {"part-a.parquet": 5, "part-b.parquet": 3}
