"""Ray Train V2 launcher for stage 3: one ``TorchTrainer`` per skill expert, all at once.

Each expert is its own Ray Train run (``RunConfig(name=f"expert-{skill}")``) under the run
directory's ``train/`` folder (or ``train.storage_path`` when the run directory is not a
filesystem Ray can write to), with DDP over ``train.num_workers`` workers. All skills are
launched together from driver threads (which hold no Ray resources); runs that do not fit the
cluster wait for room. Running the stage again with the same run directory resumes every
unfinished expert from its latest checkpoint: Ray Train restores a run by storage path + name.

Before the trainers start, :func:`encode_input_caches` maps
:class:`~selma_ray.training.cache.CacheEncoder` over the skills on a Ray Data actor pool (on the
GPUs when training uses them): each skill's VAE latents and text-encoder states are written
once to ``<run_dir>/cache/<skill>/``, and every training worker of that expert reads them.

The training itself is :func:`selma_ray.training.loop.train_expert`; this module only maps it
onto Ray Train (checkpoints in, metrics and checkpoints out).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from selma_ray.config import SelmaConfig, TrainConfig

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


def encode_input_caches(
    cfg: SelmaConfig, skills: list[str], run_dir_uri: str
) -> dict[str, dict[str, Any]]:
    """Build the input caches of ``skills`` on a Ray Data actor pool; one result row per skill.

    ``train.cache_actors`` actors (at most one per skill), each with
    ``train.cache_gpus_per_actor`` GPUs (default: 1 when ``train.use_gpu``) and
    ``train.cpus_per_worker`` CPUs, load the frozen encoders once and take one skill per task.
    A skill already cached for the same inputs and settings is only checked. An actor that
    dies is restarted and its skill retried (up to ``train.max_failures`` times).
    """
    from selma_ray.distributed.data import map_rows_with_actors
    from selma_ray.training.cache import CacheEncoder

    if not skills:
        return {}
    t = cfg.train
    gpus = t.cache_gpus_per_actor
    if gpus is None:
        gpus = 1.0 if t.use_gpu else 0.0
    actors = min(len(skills), t.cache_actors)
    rows = map_rows_with_actors(
        [{"skill": s} for s in skills],
        CacheEncoder,
        fn_constructor_kwargs={
            "train": t.model_dump(mode="json"),
            "base_model": t.base_model or cfg.images.model,
            "run_dir_uri": run_dir_uri,
            "model_cache_dir": cfg.storage.cache_dir,
            "seed": cfg.seed,
        },
        min_actors=1,
        max_actors=actors,
        initial_actors=actors,
        batch_size=1,
        rows_per_block=1,
        max_tasks_in_flight_per_actor=1,
        num_gpus=gpus,
        num_cpus=t.cpus_per_worker,
        max_restarts=-1,
        max_task_retries=t.max_failures,
    )
    out = {}
    for row in rows:
        clean = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        out[str(clean["skill"])] = clean
    return out


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point on every worker: resume from the latest checkpoint, then train."""
    import ray.train
    import ray.train.torch

    from selma_ray.training.loop import ExpertCheckpoint, train_expert

    ctx = ray.train.get_context()
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            resume = ExpertCheckpoint.from_dir(path)
    world_size = ctx.get_world_size()
    train_expert(
        TrainConfig.model_validate(config["train"]),
        skill=config["skill"],
        run_dir_uri=config["run_dir_uri"],
        base_model=config["base_model"],
        model_cache_dir=config["model_cache_dir"],
        seed=config["seed"],
        reporter=RayReporter(ctx.get_world_rank()),
        resume=resume,
        wrap_model=ray.train.torch.prepare_model if world_size > 1 else None,
        world_size=world_size,
        rank=ctx.get_world_rank(),
    )


def make_trainer(cfg: SelmaConfig, skill: str, run_dir_uri: str, storage_path: str) -> Any:
    """The ``TorchTrainer`` for one skill's expert."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = cfg.train
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": t.model_dump(mode="json"),
            "skill": skill,
            "run_dir_uri": run_dir_uri,
            "base_model": t.base_model or cfg.images.model,
            "model_cache_dir": cfg.storage.cache_dir,
            "seed": cfg.seed,
        },
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=f"expert-{skill}",
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=t.num_to_keep),
            failure_config=FailureConfig(max_failures=t.max_failures),
        ),
    )


def train_experts(
    cfg: SelmaConfig, skills: list[str], run_dir_uri: str, storage_path: str
) -> dict[str, Any]:
    """Fit one trainer per skill concurrently; returns each skill's Ray Train result.

    A failed expert does not stop the others: every run is waited for, then the failures are
    raised together naming the skills (finished experts stay finished for the rerun).
    """
    if not skills:
        return {}

    def fit(skill: str) -> Any:
        log.info("expert %s: training", skill)
        return make_trainer(cfg, skill, run_dir_uri, storage_path).fit()

    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    with ThreadPoolExecutor(max_workers=len(skills), thread_name_prefix="expert") as pool:
        futures = {skill: pool.submit(fit, skill) for skill in skills}
        for skill, future in futures.items():
            try:
                results[skill] = future.result()
            except BaseException as e:  # noqa: BLE001 - collected and re-raised below
                errors[skill] = e
    if errors:
        detail = "; ".join(f"{s}: {type(e).__name__}: {e}" for s, e in errors.items())
        msg = f"{len(errors)} of {len(skills)} experts failed ({detail}); rerun to resume them"
        raise RuntimeError(msg) from next(iter(errors.values()))
    return results
