"""What runs a stage core's work: the executor each stage is handed (no Ray here).

A stage core never decides where its rows run. It builds rows and a callable class in the Ray
Data style (load models once in ``__init__``, map a numpy batch in ``__call__``) and hands them
to an :class:`Executor`, together with the :class:`~selma_ray.config.ActorPool` its config
names. Stage 3 hands over one :class:`ExpertJob` per skill the same way.

- :class:`InProcessExecutor` (here): runs everything in this process, one class instance per
  map, batches in order, experts one after another. For tests, debugging and machines without
  Ray; a ``memory://`` run directory works with it.
- ``selma_ray.distributed.RayExecutor``: Ray Data actor pools and Ray Train, the same calls.

``map_rows`` starts its workers for the one call; :meth:`Executor.open_pool` keeps them for
several (:class:`RowPool`), for a stage whose later inputs depend on earlier outputs and whose
workers are slow to start (stage 1's vLLM engines, one map per self-instruct round).

The pipeline picks the executor (``ray.executor``); tests pass one in.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from selma_ray.config import ActorPool, TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertJob:
    """One skill's expert to train (stage 3), everything a worker needs to run it."""

    skill: str
    train: TrainConfig
    run_dir_uri: str
    base_model: str
    storage_path: str  # where checkpoints live (Ray Train storage / local checkpoint root)
    model_cache_dir: str | None = None
    seed: int = 0
    #: skills whose pairs the job trains on; empty = ``skill``'s own (the joint baseline
    #: names every skill)
    sources: tuple[str, ...] = ()


class Executor(Protocol):
    """Maps rows over a pool of workers and launches expert training."""

    def map_rows(
        self,
        rows: list[dict[str, Any]],
        fn_cls: type,
        *,
        fn_kwargs: dict[str, Any],
        pool: ActorPool,
        rows_per_task: int,
        whole_tasks: bool = False,
    ) -> list[dict[str, Any]]:
        """``fn_cls(**fn_kwargs)`` mapped over ``rows`` in batches of at most ``rows_per_task``.

        Returns every output row, values as Python scalars. Every task is exactly one batch
        of the given rows (in order) of :func:`task_plan`'s size, and the pool starts with as
        many workers as there are tasks (up to ``pool.max_size``), so a small input is spread
        over every worker. ``whole_tasks``: each worker also holds one task at a time. Output
        order is not guaranteed.
        """
        ...

    def open_pool(self, fn_cls: type, *, fn_kwargs: dict[str, Any], pool: ActorPool) -> RowPool:
        """Workers of ``fn_cls(**fn_kwargs)`` that live until the pool is closed, for many
        :meth:`RowPool.map` calls (use it as a context manager, or call ``close()``). Sizes,
        resources and fault tolerance are ``pool``'s, as for :meth:`map_rows`."""
        ...

    def train_experts(self, jobs: list[ExpertJob]) -> None:
        """Train every job's expert (resuming from its latest checkpoint); raise naming the
        skills that failed after every job has ended."""
        ...


class RowPool:
    """Long-lived workers of one callable class, opened by :meth:`Executor.open_pool`.

    :meth:`map` is :meth:`Executor.map_rows` (without ``whole_tasks``) on workers that are
    already running: a worker's ``fn_cls`` instance serves every later map. :meth:`close`
    releases the workers, first calling the instance's own ``close()`` when it has one; it is
    safe to call twice. Subclasses implement both.
    """

    def map(self, rows: list[dict[str, Any]], *, rows_per_task: int) -> list[dict[str, Any]]:
        """``rows`` in tasks of at most ``rows_per_task`` rows over the workers; every output
        row, values as Python scalars, in no guaranteed order."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> RowPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def close_instance(fn: Any) -> None:
    """Call ``fn.close()`` when the instance has one (a worker's model releasing what it
    holds, e.g. an engine's processes)."""
    close = getattr(fn, "close", None)
    if callable(close):
        close()


# --------------------------------------------------------------------------- batches


def rows_to_batch(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Row dicts -> a numpy batch as Ray Data passes it (``batch_format="numpy"``)."""
    if not rows:
        return {}
    out: dict[str, np.ndarray] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        out[key] = np.array(values, dtype=object if isinstance(values[0], str) else None)
    return out


def py_value(value: Any) -> Any:
    """numpy scalar -> Python scalar; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def batch_to_rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A numpy batch -> row dicts with Python values."""
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: py_value(batch[k][i]) for k in keys} for i in range(n)]


def task_plan(n_rows: int, rows_per_task: int, max_workers: int) -> tuple[int, int]:
    """(rows per task, number of tasks) for ``whole_tasks`` maps: at most ``rows_per_task``
    rows a task, at least one task per worker while rows last, tasks of even size (so no
    worker gets a straggler). A pure function of its arguments."""
    if n_rows <= 0:
        return rows_per_task, 0
    n_tasks = max(min(max_workers, n_rows), -(-n_rows // rows_per_task))
    per_task = -(-n_rows // n_tasks)
    return per_task, -(-n_rows // per_task)


# --------------------------------------------------------------------------- in-process


class InProcessExecutor:
    """Everything in this process: one ``fn_cls`` instance per map, experts in turn.

    Expert checkpoints go to ``<storage_path>/<run name>/checkpoint_<step>`` when the storage
    path is local (a rerun resumes from the newest), else to a temporary directory.
    """

    def map_rows(
        self,
        rows: list[dict[str, Any]],
        fn_cls: type,
        *,
        fn_kwargs: dict[str, Any],
        pool: ActorPool,
        rows_per_task: int,
        whole_tasks: bool = False,
    ) -> list[dict[str, Any]]:
        if not rows:
            return []
        # the batches a Ray map would cut (task_plan), whatever whole_tasks says
        rows_per_task, _ = task_plan(len(rows), rows_per_task, pool.max_size)
        fn = fn_cls(**fn_kwargs)
        return map_in_process(fn, rows, rows_per_task)

    def open_pool(
        self, fn_cls: type, *, fn_kwargs: dict[str, Any], pool: ActorPool
    ) -> InProcessPool:
        """One ``fn_cls`` instance, built now, for every map until closed."""
        return InProcessPool(fn_cls(**fn_kwargs))

    def train_experts(self, jobs: list[ExpertJob]) -> None:
        from selma_ray.layout import train_run_name
        from selma_ray.training.loop import LocalReporter, train_expert
        from selma_ray.training.resume import checkpoint_steps, latest_checkpoint

        errors: dict[str, BaseException] = {}
        for job in jobs:
            # beside the run's other files, on its storage (as Ray Train's are)
            directory = posixpath.join(job.storage_path.rstrip("/"), train_run_name(job.skill))
            reporter = LocalReporter(directory, num_to_keep=job.train.num_to_keep)
            reporter.checkpoints = sorted(checkpoint_steps(directory))
            try:
                train_expert(
                    job.train,
                    skill=job.skill,
                    run_dir_uri=job.run_dir_uri,
                    base_model=job.base_model,
                    model_cache_dir=job.model_cache_dir,
                    seed=job.seed,
                    sources=job.sources,
                    reporter=reporter,
                    resume=latest_checkpoint(directory),
                )
            except Exception as e:  # noqa: BLE001 - collected and raised below
                log.exception("expert %s failed", job.skill)
                errors[job.skill] = e
        raise_expert_failures(errors, len(jobs))


def map_in_process(fn: Any, rows: list[dict[str, Any]], rows_per_task: int) -> list[dict[str, Any]]:
    """``fn`` over ``rows`` in order, ``rows_per_task`` rows a call."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(rows), rows_per_task):
        out.extend(batch_to_rows(fn(rows_to_batch(rows[start : start + rows_per_task]))))
    return out


class InProcessPool(RowPool):
    """One instance in this process, kept across maps (:meth:`InProcessExecutor.open_pool`)."""

    def __init__(self, fn: Any) -> None:
        self.fn: Any = fn

    def map(self, rows: list[dict[str, Any]], *, rows_per_task: int) -> list[dict[str, Any]]:
        if self.fn is None:
            raise RuntimeError("map on a closed pool")
        return map_in_process(self.fn, rows, rows_per_task)

    def close(self) -> None:
        fn, self.fn = self.fn, None
        if fn is not None:
            close_instance(fn)


def raise_expert_failures(errors: dict[str, BaseException], n_jobs: int) -> None:
    """One error naming every failed expert (finished experts stay finished for the rerun)."""
    if not errors:
        return
    detail = "; ".join(f"{s}: {type(e).__name__}: {e}" for s, e in errors.items())
    msg = f"{len(errors)} of {n_jobs} experts failed ({detail}); rerun to resume them"
    raise RuntimeError(msg) from next(iter(errors.values()))
