"""Few-shot DSG requests: in-context examples drawn from DSG-1k, one request per prompt.

A request shows K DSG-1k items (their text, tuples, dependencies and questions in the format
of :mod:`selma_ray.prompts.dsg.answer`) and asks for the same three sections for one prompt.
The three steps of the DSG pipeline (tuples, then their dependencies, then a question per
tuple) go in one request: every step of the paper sees the prompt and the tuples, which the
model has just written itself, and one request per prompt keeps a round's questions to one
engine call (one Ray Data job with vLLM) instead of three calls in sequence.

The K examples are chosen from the clean DSG-1k items (those whose annotations need no
cleaning and read back exactly) by a generator seeded from (run seed, prompt id), so a rerun
or a resumed run asks the same; they are shown shortest first. A request that does not fit
the model's context is rebuilt with fewer examples (the longest go first), then given fewer
response tokens, else dropped as ``request_too_long``: the policy of
:func:`selma_ray.prompts.fewshot.fit_request`, whose result type it returns.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

from selma_ray.prompts.dsg.answer import format_answer, parse_answer
from selma_ray.prompts.engines.base import GenerationRequest, Question, TokenBudget
from selma_ray.prompts.fewshot import FitResult
from selma_ray.seeds import derive_seed

SYSTEM_MESSAGE = (
    "You turn a text-to-image prompt into a Davidsonian Scene Graph: atomic tuples, the "
    "dependencies between them and one yes/no question per tuple. You answer in the exact "
    "format of the examples, with no comments before or after."
)

INSTRUCTIONS = (
    "For the text, write three numbered sections, one 'id | value' line each:\n"
    "Tuples: every atomic fact the text states explicitly, as "
    "'category - detail (arguments)', category one of entity, attribute, relation, global, "
    "other; no fact twice, nothing the text does not say.\n"
    "Dependencies: for each tuple, the ids of the tuples it depends on (comma separated), or 0 "
    "when none (an attribute or relation depends on the entities it names).\n"
    "Questions: for each tuple, one natural yes/no question that checks it in an image."
)

#: Fewest response tokens a request may be cut down to: about a one-tuple scene graph.
MIN_RESPONSE_TOKENS = 64


@dataclass(frozen=True)
class Example:
    """One DSG-1k item shown as an in-context example."""

    item_id: str
    text: str
    questions: tuple[Question, ...]


@lru_cache(maxsize=1)
def example_pool() -> tuple[Example, ...]:
    """The DSG-1k items usable as examples, in file order: annotations that needed no cleaning
    (see :func:`~selma_ray.evaluation.benchmarks.load_dsg1k`) and read back exactly after
    formatting (ids 1..N, well-formed tuples, acyclic dependencies)."""
    from selma_ray.evaluation.benchmarks import load_dsg1k

    bench = load_dsg1k()
    cleaned = {fix.item_id for fix in bench.report.dependency_fixes}
    pool = []
    for item in bench.items:
        if item.item_id in cleaned:
            continue
        questions = tuple(
            Question(
                q.proposition_id,
                q.question,
                q.category_broad,
                q.category_detailed,
                q.tuple,
                list(q.dependency),
            )
            for q in item.questions
        )
        if parse_answer(format_answer(list(questions))).questions == list(questions):
            pool.append(Example(item.item_id, item.text, questions))
    return tuple(pool)


def choose_examples(seed: int, prompt_id: str, k: int) -> list[Example]:
    """K distinct examples for a prompt, a pure function of (seed, prompt id, k), shortest
    first (a request too long for the context drops the longest)."""
    pool = example_pool()
    rng = random.Random(derive_seed(seed, "dsg-examples", prompt_id))
    return sorted(rng.sample(pool, min(k, len(pool))), key=lambda e: len(_shown(e)))


def _shown(example: Example) -> str:
    return f"Text: {example.text}\n{format_answer(list(example.questions))}"


def build_request(
    skill: str,
    prompt: str,
    examples: list[Example],
    *,
    seed: int,
    temperature: float = 0.0,
    max_tokens: int = 512,
) -> GenerationRequest:
    """The request for one prompt's scene graph, showing ``examples``.

    The chat form asks for all three sections; the plain form ends in ``Tuples:`` and the first
    id, so a base model continues the first section (a completion engine puts ``1.`` back).
    """
    if not examples:
        msg = f"DSG request for {prompt!r}: a request needs at least one example"
        raise ValueError(msg)
    shown = "\n\n".join(_shown(e) for e in examples)
    user = (
        f"{INSTRUCTIONS}\n\nExamples:\n\n{shown}\n\n"
        f"Now the same three sections (Tuples, Dependencies, Questions) for this text.\n"
        f"Text: {prompt}"
    )
    plain = f"{SYSTEM_MESSAGE}\n\n{INSTRUCTIONS}\n\n{shown}\n\nText: {prompt}\nTuples:\n1 |"
    return GenerationRequest(
        skill=skill,
        messages=[
            {"role": "system", "content": SYSTEM_MESSAGE},
            {"role": "user", "content": user},
        ],
        prompt=plain,
        n_items=1,
        start_index=1,
        seed=seed,
        examples=tuple(e.item_id for e in examples),
        word_limit=0,
        temperature=temperature,
        top_p=1.0,
        max_tokens=max_tokens,
    )


def fit_request(
    build: Callable[[int], GenerationRequest],
    n_examples: int,
    budget: TokenBudget,
    max_tokens: int,
) -> FitResult:
    """``build(k)`` (a request with the first k examples) made to fit ``budget``: with all
    ``n_examples`` if it fits, else with k-1 ... 1; if one example leaves less than
    ``max_tokens``, ``max_tokens`` is cut to the room left when that is at least
    :data:`MIN_RESPONSE_TOKENS` (or ``max_tokens``, if smaller); else dropped."""
    request, n_tokens = None, 0
    for k in range(n_examples, 0, -1):
        request = build(k)
        n_tokens = budget.count(request)
        if n_tokens + max_tokens <= budget.max_model_len:
            return FitResult(request, n_tokens, shortened=k < n_examples)
    if request is None:
        msg = "a DSG request needs at least one example"
        raise ValueError(msg)
    room = budget.max_model_len - n_tokens
    if room >= min(max_tokens, MIN_RESPONSE_TOKENS):
        return FitResult(
            replace(request, max_tokens=room),
            n_tokens,
            shortened=n_examples > 1,
            max_tokens_reduced=True,
        )
    return FitResult(None, n_tokens, dropped="request_too_long")
