"""Long-lived actor pools: a stage core's callable class on Ray actors that outlive one map.

:func:`~selma_ray.distributed.data.map_rows_with_actors` runs one Ray Data job, whose actors
end with it. A stage that maps several times in turn, each input built from the last output
(stage 1's self-instruct rounds), would start its workers again every time; a
:class:`RayActorPool` (``RayExecutor.open_pool``) starts them once and keeps them until
:meth:`RayActorPool.close`.

The pool follows its :class:`~selma_ray.config.ActorPool` as Ray Data does: ``cpus`` (1 when
unset) and ``gpus`` per actor, ``min_size`` actors started when the pool opens, more started
up to ``max_size`` when a map has more tasks than the pool has actors (never fewer: idle
actors are what the pool is for). Tasks go only to actors whose constructor has finished, so
actors the cluster cannot place yet do not hold work back, and each ready actor holds one task
at a time (the next goes to whichever finishes first). Fault tolerance is Ray's own actor
fault tolerance with the pool's numbers: an actor whose process dies is restarted in place
(``max_restarts``) and its task resubmitted (``max_task_retries``); an actor whose constructor
raised is not restarted and fails the map at once with the constructor's error, as does an
exception raised by the class's ``__call__``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from selma_ray.config import ActorPool
from selma_ray.distributed.devices import device_checked
from selma_ray.execution import RowPool, batch_to_rows, close_instance, rows_to_batch, task_plan

log = logging.getLogger(__name__)

__all__ = ["RayActorPool", "actor_options"]

#: Seconds ``close`` waits for actors to release their instance (``close()``) before killing.
STOP_TIMEOUT_S = 60.0


def actor_options(pool: ActorPool) -> dict[str, Any]:
    """Ray actor options of a pool: resources as Ray Data reserves them (1 CPU unless
    ``cpus`` says otherwise; custom ``resources``), restarts and task retries."""
    options: dict[str, Any] = {
        "num_cpus": 1 if pool.cpus is None else pool.cpus,
        "max_restarts": pool.max_restarts,
        "max_task_retries": pool.max_task_retries,
    }
    if pool.gpus:
        options["num_gpus"] = pool.gpus
    if pool.resources:
        options["resources"] = dict(pool.resources)
    return options


class PoolWorker:
    """The actor: one ``fn_cls`` instance, built in the constructor (again on a restart)."""

    def __init__(self, fn_cls: type, fn_kwargs: dict[str, Any]) -> None:
        self.name = fn_cls.__name__
        self.fn: Any = fn_cls(**fn_kwargs)

    def ready(self) -> int:
        """The actor's process id, once the constructor has finished."""
        return os.getpid()

    def call(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.fn(batch)

    def stop(self) -> None:
        fn, self.fn = self.fn, None
        if fn is not None:
            close_instance(fn)

    def __repr__(self) -> str:  # Ray names the actor by it in logs and the dashboard
        return f"PoolWorker({self.name})"


class RayActorPool(RowPool):
    """Ray actors of ``fn_cls(**fn_kwargs)`` kept across :meth:`map` calls (see the module)."""

    def __init__(
        self,
        fn_cls: type,
        *,
        fn_kwargs: dict[str, Any],
        pool: ActorPool,
        cpu_fallback: bool = False,
    ) -> None:
        import ray

        self.pool = pool
        self._remote = ray.remote(PoolWorker).options(**actor_options(pool))
        self._args = (device_checked(fn_cls, pool, cpu_fallback=cpu_fallback), fn_kwargs)
        self._actors: list[Any] = []
        self._starting: dict[Any, Any] = {}  # ready() ref -> actor, constructor not done yet
        self._ready: list[Any] = []  # actors whose constructor has finished
        self._closed = False
        self._grow(max(1, pool.min_size))

    @property
    def size(self) -> int:
        """Actors started (ready or not)."""
        return len(self._actors)

    def _grow(self, n: int) -> None:
        for _ in range(min(n, self.pool.max_size) - len(self._actors)):
            actor = self._remote.remote(*self._args)
            self._actors.append(actor)
            self._starting[actor.ready.remote()] = actor

    def map(self, rows: list[dict[str, Any]], *, rows_per_task: int) -> list[dict[str, Any]]:
        import ray

        if self._closed:
            raise RuntimeError("map on a closed pool")
        if not rows:
            return []
        per_task, n_tasks = task_plan(len(rows), rows_per_task, self.pool.max_size)
        self._grow(n_tasks)
        todo = [rows[i : i + per_task] for i in range(0, len(rows), per_task)]
        todo.reverse()  # pop() from the end: tasks go out in input order
        idle = list(self._ready)  # one map at a time: every started actor is free now
        running: dict[Any, Any] = {}  # call ref -> actor
        out: list[dict[str, Any]] = []
        while todo or running:
            while todo and idle:
                actor = idle.pop()
                running[actor.call.remote(rows_to_batch(todo.pop()))] = actor
            done, _ = ray.wait([*running, *self._starting], num_returns=1)
            ref = done[0]
            if ref in self._starting:
                actor = self._starting.pop(ref)
                ray.get(ref)  # a constructor that raised fails the map here, with its error
                self._ready.append(actor)
                idle.append(actor)
                continue
            # an error ends the map; the actors stay (Ray restarts one whose process died)
            out.extend(batch_to_rows(ray.get(ref)))
            idle.append(running.pop(ref))
        return out

    def close(self) -> None:
        """Let ready actors release their instance, then end every actor."""
        import ray

        if self._closed:
            return
        self._closed = True
        stops = [a.stop.remote() for a in self._ready]
        if stops:
            _, late = ray.wait(stops, num_returns=len(stops), timeout=STOP_TIMEOUT_S)
            if late:
                log.warning("%d actors did not stop in %.0f s", len(late), STOP_TIMEOUT_S)
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors, self._ready, self._starting = [], [], {}
