"""The ``vllm`` prompt engine: requests mapped over vLLM engines on the executor's pool.

:class:`VllmEngine` turns each round's requests into rows and hands them, with
:class:`VllmPredictor`, to the executor it was given: on Ray, one Ray Data job per round over
every skill still short of its target, on an autoscaling pool of engines
(``prompts.vllm.pool``; ``pool.gpus`` per engine, tensor parallel inside). A predictor holds one
``vllm.LLM``; rows carry the chat messages (JSON), the sampling settings and a per-request seed,
so results do not depend on batching.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from selma_ray.config import VllmEngineConfig
from selma_ray.execution import Executor
from selma_ray.prompts.engines.base import Completion, GenerationRequest, Question


class VllmEngine:
    name = "vllm"

    def __init__(
        self,
        model: str,
        cfg: VllmEngineConfig,
        executor: Executor,
        *,
        cache_dir: str | None = None,
    ) -> None:
        self.model_ref = model
        self.cfg = cfg
        self.executor = executor
        self.cache_dir = cache_dir

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs = {
            "tensor_parallel_size": self.cfg.tensor_parallel_size,
            "max_model_len": self.cfg.max_model_len,
            "dtype": self.cfg.dtype,
            "enforce_eager": self.cfg.enforce_eager,
        }
        if self.cfg.pool.gpus:
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
        out = self.executor.map_rows(
            rows,
            VllmPredictor,
            fn_kwargs={
                "model": resolve_model(self.model_ref, cache_dir=self.cache_dir),
                "engine_kwargs": self.engine_kwargs(),
                "cpu_kvcache_gb": None if self.cfg.pool.gpus else self.cfg.cpu_kvcache_gb,
            },
            pool=self.cfg.pool,
            rows_per_task=self.cfg.rows_per_task,
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


class VllmPredictor:
    """``__call__(batch) -> batch`` over columns idx, messages, prompt, seed, temperature..."""

    def __init__(
        self,
        model: str,
        engine_kwargs: dict[str, Any],
        cpu_kvcache_gb: int | None = None,
    ) -> None:
        if cpu_kvcache_gb is not None:
            # read by vLLM's CPU backend when the engine starts; per actor process
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_gb))
        from vllm import LLM

        self.llm = LLM(model=model, **engine_kwargs)
        tokenizer = self.llm.get_tokenizer()
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vllm import SamplingParams

        params = [
            SamplingParams(temperature=float(t), top_p=float(p), max_tokens=int(m), seed=int(s))
            for t, p, m, s in zip(
                batch["temperature"],
                batch["top_p"],
                batch["max_tokens"],
                batch["seed"],
                strict=True,
            )
        ]
        if self.chat:
            conversations = [json.loads(m) for m in batch["messages"]]
            outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False)
            prefixes = [""] * len(outputs)
        else:
            outputs = self.llm.generate(
                list(batch["prompt"]), sampling_params=params, use_tqdm=False
            )
            prefixes = [f"{int(i)}." for i in batch["start_index"]]
        texts = [pre + o.outputs[0].text for pre, o in zip(prefixes, outputs, strict=True)]
        truncated = [o.outputs[0].finish_reason == "length" for o in outputs]
        return {
            "idx": np.asarray(batch["idx"]),
            "text": np.asarray(texts, dtype=object),
            "truncated": np.asarray(truncated, dtype=bool),
        }
