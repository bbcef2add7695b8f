"""The ``vllm`` prompt engine: requests mapped over vLLM engines in a Ray Data actor pool.

Each round of the self-instruct loop is one Ray Data job over the requests of every skill still
short of its target; the pool autoscales between ``prompts.vllm.min_engines`` and
``max_engines``, each engine holding ``gpus_per_engine`` GPUs (tensor parallel inside).
"""

from __future__ import annotations

import json

from selma_ray.config import VllmEngineConfig
from selma_ray.distributed.data import map_rows_with_actors
from selma_ray.prompts.engines.base import Completion, GenerationRequest, Question
from selma_ray.prompts.engines.vllm_engine import VllmPredictor


class VllmRayDataEngine:
    name = "vllm"

    def __init__(self, model: str, cfg: VllmEngineConfig, *, cache_dir: str | None = None) -> None:
        self.model_ref = model
        self.cfg = cfg
        self.cache_dir = cache_dir

    def engine_kwargs(self) -> dict:
        kwargs = {
            "tensor_parallel_size": self.cfg.tensor_parallel_size,
            "max_model_len": self.cfg.max_model_len,
            "dtype": self.cfg.dtype,
            "enforce_eager": self.cfg.enforce_eager,
        }
        if self.cfg.gpus_per_engine:
            kwargs["gpu_memory_utilization"] = self.cfg.gpu_memory_utilization
        return {**kwargs, **self.cfg.engine_kwargs}

    def generate(self, requests: list[GenerationRequest]) -> list[str | Completion]:
        from selma_ray.models import resolve_model

        if not requests:
            return []
        rows = [
            {
                "idx": i,
                "messages": json.dumps(r.messages),
                "prompt": r.prompt,
                "start_index": r.start_index,
                "seed": r.seed,
                "temperature": r.temperature,
                "top_p": r.top_p,
                "max_tokens": r.max_tokens,
            }
            for i, r in enumerate(requests)
        ]
        model_path = resolve_model(self.model_ref, cache_dir=self.cache_dir)
        out = map_rows_with_actors(
            rows,
            VllmPredictor,
            fn_constructor_kwargs={
                "model": model_path,
                "engine_kwargs": self.engine_kwargs(),
                "cpu_kvcache_gb": None if self.cfg.gpus_per_engine else self.cfg.cpu_kvcache_gb,
            },
            min_actors=self.cfg.min_engines,
            max_actors=self.cfg.max_engines,
            batch_size=self.cfg.batch_size,
            num_gpus=self.cfg.gpus_per_engine,
        )
        by_idx = {int(r["idx"]): Completion(str(r["text"]), bool(r["truncated"])) for r in out}
        missing = [i for i in range(len(requests)) if i not in by_idx]
        if missing:
            msg = f"vLLM returned no output for {len(missing)} of {len(requests)} requests"
            raise RuntimeError(msg)
        return [by_idx[i] for i in range(len(requests))]

    def questions_for(self, prompt: str) -> list[Question] | None:
        return None

    def close(self) -> None:
        pass
