"""The per-prompt DSG pipeline: prompts in, each prompt's questions (or why none) out.

:func:`ask_questions` builds one request per prompt (:mod:`~selma_ray.prompts.dsg.requests`),
fits each into the engine's context when the engine counts tokens, sends all of them in one
``engine.generate`` call (one Ray Data job with vLLM) and parses each answer
(:mod:`~selma_ray.prompts.dsg.answer`). Nothing is fatal per prompt: a request that does not
fit, a refusal or an answer that cannot be read gives ``questions=None`` and a reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial

from selma_ray.config import DsgQuestionsConfig
from selma_ray.prompts.dsg.answer import parse_answer
from selma_ray.prompts.dsg.requests import Example, build_request, choose_examples, fit_request
from selma_ray.prompts.engines.base import (
    GenerationRequest,
    PromptEngine,
    Question,
    TokenBudget,
    as_completion,
)
from selma_ray.prompts.fewshot import FitResult
from selma_ray.seeds import derive_seed


@dataclass(frozen=True)
class PromptToAsk:
    """A prompt whose questions are asked for: its row id, skill and text."""

    prompt_id: str
    skill: str
    prompt: str


@dataclass(frozen=True)
class Outcome:
    """One prompt's result: its questions, or (None) the DSG drop reason."""

    questions: list[Question] | None
    dropped: str | None = None
    shortened: bool = False  # sent with fewer examples than configured
    max_tokens_reduced: bool = False


@dataclass
class DsgCounts:
    """What a skill's stats say about its questions (``prompts/stats.json`` ``dsg``)."""

    asked: int = 0
    parsed: int = 0
    shortened: int = 0
    max_tokens_reduced: int = 0
    dropped: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        self.asked += 1
        self.parsed += outcome.questions is not None
        self.shortened += outcome.shortened
        self.max_tokens_reduced += outcome.max_tokens_reduced
        if outcome.dropped:
            self.dropped[outcome.dropped] += 1

    def to_json(self) -> dict:
        return {
            "asked": self.asked,
            "parsed": self.parsed,
            "shortened": self.shortened,
            "max_tokens_reduced": self.max_tokens_reduced,
            "dropped": dict(sorted(self.dropped.items())),
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_json(cls, data: dict | None) -> DsgCounts:
        data = data or {}
        return cls(
            asked=data.get("asked", 0),
            parsed=data.get("parsed", 0),
            shortened=data.get("shortened", 0),
            max_tokens_reduced=data.get("max_tokens_reduced", 0),
            dropped=Counter(data.get("dropped", {})),
            seconds=data.get("seconds", 0.0),
        )


def plan_request(
    item: PromptToAsk, cfg: DsgQuestionsConfig, seed: int, budget: TokenBudget | None
) -> FitResult:
    """The request for one prompt (deterministic in seed and prompt id), fitted into
    ``budget`` when the engine counts tokens."""
    examples = choose_examples(seed, item.prompt_id, cfg.examples)
    build = partial(_build, item, examples, derive_seed(seed, "dsg-request", item.prompt_id), cfg)
    if budget is None:
        return FitResult(build(len(examples)), None)
    return fit_request(build, len(examples), budget, cfg.max_tokens)


def _build(
    item: PromptToAsk,
    examples: list[Example],
    request_seed: int,
    cfg: DsgQuestionsConfig,
    k: int,
) -> GenerationRequest:
    return build_request(
        item.skill,
        item.prompt,
        examples[:k],
        seed=request_seed,
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
    )


def ask_questions(
    engine: PromptEngine,
    items: list[PromptToAsk],
    cfg: DsgQuestionsConfig,
    *,
    seed: int,
    budget: TokenBudget | None = None,
) -> list[Outcome]:
    """Every prompt's DSG questions from ``engine``, in one ``generate`` call; one
    :class:`Outcome` per item, in order."""
    fits = [plan_request(item, cfg, seed, budget) for item in items]
    requests = [f.request for f in fits if f.request is not None]
    responses = engine.generate(requests) if requests else []
    if len(responses) != len(requests):
        msg = f"engine {engine.name} returned {len(responses)} texts for {len(requests)} requests"
        raise RuntimeError(msg)
    answers = iter(responses)
    out = []
    for fit in fits:
        flags = {"shortened": fit.shortened, "max_tokens_reduced": fit.max_tokens_reduced}
        if fit.request is None:
            out.append(Outcome(None, fit.dropped, **flags))
            continue
        completion = as_completion(next(answers))
        if completion.error:
            out.append(Outcome(None, completion.error, **flags))
            continue
        parsed = parse_answer(completion.text, truncated=completion.truncated)
        out.append(Outcome(parsed.questions, parsed.dropped, **flags))
    return out
