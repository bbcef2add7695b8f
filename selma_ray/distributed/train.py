"""Ray Train V2 launcher for stage 3: one ``TorchTrainer`` per skill expert, all at once.

Each :class:`~selma_ray.execution.ExpertJob` is its own Ray Train run (named by
``layout.train_run_name(skill)``) under the job's storage path (on an object store: through the
run directory's own fsspec filesystem, :func:`selma_ray.storage.arrow_filesystem`), with DDP over
``train.num_workers`` workers. All skills are launched together from driver threads (which hold
no Ray resources); runs that do not fit the cluster wait for room. Running the stage again with
the same storage path resumes every unfinished expert from its latest checkpoint: Ray Train
restores a run by storage path + name.

The training itself is :func:`selma_ray.training.loop.train_expert`; this module only maps it
onto Ray Train (checkpoints in, metrics and checkpoints out).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from selma_ray.config import TrainConfig
from selma_ray.distributed.devices import check_gpus_visible
from selma_ray.execution import ExpertJob, raise_expert_failures
from selma_ray.layout import train_run_name
from selma_ray.storage import arrow_filesystem

log = logging.getLogger(__name__)


class RayReporter:
    """The training loop's reporter, forwarding to ``ray.train.report`` (rank 0 checkpoints)."""

    def __init__(self, world_rank: int) -> None:
        self.world_rank = world_rank

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = None
        if checkpoint_dir is not None and self.world_rank == 0:
            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir)
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point on every worker: resume from the latest checkpoint, then train.

    The latest checkpoint is the one Ray Train registered, else the newest complete one on
    storage (a worker killed just after writing a checkpoint dies before its controller has
    registered it; that work is not lost).
    """
    import ray.train
    import ray.train.torch

    from selma_ray.training.loop import ExpertCheckpoint, train_expert
    from selma_ray.training.resume import latest_checkpoint

    ctx = ray.train.get_context()
    if config["train"]["use_gpu"]:
        check_gpus_visible(
            f"expert {config['skill']!r} training worker", "train.use_gpu", 1,
            cpu_fallback=config["cpu_fallback"],
        )  # fmt: skip
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            resume = ExpertCheckpoint.from_dir(path)
    stored = latest_checkpoint(config["checkpoints_uri"])
    if stored is not None and (resume is None or stored.step > resume.step):
        resume = stored
    world_size = ctx.get_world_size()
    train_expert(
        TrainConfig.model_validate(config["train"]),
        skill=config["skill"],
        run_dir_uri=config["run_dir_uri"],
        base_model=config["base_model"],
        model_cache_dir=config["model_cache_dir"],
        seed=config["seed"],
        sources=tuple(config.get("sources") or ()),
        reporter=RayReporter(ctx.get_world_rank()),
        resume=resume,
        wrap_model=ray.train.torch.prepare_model if world_size > 1 else None,
        world_size=world_size,
        rank=ctx.get_world_rank(),
    )


@contextmanager
def _driver_env(env: dict[str, str]) -> Iterator[None]:
    """``env`` in this process's environment while the trainers are created (Ray Train hands
    the driver's RAY_TRAIN_* values to each controller and its workers), then as before."""
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def checkpoints_uri(job: ExpertJob) -> str:
    """Where Ray Train writes this expert's checkpoint folders (a URI fsspec reads)."""
    return f"{job.storage_path.rstrip('/')}/{train_run_name(job.skill)}"


def make_trainer(job: ExpertJob, *, cpu_fallback: bool = False) -> Any:
    """The ``TorchTrainer`` for one skill's expert."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = job.train
    # an object store goes through fsspec (s3fs reads AWS_ENDPOINT_URL; pyarrow's own S3 client
    # built from the URI would configure itself separately); a local path stays a path
    storage_filesystem, storage_path = arrow_filesystem(job.storage_path)
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": t.model_dump(mode="json"),
            "skill": job.skill,
            "run_dir_uri": job.run_dir_uri,
            "base_model": job.base_model,
            "model_cache_dir": job.model_cache_dir,
            "seed": job.seed,
            "sources": list(job.sources),
            "checkpoints_uri": checkpoints_uri(job),
            "cpu_fallback": cpu_fallback,
        },
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=train_run_name(job.skill),
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=t.num_to_keep),
            failure_config=FailureConfig(max_failures=t.max_failures),
        ),
    )


def train_experts(jobs: list[ExpertJob], *, cpu_fallback: bool = False) -> dict[str, Any]:
    """Fit one trainer per job concurrently; returns each skill's Ray Train result.

    ``cpu_fallback``: workers that Ray gave a GPU torch cannot see train on the CPU (warned)
    instead of failing (:func:`~selma_ray.distributed.devices.check_gpus_visible`).

    A failed expert does not stop the others: every run is waited for, then the failures are
    raised together naming the skills (finished experts stay finished for the rerun).
    """
    if not jobs:
        return {}

    def fit(job: ExpertJob) -> Any:
        log.info("expert %s: training", job.skill)
        return make_trainer(job, cpu_fallback=cpu_fallback).fit()

    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    # the jobs are one stage's: they share its train config, so this is that config's mapping
    env = {k: v for job in jobs for k, v in job.train.ray_train_env.items()}
    with _driver_env(env):
        pool = ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="expert")
        try:
            futures = {job.skill: pool.submit(fit, job) for job in jobs}
            for skill, future in futures.items():
                while not wait([future], timeout=0.5).done:
                    pass  # a short wait: a pending Ctrl-C is raised between two of them
                try:
                    results[skill] = future.result()
                except Exception as e:  # noqa: BLE001 - collected and re-raised below
                    errors[skill] = e
        except BaseException:
            # Ctrl-C (or SIGTERM) in the driver: stop waiting for the trainers and let it
            # propagate; ending the Ray session (the caller's) ends their runs, whose last
            # checkpoints the next run resumes from
            log.warning("experts: interrupted; the trainers stop with this driver's Ray session")
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    raise_expert_failures(errors, len(jobs))
    return results
