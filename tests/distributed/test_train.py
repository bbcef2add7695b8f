"""Ray Train V2 launcher: concurrent experts, resume with the step count continuing."""

from __future__ import annotations

import pytest

from selma_ray.config import load_config
from selma_ray.storage import RunDir
from selma_ray.training.data import write_synthetic_skill


def _cfg(*extra):
    return load_config(
        overrides=[
            "prompts.skills=[coco, whoops]",
            "train.max_steps=4",
            "train.checkpoint_every=2",
            "train.batch_size=2",
            "train.resolution=32",
            "train.num_workers=1",
            "train.cpus_per_worker=1",
            *extra,
        ]
    )


@pytest.fixture
def run_dir(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    for i, skill in enumerate(["coco", "whoops"]):
        write_synthetic_skill(rd, skill, prompts=4, size=32, seed=i)
    return rd


def _train_interval(rd: RunDir, skill: str) -> tuple[float, float]:
    timings = rd.read_json("experts", skill, "expert.json")["timings"]
    return timings["train_started_at"], timings["train_finished_at"]


@pytest.mark.slow
def test_experts_train_concurrently(ray_cluster, tiny_models, tmp_path, no_background_build):
    """Two experts, one CPU each on a 2-CPU Ray: their training intervals (each worker's own
    wall-clock timestamps) overlap, and the makespan is well below the sum of solo times."""
    from selma_ray.distributed import RayExecutor
    from selma_ray.training.stage import expert_jobs

    cfg = _cfg("train.max_steps=80", "train.checkpoint_every=80")
    skills = ["coco", "whoops"]

    def fresh(name: str) -> RunDir:
        rd = RunDir(str(tmp_path / name))
        for i, skill in enumerate(skills):
            write_synthetic_skill(rd, skill, prompts=4, size=32, seed=i)
        return rd

    solo = {}
    for skill in skills:
        rd = fresh(f"solo-{skill}")
        RayExecutor().train_experts(expert_jobs(cfg, rd, [skill]))
        start, end = _train_interval(rd, skill)
        solo[skill] = end - start
    rd = fresh("together")
    RayExecutor().train_experts(expert_jobs(cfg, rd, skills))
    (s1, e1), (s2, e2) = (_train_interval(rd, s) for s in skills)
    overlap = min(e1, e2) - max(s1, s2)
    makespan = max(e1, e2) - min(s1, s2)
    assert overlap > 0.5 * min(e1 - s1, e2 - s2), (overlap, (s1, e1), (s2, e2))
    # run one after the other they would take sum(solo); concurrently clearly less. On this
    # 2-core machine, with Ray's own processes sharing the cores, a fresh-clone CI run took
    # 76 % of it (3.5 s against 2.28 + 2.32 s solo) and failed a 75 % bound: the bound is 85 %
    assert makespan <= 0.85 * sum(solo.values()), (makespan, solo)


@pytest.mark.slow
def test_rerun_with_more_steps_resumes_each_expert_from_its_checkpoint(
    ray_cluster, tiny_models, run_dir
):
    """A clean stop at step 2, then the same Ray Train runs (storage path + name) continue."""
    from selma_ray.distributed import RayExecutor
    from selma_ray.distributed.train import train_experts
    from selma_ray.training.stage import expert_jobs, run_experts_stage

    cfg = _cfg("train.max_steps=2")
    first = train_experts(expert_jobs(cfg, run_dir, ["coco", "whoops"]))
    assert {s: r.metrics["step"] for s, r in first.items()} == {"coco": 2, "whoops": 2}
    assert all(r.checkpoint is not None for r in first.values())

    cfg4 = _cfg()
    second = train_experts(expert_jobs(cfg4, run_dir, ["coco", "whoops"]))
    for skill, result in second.items():
        assert result.metrics["step"] == 4
        meta = run_dir.read_json("experts", skill, "expert.json")
        assert meta["steps"] == 4 and meta["resumed_from"] == 2
        # the loss curve runs on from the checkpoint: steps 1-2 restored, 3-4 trained now
        assert [int(step) for step, _ in meta["train_loss"]] == [1, 2, 3, 4]
        assert [int(step) for step, _ in meta["val_loss"]] == [2, 4]
        assert run_dir.exists("experts", skill, "pytorch_lora_weights.safetensors")

    # the stage skips finished experts: nothing is retrained
    before = {
        s: run_dir.fs.modified(run_dir.path("experts", s, "pytorch_lora_weights.safetensors"))
        for s in ("coco", "whoops")
    }
    out = run_experts_stage(cfg4, run_dir, RayExecutor())
    assert set(out) == {"coco", "whoops"}
    after = {
        s: run_dir.fs.modified(run_dir.path("experts", s, "pytorch_lora_weights.safetensors"))
        for s in ("coco", "whoops")
    }
    assert before == after


def _alive_train_workers() -> dict[str, int]:
    """actor id -> pid of the live Ray Train workers (from the GCS)."""
    import ray

    return {
        actor_id: int(info["Pid"])
        for actor_id, info in ray._private.state.actors().items()
        if "RayTrainWorker" in (info.get("ActorClassName") or "")
        and info.get("State") == "ALIVE"
        and info.get("Pid")
    }


@pytest.mark.slow
def test_training_worker_killed_mid_run_resumes_and_matches_undisturbed(
    ray_cluster, tiny_models, tmp_path
):
    """SIGKILL the expert's Ray Train worker after its first checkpoints, while it trains on:
    Ray Train (FailureConfig) restarts it from that checkpoint, and the exported LoRA equals an
    undisturbed run's tensor for tensor."""
    import os
    import signal
    import threading
    import time

    import torch
    from safetensors.torch import load_file

    from selma_ray.distributed import RayExecutor
    from selma_ray.training.stage import expert_jobs

    cfg = _cfg(
        "prompts.skills=[coco]",
        "train.max_steps=16",
        "train.checkpoint_every=4",
        "train.max_failures=2",
        "train.cache_inputs=false",
    )

    def fresh(name: str) -> RunDir:
        rd = RunDir(str(tmp_path / name))
        write_synthetic_skill(rd, "coco", prompts=4, size=32, seed=0)
        return rd

    calm = fresh("undisturbed")
    RayExecutor().train_experts(expert_jobs(cfg, calm, ["coco"]))

    rd = fresh("killed")
    ckpt_root = tmp_path / "killed" / "train" / "expert-coco"
    killed: dict = {}
    before = set(_alive_train_workers())

    def kill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ckpts = list(ckpt_root.glob("checkpoint_*")) if ckpt_root.exists() else []
            workers = {a: p for a, p in _alive_train_workers().items() if a not in before}
            # a second checkpoint folder means the first was reported and registered
            if len(ckpts) >= 2 and workers:
                actor, pid = next(iter(workers.items()))
                os.kill(pid, signal.SIGKILL)
                killed.update(actor=actor, pid=pid, checkpoints=len(ckpts))
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    RayExecutor().train_experts(expert_jobs(cfg, rd, ["coco"]))
    watcher.join(timeout=5)
    assert killed, "the worker finished before it could be killed"
    meta = rd.read_json("experts", "coco", "expert.json")
    assert meta["steps"] == 16
    assert meta["resumed_from"] is not None and 4 <= meta["resumed_from"] < 16, meta
    ours = load_file(rd.path("experts", "coco", "pytorch_lora_weights.safetensors"))
    ref = load_file(calm.path("experts", "coco", "pytorch_lora_weights.safetensors"))
    assert set(ours) == set(ref)
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
    assert meta["train_loss"] == calm.read_json("experts", "coco", "expert.json")["train_loss"]


@pytest.mark.slow
def test_ray_refuses_a_memory_run_dir_for_training():
    from selma_ray.distributed import RayExecutor
    from selma_ray.training.stage import expert_jobs

    jobs = expert_jobs(_cfg(), RunDir("memory://x/run"), ["coco"])
    with pytest.raises(ValueError, match="memory://x/run.*cannot see"):
        RayExecutor().train_experts(jobs)


@pytest.mark.slow
def test_stage_encodes_the_caches_on_ray_data_before_training(ray_cluster, tiny_models, run_dir):
    from selma_ray.distributed import RayExecutor
    from selma_ray.training.stage import run_experts_stage

    # a third skill whose images were never drawn: reported by the encoding pass, then its
    # expert fails naming it, while the other two experts finish
    cfg = _cfg(
        "train.max_steps=1",
        "train.cache_pool.max_size=2",
        "prompts.skills=[coco, whoops, countbench]",
    )
    with pytest.raises(RuntimeError, match="countbench"):
        run_experts_stage(cfg, run_dir, RayExecutor())
    summary = run_dir.read_json("cache", "encode.json")
    assert set(summary) == {"coco", "whoops", "countbench"}
    for skill in ("coco", "whoops"):
        assert summary[skill]["built"] is True and summary[skill]["error"] == ""
        assert summary[skill]["pairs"] == 4
        assert run_dir.exists("cache", skill, "inputs.safetensors")
        meta = run_dir.read_json("experts", skill, "expert.json")
        assert meta["cache"]["built"] is False  # the trainer read the Ray Data-built cache
    assert "'countbench'" in summary["countbench"]["error"]
    assert not run_dir.exists("experts", "countbench")


POLL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


@pytest.mark.parametrize(("configured", "environment", "seen"), [
    ({POLL: "0.5"}, None, "0.5"),  # the config's value...
    ({POLL: "0.5"}, "3.0", "0.5"),  # ... over the driver's
    ({}, "3.0", "3.0"),  # none configured: the environment's (or Ray's default)
    ({}, None, None),
])  # fmt: skip
def test_ray_train_env_is_the_environment_each_trainer_starts_from_then_restored(
    run_dir, monkeypatch, configured, environment, seen
):
    """Ray Train hands the driver's RAY_TRAIN_* variables to each controller when ``fit``
    creates it; ``train.ray_train_env`` sets them for exactly that long."""
    import os

    from selma_ray.distributed import train
    from selma_ray.training.stage import expert_jobs

    if environment is None:
        monkeypatch.delenv(POLL, raising=False)
    else:
        monkeypatch.setenv(POLL, environment)
    at_fit: dict[str, str | None] = {}

    class Trainer:
        def __init__(self, job):
            self.job = job

        def fit(self):
            at_fit[self.job.skill] = os.environ.get(POLL)
            return "result"

    monkeypatch.setattr(train, "make_trainer", lambda job, **_: Trainer(job))
    cfg = _cfg()
    cfg = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"ray_train_env": configured})}
    )
    results = train.train_experts(expert_jobs(cfg, run_dir, ["coco", "whoops"]))
    assert results == {"coco": "result", "whoops": "result"}
    assert at_fit == {"coco": seen, "whoops": seen}
    assert os.environ.get(POLL) == environment


def test_ctrl_c_while_experts_train_stops_waiting_at_once(run_dir, monkeypatch):
    """Ctrl-C in the driver reaches the main thread while it waits for the trainers (each fit
    runs in a thread): it used to be taken for one skill's failure while the driver waited for
    every trainer to finish. Now it propagates at once, and a trainer's own error is still
    collected per skill."""
    import _thread
    import signal
    import threading
    import time

    from selma_ray.distributed import train
    from selma_ray.training.stage import expert_jobs

    # Python's own SIGINT handler, as in the CLI: in the whole suite an earlier test leaves
    # another one that does not raise (Ray Train's fit on a main thread installs such a one;
    # which test left it there was not pinned down)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = threading.Event()

    class Trainer:
        def __init__(self, job):
            self.job = job

        def fit(self):
            done.wait(5)  # a long fit; the test sets the event when it ends
            return "result"

    monkeypatch.setattr(train, "make_trainer", lambda job, **_: Trainer(job))
    jobs = expert_jobs(_cfg(), run_dir, ["coco", "whoops"])
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            train.train_experts(jobs)
        assert time.monotonic() - started < 2
    finally:
        done.set()
        timer.cancel()
        signal.signal(signal.SIGINT, previous)

    class Failing(Trainer):
        def fit(self):
            if self.job.skill == "coco":
                raise RuntimeError("worker group failed")
            return "result"

    monkeypatch.setattr(train, "make_trainer", lambda job, **_: Failing(job))
    with pytest.raises(RuntimeError, match="coco"):
        train.train_experts(jobs)


def test_ray_train_env_takes_only_ray_trains_variables_as_strings():
    from selma_ray.config import ConfigError

    cfg = _cfg(
        "train.ray_train_env.RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=1",
        "train.ray_train_env.RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=true",
    )  # YAML's 1 and true, as Ray reads them back from the environment
    assert cfg.train.ray_train_env == {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1",
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1",
    }

    with pytest.raises(ConfigError, match=r"train\.ray_train_env.*'CUDA_VISIBLE_DEVICES'"):
        _cfg("train.ray_train_env={CUDA_VISIBLE_DEVICES: '0'}")
