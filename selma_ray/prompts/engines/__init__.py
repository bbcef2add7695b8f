"""Prompt engines behind one interface (requests in, texts out), chosen by ``prompts.engine``.

- ``scene-graph``: offline compositional generator that also writes DSG questions (tiny preset);
- ``transformers``: batched ``generate()`` in this process;
- ``openai``: any OpenAI-compatible HTTP endpoint;
- ``vllm``: vLLM engines on the executor's pool (on Ray: an autoscaling Ray Data actor pool).
"""

from __future__ import annotations

from selma_ray.config import PromptsConfig
from selma_ray.execution import Executor, InProcessExecutor
from selma_ray.prompts.engines.base import (
    Completion,
    GenerationRequest,
    PromptEngine,
    Question,
    as_completion,
)

__all__ = [
    "Completion",
    "GenerationRequest",
    "PromptEngine",
    "Question",
    "as_completion",
    "make_engine",
]


def make_engine(
    cfg: PromptsConfig,
    *,
    seed: int = 0,
    cache_dir: str | None = None,
    executor: Executor | None = None,
) -> PromptEngine:
    """The engine ``cfg.engine`` names, configured from its section; models load lazily.
    ``executor`` runs the ``vllm`` engine's requests (default: in this process)."""
    if cfg.engine == "scene-graph":
        from selma_ray.prompts.engines.scene_graph import SceneGraphEngine

        return SceneGraphEngine(seed=seed)
    if cfg.engine == "transformers":
        from selma_ray.prompts.engines.transformers_engine import TransformersEngine

        return TransformersEngine(cfg.model, cfg.transformers, cache_dir=cache_dir)
    if cfg.engine == "openai":
        from selma_ray.prompts.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(cfg.model, cfg.openai)
    if cfg.engine == "vllm":
        from selma_ray.prompts.engines.vllm_engine import VllmEngine

        return VllmEngine(
            cfg.model, cfg.vllm, executor or InProcessExecutor(), cache_dir=cache_dir
        )
    msg = f"prompts.engine: unknown engine {cfg.engine!r}"
    raise ValueError(msg)
