"""The ``transformers`` prompt engine: batched ``generate()`` in this process (no vLLM needed)."""

from __future__ import annotations

from typing import Any

from selma_ray.config import TransformersEngineConfig
from selma_ray.prompts.engines.base import Completion, GenerationRequest, Question

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class TransformersEngine:
    name = "transformers"

    def __init__(
        self, model: str, cfg: TransformersEngineConfig, *, cache_dir: str | None = None
    ) -> None:
        self.model_ref = model
        self.cfg = cfg
        self.cache_dir = cache_dir
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from selma_ray.models import resolve_model

        path = resolve_model(self.model_ref, cache_dir=self.cache_dir)
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"  # decoder-only: pad on the left so generation continues text
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        dtype = getattr(torch, _DTYPES[self.cfg.dtype]) if self.cfg.dtype != "auto" else "auto"
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        self._model = model.to(self.cfg.device).eval()
        self._tokenizer = tok

    def _render(self, req: GenerationRequest) -> tuple[str, str]:
        """(model input text, prefix to put back in front of the output)."""
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
            return text, ""
        return req.prompt, f"{req.start_index}."

    def generate(self, requests: list[GenerationRequest]) -> list[str | Completion]:
        import torch

        self._load()
        tok, model = self._tokenizer, self._model
        out: list[str | Completion] = []
        for start in range(0, len(requests), self.cfg.batch_size):
            batch = requests[start : start + self.cfg.batch_size]
            rendered = [self._render(r) for r in batch]
            enc = tok(
                [text for text, _ in rendered],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(self.cfg.device)
            first = batch[0]
            # batched sampling shares one generator: seed it from the batch's first request so
            # a rerun with the same batch size reproduces the same texts
            torch.manual_seed(first.seed)
            max_new = max(r.max_tokens for r in batch)
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    do_sample=first.temperature > 0,
                    temperature=first.temperature if first.temperature > 0 else None,
                    top_p=first.top_p,
                    max_new_tokens=max_new,
                    pad_token_id=tok.pad_token_id,
                )
            new_tokens = gen[:, enc["input_ids"].shape[1] :]
            for (_, prefix), row in zip(rendered, new_tokens, strict=True):
                ids = row.tolist()
                finished = tok.eos_token_id in ids
                text = tok.decode(ids, skip_special_tokens=True)
                out.append(
                    Completion(prefix + text, truncated=not finished and len(ids) >= max_new)
                )
        return out

    def questions_for(self, prompt: str) -> list[Question] | None:
        return None

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
