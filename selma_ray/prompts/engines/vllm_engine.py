"""A vLLM engine held by one worker: the per-actor core of the ``vllm`` prompt engine.

:class:`VllmPredictor` knows nothing of Ray: Ray Data constructs it once per actor and calls it
on batches of rows (see ``selma_ray.distributed.llm``). Rows carry the chat messages (JSON),
the sampling settings and a per-request seed, so results do not depend on batching.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


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
