"""The ``transformers`` prompt engine: batched ``generate()`` in this process (no vLLM needed).

Its :meth:`TransformersEngine.token_budget` is the model's context length (as vLLM would derive
it) and the tokens each request's rendered prompt takes, so the stage can fit requests in.
Requests are batched in order, a batch holding only requests with the same ``max_tokens``;
each request samples with its own seeded generator, so its random draws do not depend on the
batch. On the CPU in float32 its text does not either (the tests check it); on a GPU, or in
half precision, a row's logits can shift slightly with the batch's padding and shapes, so a
resumed, smaller batch may still differ after some tokens, as with vLLM.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from selma_ray.config import TransformersEngineConfig
from selma_ray.prompts.engines.base import (
    Completion,
    GenerationRequest,
    Question,
    TokenBudget,
    count_prompt_tokens,
    model_context_length,
)

#: ``generate()`` settings that leave the choice of each token to :class:`_PerRequestSampler`
#: alone: greedy over its one kept token, and none of the processors a model's own
#: ``generation_config`` may ask for (a repetition penalty, beams, several sequences ...), which
#: vLLM's ``SamplingParams`` (all the vllm engine sets) would not apply either.
_ONLY_THE_SAMPLER: dict[str, Any] = {
    "do_sample": False,
    "num_beams": 1,
    "num_return_sequences": 1,
    **dict.fromkeys(
        [
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "typical_p",
            "repetition_penalty",
            "encoder_repetition_penalty",
            "no_repeat_ngram_size",
            "encoder_no_repeat_ngram_size",
            "bad_words_ids",
            "sequence_bias",
            "min_length",
            "min_new_tokens",
            "forced_bos_token_id",
            "forced_eos_token_id",
            "exponential_decay_length_penalty",
            "suppress_tokens",
            "begin_suppress_tokens",
            "guidance_scale",
            "watermarking_config",
        ]
    ),
}

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
        self._path: str | None = None

    def _load_tokenizer(self) -> None:
        if self._tokenizer is not None:
            return
        from transformers import AutoTokenizer

        from selma_ray.models import resolve_model

        self._path = resolve_model(self.model_ref, cache_dir=self.cache_dir)
        tok = AutoTokenizer.from_pretrained(self._path)
        tok.padding_side = "left"  # decoder-only: pad on the left so generation continues text
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self._tokenizer = tok

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM

        self._load_tokenizer()
        dtype = getattr(torch, _DTYPES[self.cfg.dtype]) if self.cfg.dtype != "auto" else "auto"
        model = AutoModelForCausalLM.from_pretrained(self._path, dtype=dtype)
        self._model = model.to(self.cfg.device).eval()

    def token_budget(self) -> TokenBudget | None:
        """The model's context length and this engine's prompt token count (None when the
        model's config names no context length: requests are then sent as built)."""
        self._load_tokenizer()
        assert self._path is not None
        limit, _ = model_context_length(self._path, self._tokenizer)
        if limit is None:
            return None
        # generate() is fed a chat template's text as rendered, a plain prompt with the
        # tokenizer's special tokens (its BOS, as vLLM's generate feeds it)
        return TokenBudget(
            limit, partial(count_prompt_tokens, self._tokenizer, plain_special_tokens=True)
        )

    def _render(self, req: GenerationRequest) -> tuple[str, str]:
        """(model input text, prefix to put back in front of the output)."""
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
            return text, ""
        return req.prompt, f"{req.start_index}."

    def generate(self, requests: list[GenerationRequest]) -> list[str | Completion]:
        import torch
        from transformers import LogitsProcessorList

        self._load()
        tok, model = self._tokenizer, self._model
        eos = _eos_ids(model, tok)
        out: list[str | Completion] = []
        for batch in _batches(requests, self.cfg.batch_size):
            rendered = [self._render(r) for r in batch]
            enc = tok(
                [text for text, _ in rendered],
                return_tensors="pt",
                padding=True,
                # a chat template writes its own BOS; a plain prompt (a base model) needs the
                # tokenizer's, as vLLM's generate adds it
                add_special_tokens=not getattr(tok, "chat_template", None),
            ).to(self.cfg.device)
            max_new = max(r.max_tokens for r in batch)
            with torch.no_grad():
                # each request samples with its own seeded generator (as vLLM's per-request
                # seed does), whatever its batch-mates and the batch size; generate() itself
                # only takes the one token the sampler left
                gen = model.generate(
                    **enc,
                    **_ONLY_THE_SAMPLER,
                    logits_processor=LogitsProcessorList([_PerRequestSampler(batch)]),
                    max_new_tokens=max_new,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=sorted(eos) or None,
                )
            new_tokens = gen[:, enc["input_ids"].shape[1] :]
            prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
            for (_, prefix), row, n in zip(rendered, new_tokens, prompt_tokens, strict=True):
                ids = row.tolist()
                finished = any(i in eos for i in ids)
                text = tok.decode(ids, skip_special_tokens=True)
                out.append(
                    Completion(
                        prefix + text,
                        truncated=not finished and len(ids) >= max_new,
                        prompt_tokens=int(n),
                    )
                )
        return out

    def questions_for(self, prompt: str) -> list[Question] | None:
        return None

    def close(self) -> None:
        self._model = None
        self._tokenizer = None


class _PerRequestSampler:
    """A logits processor that samples each row's next token with that request's own
    ``torch.Generator`` (seeded from ``GenerationRequest.seed``) after its own temperature and
    top-p, as vLLM's ``SamplingParams`` do, and leaves only that token: ``generate()`` runs
    greedy over the result. A request at temperature 0 is greedy. Each row draws one uniform
    number per step from its generator (on the CPU) and takes the token where the cumulative
    probability of its top-p nucleus, most likely first, passes it, all rows at once; so a
    row's tokens depend only on its own seed and logits, not on its batch-mates' draws."""

    def __init__(self, requests: list[GenerationRequest]) -> None:
        import torch

        self.requests = requests
        self.generators = [torch.Generator().manual_seed(int(r.seed) % 2**63) for r in requests]
        self.temperature = torch.tensor([max(r.temperature, 1e-6) for r in requests])
        self.top_p = torch.tensor([min(r.top_p, 1.0) for r in requests], dtype=torch.float64)
        self.sampled = torch.tensor([r.temperature > 0 for r in requests])

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if scores.shape[0] != len(self.requests):
            msg = f"{scores.shape[0]} rows of scores for {len(self.requests)} requests"
            raise ValueError(msg)
        device = scores.device
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        probs = torch.softmax(scores.double() / self.temperature.to(device)[:, None], dim=-1)
        # stable: tied logits (common in bf16) keep the token order, whatever the batch
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        cdf = torch.cumsum(sorted_probs, dim=-1)
        # the nucleus: the most likely tokens until their mass reaches top_p (the first always,
        # every token at top_p 1)
        top_p = self.top_p.to(device)[:, None]
        inside = ((cdf - sorted_probs) < top_p) | (top_p >= 1.0)
        inside[:, 0] = True
        cdf = torch.cumsum(sorted_probs * inside, dim=-1)
        target = (u.to(device) * cdf[:, -1])[:, None]
        pick = torch.searchsorted(cdf, target, right=True)
        pick = torch.minimum(pick, inside.sum(dim=-1, keepdim=True) - 1)
        tokens = order.gather(1, pick).squeeze(1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, tokens[:, None], 0.0)
        greedy = ~self.sampled.to(device)
        out[greedy] = scores[greedy]
        return out


def _eos_ids(model: Any, tok: Any) -> set[int]:
    """The tokens that end an answer: the tokenizer's EOS and the model's generation config's
    (a chat model may end its turn with another token, e.g. Llama 3's ``<|eot_id|>``)."""
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(cfg_eos, int):
        ids.add(cfg_eos)
    elif cfg_eos:
        ids.update(int(i) for i in cfg_eos)
    return ids


def _batches(requests: list[GenerationRequest], size: int) -> list[list[GenerationRequest]]:
    """Consecutive runs of at most ``size`` requests sharing one ``max_tokens`` (a request the
    stage gave fewer response tokens must not generate its batch-mates' longer budget)."""
    out: list[list[GenerationRequest]] = []
    for req in requests:
        if out and len(out[-1]) < size and out[-1][0].max_tokens == req.max_tokens:
            out[-1].append(req)
        else:
            out.append([req])
    return out
