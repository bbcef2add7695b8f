"""The orchestrator: SELMA's stages in order, each skipped when its finished work is reusable.

A stage is a name, the config sections its outputs depend on (its own and upstream ones), the
run-directory folders it owns (:data:`selma_ray.layout.STAGE_OUTPUTS`), whether it needs an
executor, and a function ``run(ctx) -> counts``. Each stage core is handed the executor that
maps its rows (``ray.executor``: Ray Data / Ray Train inside a Ray session, or in-process).
The manifest decides what to do:

- done, same config fingerprint: skipped (no work);
- never run, running (killed) or incomplete, same fingerprint: run, resuming its own saved state;
- any status, different fingerprint: refused, naming the changed fields, unless the stage is
  passed in ``redo`` (its outputs and everything downstream are then discarded and rebuilt).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext, suppress
from dataclasses import dataclass, field
from typing import Any

from selma_ray import layout
from selma_ray.config import ConfigError, SelmaConfig, fingerprint_hash
from selma_ray.execution import Executor, InProcessExecutor
from selma_ray.preflight import preflight, preflight_resources
from selma_ray.rehearsal import describe as describe_rehearsal
from selma_ray.runlog import FILE_ONLY, console_stream, driver_log, is_quiet, quiet_libraries
from selma_ray.status import (
    STALE_AFTER_S,
    Heartbeat,
    LiveProgress,
    driver_alive,
    read_driver,
    stage_progress,
)
from selma_ray.storage import Manifest, RunDir, check_storage

log = logging.getLogger(__name__)

#: Stages whose console shows a live bar of their outputs (prompts draws its own, per skill).
_LIVE_BARS = ("images", "experts", "eval")


class ConfigChangedError(ConfigError):
    """A stage already ran in this run directory with different settings."""


@dataclass
class StageContext:
    cfg: SelmaConfig
    run_dir: RunDir
    executor: Executor = field(default_factory=InProcessExecutor)
    progress: bool = False
    notes: list[str] = field(default_factory=list)  # warnings to show at the end of the run


@dataclass(frozen=True)
class StageResult:
    counts: dict[str, Any]
    complete: bool = True  # False: stopped short (e.g. a prompt target not reached)


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[[StageContext], StageResult]
    needs_ray: Callable[[SelmaConfig], bool] = lambda cfg: True
    #: removes what the stage keeps outside the run directory (discarded with ``outputs``)
    discard_elsewhere: Callable[[SelmaConfig, RunDir], None] = lambda cfg, rd: None


def _run_prompts(ctx: StageContext) -> StageResult:
    from selma_ray.images.pairs import import_captions
    from selma_ray.prompts.engines import make_engine
    from selma_ray.prompts.stage import generate_prompts, shortfalls, write_skill_prompts

    # skills with data pairs get no prompts (the images stage imports their pairs); those with
    # data.use: captions get their captions as prompts; the others' prompts are generated
    captioned: dict[str, Any] = {}
    for skill in ctx.cfg.prompts.skills:
        if skill.prompts_from_captions and skill.data is not None:
            rows, captioned[skill.name] = import_captions(skill.name, skill.data)
            write_skill_prompts(ctx.run_dir, skill.name, rows)
    generated = [s for s in ctx.cfg.prompts.skills if s.data is None]
    if not generated:
        if captioned:
            ctx.run_dir.write_json(captioned, *layout.prompts_stats())
        return StageResult(counts={n: info["prompts"] for n, info in captioned.items()})
    pcfg = ctx.cfg.prompts.model_copy(update={"skills": generated})
    engine = make_engine(
        pcfg,
        seed=ctx.cfg.seed,
        cache_dir=ctx.cfg.storage.cache_dir,
        executor=ctx.executor,
    )
    try:
        stats = generate_prompts(
            pcfg, ctx.run_dir, engine, seed=ctx.cfg.seed, progress=ctx.progress
        )
    finally:
        engine.close()
    short = shortfalls(stats)
    ctx.notes.extend(f"prompts {line}" for line in short)
    if captioned:
        ctx.run_dir.write_json({**stats, **captioned}, *layout.prompts_stats())
    counts = {name: s["accepted"] for name, s in stats.items()}
    counts.update({n: info["prompts"] for n, info in captioned.items()})
    return StageResult(counts=counts, complete=not short)


def _run_images(ctx: StageContext) -> StageResult:
    from selma_ray.images.stage import run_images_stage

    counts = run_images_stage(ctx.cfg, ctx.run_dir, ctx.executor)
    return StageResult(counts=counts)


def _run_experts(ctx: StageContext) -> StageResult:
    from selma_ray.training.stage import run_experts_stage

    experts = run_experts_stage(ctx.cfg, ctx.run_dir, ctx.executor)
    counts = {
        skill: {"steps": m["steps"], "selected_step": m["selected_step"]}
        for skill, m in experts.items()
    }
    return StageResult(counts=counts)


def _discard_expert_checkpoints(cfg: SelmaConfig, rd: RunDir) -> None:
    from selma_ray.training.stage import discard_checkpoints

    discard_checkpoints(cfg, rd)  # with train.storage_path, outside the run directory


def _run_merge(ctx: StageContext) -> StageResult:
    from selma_ray.merging import run_merge_stage

    return StageResult(counts=run_merge_stage(ctx.cfg, ctx.run_dir))


def _run_eval(ctx: StageContext) -> StageResult:
    from selma_ray.evaluation.stage import run_eval_stage

    return StageResult(counts=run_eval_stage(ctx.cfg, ctx.run_dir, ctx.executor))


STAGES: list[Stage] = [
    Stage(
        name="prompts",
        sections=("prompts",),
        outputs=layout.STAGE_OUTPUTS["prompts"],
        run=_run_prompts,
        needs_ray=lambda cfg: (
            cfg.prompts.engine == "vllm" and any(s.data is None for s in cfg.prompts.skills)
        ),
    ),
    Stage(
        name="images",
        sections=("images",),
        outputs=layout.STAGE_OUTPUTS["images"],
        run=_run_images,
    ),
    Stage(
        name="experts",
        sections=("train",),
        outputs=layout.STAGE_OUTPUTS["experts"],
        run=_run_experts,
        discard_elsewhere=_discard_expert_checkpoints,
    ),
    Stage(
        name="merge",
        sections=("merge",),
        outputs=layout.STAGE_OUTPUTS["merge"],
        run=_run_merge,
        needs_ray=lambda cfg: False,
    ),
    Stage(name="eval", sections=("eval",), outputs=layout.STAGE_OUTPUTS["eval"], run=_run_eval),
]


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


def select_stages(names: list[str] | None) -> list[Stage]:
    if not names:
        return list(STAGES)
    known = stage_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        msg = f"--stages: unknown stage(s) {unknown}; stages are {known} (run in that order)"
        raise ConfigError(msg)
    return [s for s in STAGES if s.name in names]


def default_run_dir(*, latest_link: bool = False) -> str:
    """``selma-runs/<timestamp>``; with ``latest_link``, ``selma-runs/latest`` points at it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = f"selma-runs/{stamp}"
    if latest_link:
        os.makedirs(path, exist_ok=True)
        link = "selma-runs/latest"
        tmp = f"{link}.{os.getpid()}"
        os.symlink(stamp, tmp)
        os.replace(tmp, link)  # atomic: serve_config.yaml's default run_dir follows it
    return path


@dataclass
class RunSummary:
    run_dir: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    log: str | None = None  # the driver log of this session, in the run directory
    failed: str | None = None  # the stage that raised


def run_pipeline(
    cfg: SelmaConfig,
    run_dir: str | None = None,
    *,
    stages: list[str] | None = None,
    redo: list[str] | tuple[str, ...] = (),
    progress: bool = False,
    executor: Executor | None = None,
) -> RunSummary:
    """Run the selected stages (default: all) in order in ``run_dir``; see the module docstring.

    ``executor``: what runs the stages' rows (default: from ``ray.executor``; a Ray session is
    then started or joined before the first stage when a stage to run needs it).

    Before any stage starts, :mod:`selma_ray.preflight` checks what the selected stages need
    (models, resolutions, counts, a writable run directory; then, on Ray, the cluster's CPUs
    and GPUs) and raises one :class:`ConfigError` listing every problem.
    """
    uri = run_dir or cfg.storage.run_dir or default_run_dir(latest_link=True)
    check_storage(uri, cfg.train.storage_path)  # missing bucket / bad credentials: fail now
    selected = select_stages(stages)
    if "all" in redo:
        redo = [s.name for s in selected]
    select_stages(list(redo))  # validates names
    quiet_libraries()  # the checks may load or build models: their output is not the console's
    preflight(cfg, uri, [s.name for s in selected])  # bad input: refused before any work
    rd = RunDir(uri)
    _refuse_a_live_driver(rd)
    manifest = Manifest(rd)
    summary = RunSummary(run_dir=uri)
    plan, stale = _plan(cfg, manifest, selected, set(redo))
    ctx = StageContext(cfg=cfg, run_dir=rd, progress=progress)
    with ExitStack() as stack:
        to_run = [stage for stage, _, action in plan if action != "skip"]
        if executor is None and any(stage.needs_ray(cfg) for stage in to_run):
            executor = _start_executor(cfg, stack, progress=progress)
        # the cluster's resources and hosts: refused here, before the run directory is written
        _check_cluster(cfg, executor, [stage.name for stage in to_run], uri)
        rd.makedirs()
        if cfg.rehearsal:
            manifest.data["rehearsal"] = cfg.rehearsal
            manifest.save()
        rd.write_text(cfg.to_yaml(), *layout.config())
        summary.log = stack.enter_context(driver_log(rd))
        log.info("run directory: %s (full log: %s)", rd.uri, summary.log)
        heartbeat = Heartbeat(rd).start()
        stack.callback(lambda: heartbeat.stop("failed" if summary.failed else "finished"))
        _log_worker_logs()
        for stage in stale:
            _discard(cfg, rd, manifest, stage)
            ctx.notes.append(
                f"{stage.name}: discarded (built from what --redo replaced); the next run "
                "that selects it runs it again"
            )
        for stage, fingerprint, action in plan:
            if action == "skip":
                log.info("stage %s: done with the same config, skipped", stage.name)
                summary.skipped.append(stage.name)
                continue
            if action == "redo":
                _discard(cfg, rd, manifest, stage)
            ctx.executor = executor or InProcessExecutor()
            log.info("stage %s: running", stage.name)
            done_before, _, _ = stage_progress(rd, cfg, stage.name)  # a resume's earlier work
            manifest.start(stage.name, fingerprint, fingerprint_hash(fingerprint), done_before)
            t0 = time.perf_counter()
            bar = LiveProgress(rd, cfg, stage.name, console_stream() if progress else None)
            try:
                with bar if stage.name in _LIVE_BARS else nullcontext():
                    result = stage.run(ctx)
            except BaseException as e:
                summary.failed = stage.name
                manifest.fail(stage.name, f"{type(e).__name__}: {e}", time.perf_counter() - t0)
                log.error(  # the full traceback: the driver log only, not the console
                    "stage %s failed", stage.name, exc_info=True, extra=FILE_ONLY
                )
                # for the CLI's one-line message: which stage, where the traceback is
                with suppress(AttributeError):  # an exception type with __slots__
                    e.selma_stage, e.selma_log = stage.name, summary.log  # type: ignore
                raise
            seconds = time.perf_counter() - t0
            manifest.finish(stage.name, result.counts, seconds, complete=result.complete)
            log.info(
                "stage %s: %s in %.1f s%s", stage.name,
                "done" if result.complete else "incomplete", seconds, _counts_text(result.counts),
            )  # fmt: skip
            summary.ran.append(stage.name)
            summary.seconds[stage.name] = round(seconds, 3)
            if not result.complete:
                summary.incomplete.append(stage.name)
    summary.notes = [*describe_rehearsal(cfg.rehearsal), *ctx.notes]
    return summary


def _counts_text(counts: dict[str, Any]) -> str:
    """``(coco 24, whoops 24)`` from a stage's plain counts; nested ones are left out."""
    plain = [f"{k} {v}" for k, v in counts.items() if isinstance(v, (int, float, str))]
    return f" ({', '.join(plain)})" if plain else ""


def _log_worker_logs() -> None:
    """Where Ray keeps its workers' logs (on each node), for the driver log."""
    if "ray" not in sys.modules:  # no Ray in this run
        return
    from selma_ray.distributed.runtime import worker_logs_dir

    where = worker_logs_dir()
    if where:
        log.info("Ray workers' logs: %s on each node", where, extra=FILE_ONLY)


def _start_executor(cfg: SelmaConfig, stack: ExitStack, *, progress: bool) -> Executor:
    """The executor ``ray.executor`` names; for Ray, a session held until the run ends."""
    if cfg.ray.executor == "in-process":
        return InProcessExecutor()
    from selma_ray.distributed import RayExecutor, ray_session

    stack.enter_context(ray_session(cfg.ray))
    return RayExecutor(
        progress=progress and not is_quiet(),  # quiet: the run's own bars, not Ray Data's
        cpu_fallback=cfg.ray.cpu_fallback or cfg.rehearse,
        quiet=not cfg.ray.log_to_driver,
    )


def _check_cluster(
    cfg: SelmaConfig, executor: Executor | None, stages: list[str], run_dir: str
) -> None:
    """Preflight of the CPUs and GPUs the stages ask for, and of a local run directory's reach,
    against this Ray session's cluster."""
    from selma_ray.distributed import RayExecutor

    if not isinstance(executor, RayExecutor):
        return
    from selma_ray.distributed.resources import cluster_offer

    offer = cluster_offer()
    if offer is not None:
        preflight_resources(cfg, stages, offer, run_dir)


def stage_fingerprint(cfg: SelmaConfig, stage: str) -> dict[str, Any]:
    """What a stage's outputs depend on: its config sections and every upstream stage's
    (runtime fields left out), and the seed. Finished work is reused only under an equal one."""
    names = [s.name for s in STAGES]
    upto = STAGES[: names.index(stage) + 1]
    return cfg.fingerprint(tuple(dict.fromkeys(s for st in upto for s in st.sections)))


def _plan(
    cfg: SelmaConfig, manifest: Manifest, selected: list[Stage], redo: set[str]
) -> tuple[list[tuple[Stage, dict[str, Any], str]], list[Stage]]:
    """(stage, fingerprint, 'run' | 'skip' | 'redo') per selected stage, and the stages after a
    redone one that have run but are not selected (``--stages prompts --redo prompts``): their
    outputs were built from what the redo replaces, so they are discarded too, or a later run
    would skip them as done. Refuses changed configs."""
    plan = []
    stale: list[Stage] = []
    downstream_of_redo = False
    for stage in STAGES:
        fingerprint = stage_fingerprint(cfg, stage.name)
        status = manifest.status(stage.name)
        changed = manifest.changes(stage.name, fingerprint)
        if stage.name in redo or (downstream_of_redo and status is not None):
            downstream_of_redo = True
            action = "redo"
        elif changed:
            lines = "\n  ".join(changed)
            msg = (
                f"stage {stage.name} in {manifest.run_dir.uri} ran with a different config:\n  "
                f"{lines}\nRun with --redo {stage.name} to discard its outputs (and everything "
                "after it) and run it again, or use a new --run-dir."
            )
            raise ConfigChangedError(msg)
        elif status == "done":
            action = "skip"
        else:
            action = "run"
        if stage in selected:
            plan.append((stage, fingerprint, action))
        elif action == "redo" and stage.name not in redo:
            stale.append(stage)
    return plan, stale


def _refuse_a_live_driver(rd: RunDir) -> None:
    """Two drivers on one run directory would overwrite each other's manifest and outputs: a
    run whose driver is alive (:func:`~selma_ray.status.driver_alive`) is refused."""
    driver, now = read_driver(rd), time.time()
    if driver is None or not driver_alive(driver, now):
        return
    if driver.get("host") == socket.gethostname() and driver.get("pid") == os.getpid():
        return  # this process's own run (an earlier call in it)
    ago = now - float(driver.get("beat_at", now))
    msg = (
        f"run directory {rd.uri} is in use: its driver (pid {driver.get('pid')} on "
        f"{driver.get('host')}, last heard {ago:.0f} s ago) is running it; wait for it or stop "
        f"it, or use another --run-dir (a driver killed on another host counts as gone "
        f"{STALE_AFTER_S:.0f} s after its last beat)"
    )
    raise ConfigError(msg)


def _discard(cfg: SelmaConfig, rd: RunDir, manifest: Manifest, stage: Stage) -> None:
    for folder in stage.outputs:
        rd.remove(folder)
    stage.discard_elsewhere(cfg, rd)
    manifest.reset(stage.name)
