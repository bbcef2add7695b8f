"""The Ray layer, the only code that imports Ray: stage cores mapped onto Ray Data / Train /
Serve.

- :mod:`~selma_ray.distributed.executor`: :class:`RayExecutor`, the executor every stage core is
  handed on Ray (rows on Ray Data actor pools, experts on Ray Train);
- :mod:`~selma_ray.distributed.data`: rows -> an :class:`~selma_ray.config.ActorPool` of Ray
  Data actors -> rows;
- :mod:`~selma_ray.distributed.pools`: the same on Ray actors kept across maps (stage 1's vLLM
  engines, started once per stage);
- :mod:`~selma_ray.distributed.train`: one Ray Train ``TorchTrainer`` per skill expert;
- :mod:`~selma_ray.distributed.serve`: the Ray Serve deployments over the Ray-free HTTP API;
- :mod:`~selma_ray.distributed.runtime`: connect to a cluster or start a local Ray for a run.
"""

from __future__ import annotations

from selma_ray.distributed.executor import RayExecutor
from selma_ray.distributed.runtime import ray_session

__all__ = ["RayExecutor", "ray_session"]
