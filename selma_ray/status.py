"""Where a run stands, read from its run directory alone: ``selma-ray status``.

Works from any terminal that can read the run directory (local or object storage), while the
run goes on, after it ends and after it was killed. Three sources, all in the run directory:

- the manifest (each stage's state, counts, start time, elapsed time, error);
- the driver's heartbeat (:class:`Heartbeat`, ``driver.json``: host, pid, last beat), which
  tells a running driver from a dead one: a stage marked ``running`` whose driver process is
  gone (on this host) or has not beaten for :data:`STALE_AFTER_S` (elsewhere) was killed;
- the stage's outputs so far (prompts written, images drawn, each expert's latest checkpoint
  step), counted against what the run's config plans, for a running stage's progress and ETA.
  Workers anywhere on the cluster write those outputs, so the count covers them all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from selma_ray import layout
from selma_ray.storage import RunDir

__all__ = [
    "STAGE_ORDER",
    "Heartbeat",
    "RunStatus",
    "StageStatus",
    "format_status",
    "run_status",
    "status_json",
]

STAGE_ORDER = ("prompts", "images", "experts", "merge", "eval")
#: Seconds between the driver's heartbeats, and after which a silent driver counts as gone.
BEAT_EVERY_S = 10.0
STALE_AFTER_S = 60.0


class Heartbeat:
    """Writes ``driver.json`` (host, pid, started, last beat) every ``every_s`` seconds from a
    daemon thread while the run's driver is alive; :meth:`stop` writes a last beat with the
    outcome (``finished`` / ``failed``)."""

    def __init__(self, run_dir: RunDir, every_s: float = BEAT_EVERY_S) -> None:
        self.run_dir = run_dir
        self.every_s = every_s
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="selma-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.beat("running")
        self._thread.start()
        return self

    def beat(self, state: str) -> None:
        data = {**self.info, "state": state, "beat_at": time.time()}
        try:
            self.run_dir.write_json(data, *layout.driver_heartbeat())
        except Exception:  # noqa: BLE001 - a missed beat must never stop the run
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat("running")

    def stop(self, state: str) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.beat(state)


@dataclass
class StageStatus:
    name: str
    state: str  # pending | running | done | incomplete | failed | interrupted
    seconds: float | None = None  # elapsed so far (running) or in all (ended)
    counts: dict[str, Any] = field(default_factory=dict)
    done: int | None = None  # units of progress (running stages)
    total: int | None = None
    unit: str = ""
    error: str | None = None
    #: progress already there when this attempt started (a resumed stage's earlier work)
    done_at_start: int = 0

    @property
    def eta_s(self) -> float | None:
        """Remaining seconds at this attempt's pace, for a running stage with progress (work
        an earlier attempt left does not count as done in this attempt's seconds)."""
        if self.state != "running" or not self.total or self.done is None or self.seconds is None:
            return None
        progressed = self.done - self.done_at_start
        if progressed <= 0:
            return None
        return self.seconds * (self.total - self.done) / progressed


@dataclass
class RunStatus:
    run_dir: str
    driver: dict[str, Any] | None
    alive: bool
    stages: list[StageStatus]

    @property
    def running_stage(self) -> str | None:
        return next((s.name for s in self.stages if s.state == "running"), None)


def run_status(uri: str, *, now: float | None = None) -> RunStatus:
    """The status of the run at ``uri``; FileNotFoundError when it is not a run directory."""
    rd = RunDir(uri)
    if not rd.exists(*layout.manifest()):
        msg = f"{rd.url(*layout.manifest())} does not exist: not a selma-ray run directory"
        raise FileNotFoundError(msg)
    now = time.time() if now is None else now
    manifest = rd.read_json(*layout.manifest()).get("stages", {})
    driver = read_driver(rd)
    alive = driver_alive(driver, now)
    cfg = _run_config(rd)
    stages = []
    for name in STAGE_ORDER:
        entry = manifest.get(name)
        if entry is None:
            stages.append(StageStatus(name, "pending"))
            continue
        state = entry.get("status", "pending")
        st = StageStatus(name, state, entry.get("seconds"), entry.get("counts") or {})
        st.error = entry.get("error")
        if state == "running":
            if not alive:
                st.state = "interrupted"
            if entry.get("started_at"):
                end = now if alive else (driver or {}).get("beat_at", now)
                st.seconds = max(0.0, end - entry["started_at"])
            if cfg is not None:
                st.done, st.total, st.unit = stage_progress(rd, cfg, name)
                st.done_at_start = int(entry.get("progress_at_start") or 0)
        stages.append(st)
    return RunStatus(rd.uri, driver, alive, stages)


def read_driver(rd: RunDir) -> dict[str, Any] | None:
    """The run's driver heartbeat (:class:`Heartbeat`), or None before any driver ran."""
    return (
        rd.read_json(*layout.driver_heartbeat()) if rd.exists(*layout.driver_heartbeat()) else None
    )


def driver_alive(driver: dict[str, Any] | None, now: float) -> bool:
    """A driver that said it is running: on this host, whether its process exists; elsewhere,
    whether it beat within :data:`STALE_AFTER_S`."""
    if not driver or driver.get("state") != "running":
        return False
    if driver.get("host") == socket.gethostname():
        try:
            os.kill(int(driver["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, KeyError):
            pass  # someone else's process, or no pid: go by the heartbeat
        else:
            return True
    return now - float(driver.get("beat_at", 0)) < STALE_AFTER_S


def _run_config(rd: RunDir) -> Any:
    from selma_ray.config import load_config

    try:
        return load_config(rd.url(*layout.config()))
    except Exception:  # noqa: BLE001 - status shows what it can without the config
        return None


def stage_progress(
    rd: RunDir, cfg: Any, stage: str, seen: dict[str, int] | None = None
) -> tuple[int | None, int | None, str]:
    """(done, planned, unit) of a running stage, counted from its outputs so far (wherever on
    the cluster they were written). ``seen``: a cache of the eval answer files' row counts
    across calls (each file's footer is read once)."""
    skills = [s.name for s in cfg.prompts.skills]
    drawn = [s.name for s in cfg.prompts.skills if not s.imports_pairs]  # pairs: imported
    try:
        if stage == "prompts":  # the generated ones (data captions are read at once)
            written = [s.name for s in cfg.prompts.skills if s.data is None]
            done = sum(_lines(rd, layout.prompts_file(s)) for s in written)
            return done, cfg.prompts.num_prompts * len(written), "prompts"
        if stage == "images":
            planned = sum(_lines(rd, layout.prompts_file(s)) for s in drawn)
            done = sum(
                sum(1 for n in _listdir(rd, layout.images_dir(s)) if n != layout.METADATA_FILE)
                for s in drawn
            )
            return done, planned * cfg.images.images_per_prompt, "images"
        if stage == "experts":
            from selma_ray.training.resume import checkpoint_steps
            from selma_ray.training.stage import train_storage_path

            jobs = [*skills, layout.JOINT] if cfg.train.joint else skills
            storage = train_storage_path(cfg, rd).rstrip("/")  # train/, or train.storage_path
            steps = 0
            for s in jobs:
                if rd.exists(*layout.expert_lora(s)):
                    steps += cfg.train.max_steps
                    continue
                found = checkpoint_steps(f"{storage}/{layout.train_run_name(s)}")
                steps += found[0][0] if found else 0
            return steps, cfg.train.max_steps * len(jobs), "training steps"
        if stage == "eval" and rd.exists(*layout.eval_plan()):
            plan = rd.read_json(*layout.eval_plan())
            drawn = sum(
                sum(n.endswith(".png") for n in _listdir(rd, layout.eval_images(v)))
                for v in _listdir(rd, layout.eval_images())
            )
            answered = _answer_rows(rd, {} if seen is None else seen)
            total = int(plan["images"]) + int(plan["questions"])
            return min(drawn + answered, total), total, "images + answers"
    except Exception:  # noqa: BLE001 - progress is best effort; the state still shows
        return None, None, ""
    return None, None, ""


def _answer_rows(rd: RunDir, seen: dict[str, int]) -> int:
    """Rows in the eval answer part files (the footers of files not in ``seen`` are read)."""
    import pyarrow.parquet as pq

    for name in _listdir(rd, layout.eval_answer_parts()):
        if name.startswith("part-") and name.endswith(".parquet") and name not in seen:
            with rd.fs.open(rd.path(*layout.eval_answer_parts(name)), "rb") as f:
                seen[name] = pq.read_metadata(f).num_rows
    return sum(seen.values())


def _listdir(rd: RunDir, parts: layout.Parts) -> list[str]:
    return rd.listdir(*parts) if rd.exists(*parts) else []


def _lines(rd: RunDir, parts: layout.Parts) -> int:
    if not rd.exists(*parts):
        return 0
    return sum(1 for line in rd.read_text(*parts).splitlines() if line.strip())


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _counts(counts: dict[str, Any]) -> str:
    parts = []
    for key, value in counts.items():
        if isinstance(value, (int, float, str, bool)):
            parts.append(f"{key} {value}")
    text = ", ".join(parts)
    return text if len(text) <= 60 else text[:57] + "..."


def format_status(st: RunStatus, *, now: float | None = None) -> str:
    """The status as the console shows it: the run, its driver, one line per stage."""
    now = time.time() if now is None else now
    lines = [f"run directory: {st.run_dir}"]
    d = st.driver
    if st.alive and d:
        lines.append(
            f"running: driver pid {d['pid']} on {d['host']}, last heard "
            f"{_duration(now - d['beat_at'])} ago"
        )
    else:
        interrupted = any(s.state in ("interrupted", "running") for s in st.stages)
        unfinished = any(s.state != "done" for s in st.stages)
        if d and d.get("state") == "running":
            lines.append(
                f"not running: the driver (pid {d['pid']} on {d['host']}) was last heard "
                f"{_duration(now - d['beat_at'])} ago, so it was killed or lost"
            )
        elif d:
            lines.append(f"not running: the driver {d.get('state', 'ended')}")
        else:
            lines.append("not running")
        if interrupted or unfinished:
            lines.append(f"resume: selma-ray run --run-dir {st.run_dir} (same config)")
    rows = [("stage", "state", "progress", "elapsed", "")]
    for s in st.stages:
        progress, extra = "", ""
        if s.total:
            done = min(s.done or 0, s.total)
            progress = f"{done}/{s.total} {s.unit} ({100 * done // s.total} %)"
            if s.eta_s is not None:
                extra = f"ETA {_duration(s.eta_s)}"
        elif s.counts and s.state in ("done", "incomplete"):
            progress = _counts(s.counts)
        if s.error:
            extra = f"error: {s.error[:100]}"
        rows.append((s.name, s.state, progress, _duration(s.seconds), extra))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        cells = [r[i].ljust(widths[i]) for i in range(4)] + [r[4]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def status_json(st: RunStatus) -> str:
    """The status as JSON (``selma-ray status --json``), ETA and liveness included."""
    data = dataclasses.asdict(st)
    data["running_stage"] = st.running_stage
    for stage, s in zip(data["stages"], st.stages, strict=True):
        stage["eta_s"] = s.eta_s
    return json.dumps(data, indent=2, default=str)


class LiveProgress:
    """A console progress bar of one running stage, redrawn every ``interval`` seconds from
    :func:`stage_progress` (its outputs so far, wherever on the cluster they were written) by a
    thread. Only on a terminal: a log or a pipe gets the stage's start and end lines alone."""

    def __init__(
        self, rd: RunDir, cfg: Any, stage: str, stream: Any, *, interval: float = 2.0
    ) -> None:
        self.rd, self.cfg, self.stage, self.stream = rd, cfg, stage, stream
        self.interval = interval
        self.bar: Any = None
        self._seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LiveProgress:
        isatty = getattr(self.stream, "isatty", None)
        if callable(isatty) and isatty():
            self._thread = threading.Thread(target=self._loop, name="selma-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self.update()
        if self.bar is not None:
            self.bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.update()

    def update(self) -> None:
        """Redraw the bar from the stage's outputs (best effort: a failed read skips a beat)."""
        try:
            done, total, unit = stage_progress(self.rd, self.cfg, self.stage, self._seen)
        except Exception:  # noqa: BLE001 - the bar must never break the run
            return
        if not total or done is None:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc=self.stage, unit=f" {unit}", file=self.stream, leave=False,
                dynamic_ncols=True,
            )  # fmt: skip
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()
