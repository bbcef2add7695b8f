"""Few-shot requests for the self-instruct loop, and robust parsing of the LLM's numbered lists.

A request shows K examples of a skill as a numbered list and asks for M more, continuing the
numbering. A request that would not fit the model's context (prompt + response tokens, counted
by the engine) is rebuilt with fewer examples, then given fewer response tokens, else dropped
(:func:`fit_request`). Responses are parsed leniently (``N. text``, ``N) text``, bullets,
quotes, stray whitespace, wrapped lines) and every item that is not kept is counted under a
reason, so the stage's stats say exactly where requested prompts went.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace

from selma_ray.prompts.engines.base import GenerationRequest, TokenBudget
from selma_ray.skills import Skill

SYSTEM_MESSAGE = (
    "You write prompts for a text-to-image model. You answer with a numbered list of prompts "
    "only: one prompt per line, no comments before or after."
)

#: Drop reasons counted by the parser and the stage (stable names: they appear in stats files).
DROP_REASONS = (
    "empty",
    "too_short",
    "too_long",
    "truncated",
    "copies_example",
    "repeat_in_response",
    "near_duplicate",
    "over_target",
)

#: Why a request was not answered (stable names: they appear in stats files, per request).
REQUEST_DROP_REASONS = (
    "request_too_long",  # does not fit the model's context even with one example
    "rejected_by_engine",  # the engine refused it (e.g. vLLM counted more tokens than we did)
)

MIN_WORDS = 3
#: Fewest response tokens a request may be cut down to: room for about one prompt.
MIN_RESPONSE_TOKENS = 16

_NUMBERED = re.compile(r"^\s*(?:\*\*)?\(?(\d{1,4})(?:\*\*)?\s*[.):\]]+(?:\*\*)?\s*(.*)$")
_BULLET = re.compile(r"^\s*(?:[-*\u2022\u2023\u25cf]|\u2013)\s+(.*)$")
_LABEL = re.compile(r"^(?:prompt|caption)\s*\d*\s*[:\-]\s*", re.IGNORECASE)
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"


def build_request(
    skill: Skill,
    examples: list[str],
    *,
    n_items: int,
    seed: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_tokens: int = 1024,
) -> GenerationRequest:
    """A request showing ``examples`` numbered 1..K and asking for items K+1..K+n_items."""
    if not examples:
        msg = f"skill {skill.name!r}: a request needs at least one example"
        raise ValueError(msg)
    start = len(examples) + 1
    listing = "\n".join(f"{i}. {text}" for i, text in enumerate(examples, start=1))
    user = (
        f"{skill.instruction}\n\n"
        f"Here are examples:\n{listing}\n\n"
        f"Write {n_items} new prompts of the same kind, each under {skill.word_limit} words and "
        f"different from the examples and from each other. Continue the numbering from {start} "
        f"to {start + n_items - 1}, one prompt per line."
    )
    # The completion form ends with the next number, so a base model simply continues the list.
    prompt = f"{SYSTEM_MESSAGE}\n\n{skill.instruction}\n\n{listing}\n{start}."
    return GenerationRequest(
        skill=skill.name,
        messages=[
            {"role": "system", "content": SYSTEM_MESSAGE},
            {"role": "user", "content": user},
        ],
        prompt=prompt,
        n_items=n_items,
        start_index=start,
        seed=seed,
        examples=tuple(examples),
        word_limit=skill.word_limit,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
    )


def min_response_tokens(word_limit: int) -> int:
    """Fewest response tokens worth sending a request for: about one prompt of
    ``word_limit`` words (two tokens a word), at least :data:`MIN_RESPONSE_TOKENS`."""
    return max(MIN_RESPONSE_TOKENS, 2 * word_limit)


@dataclass(frozen=True)
class FitResult:
    """A request fitted into the model's context, or why none could be."""

    request: GenerationRequest | None  # None: dropped
    #: of the request sent (when dropped: of the one-example request); None: not counted
    prompt_tokens: int | None
    shortened: bool = False  # fewer examples than sampled
    max_tokens_reduced: bool = False
    dropped: str | None = None  # a REQUEST_DROP_REASONS name


def fit_request(
    skill: Skill,
    examples: list[str],
    budget: TokenBudget,
    *,
    n_items: int,
    seed: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_tokens: int = 1024,
) -> FitResult:
    """:func:`build_request`, made to fit ``budget`` (prompt tokens + ``max_tokens`` <=
    ``budget.max_model_len``): with all ``examples`` if it fits, else with the first K-1, K-2
    ... 1 of them; if even one example leaves less than ``max_tokens``, ``max_tokens`` is cut
    to the room left when that is at least :func:`min_response_tokens` (or ``max_tokens``, if
    smaller); otherwise the request is dropped as ``request_too_long``."""

    def build(k: int) -> GenerationRequest:
        return build_request(
            skill,
            examples[:k],
            n_items=n_items,
            seed=seed,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
        )

    request, n_tokens = None, 0
    for k in range(len(examples), 0, -1):
        request = build(k)
        n_tokens = budget.count(request)
        if n_tokens + max_tokens <= budget.max_model_len:
            return FitResult(request, n_tokens, shortened=k < len(examples))
    if request is None:
        msg = f"skill {skill.name!r}: a request needs at least one example"
        raise ValueError(msg)
    room = budget.max_model_len - n_tokens
    if room >= min(max_tokens, min_response_tokens(skill.word_limit)):
        return FitResult(
            replace(request, max_tokens=room),
            n_tokens,
            shortened=len(examples) > 1,
            max_tokens_reduced=True,
        )
    return FitResult(None, n_tokens, dropped="request_too_long")


def sample_examples(pool: list[str], k: int, rng: random.Random) -> list[str]:
    """K distinct examples from the pool (all of it when it is smaller than K)."""
    return rng.sample(pool, k) if len(pool) > k else list(pool)


@dataclass
class ParseResult:
    items: list[str] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    candidates: int = 0  # list items found before any was dropped


def _normalise_key(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def clean_item(text: str) -> str:
    """Strip markup around one prompt: whitespace, quotes, bold markers, 'Prompt:' labels."""
    text = " ".join(text.split())
    text = text.replace("**", "")
    text = _LABEL.sub("", text).strip()
    # strip matching or dangling quotes around the whole item
    while (
        len(text) >= 1
        and text[0] in _QUOTES
        and (text.count(text[0]) % 2 == 1 or text[-1] in _QUOTES)
    ):
        text = text[1:].strip()
        if text and text[-1] in _QUOTES:
            text = text[:-1].strip()
    if text and text[-1] in _QUOTES and text.count(text[-1]) % 2 == 1:
        text = text[:-1].strip()
    return text


def _continues(item: str, line: str) -> bool:
    """Whether an unnumbered ``line`` right after ``item`` is the item wrapped onto a new line:
    it goes on mid-sentence (not a capital letter), or the item ends with a comma, a semicolon,
    a dash or a joining word ("of", "and", ...). A line that starts a new sentence ("I hope
    these help!", "Note: ...") is a remark, not part of the prompt."""
    head = line.lstrip()[:1]
    if not head:
        return False
    if item.rstrip().endswith((",", ";", "-", "\u2014")):
        return True
    last = item.rstrip().rsplit(" ", 1)[-1].lower()
    if last in _JOINING_WORDS:
        return True
    return not head.isupper()


#: Words an item that wraps onto the next line may end with (the sentence obviously goes on).
_JOINING_WORDS = frozenset(
    "a an the and or of with in on at to by for from while as its their his her".split()
)


def split_items(text: str) -> list[str]:
    """Raw list items of a response, in order: numbered or bulleted lines, wrapped lines joined.

    Unnumbered lines before the first item (a preamble), after a blank line, or starting a new
    sentence after an item (a closing remark: :func:`_continues`) are not items. A response
    with no list markers at all is read one item per line, less lines ending in a colon (a
    preamble: "Here are three new prompts:").
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    has_markers = any(_NUMBERED.match(line) or _BULLET.match(line) for line in lines)
    items: list[str] = []
    open_item = False
    for line in lines:
        if not line.strip():
            open_item = False
            continue
        m = _NUMBERED.match(line) or _BULLET.match(line)
        if m:
            items.append(m.group(m.lastindex or 1))
            open_item = True
        elif not has_markers:
            if not line.rstrip().endswith(":"):
                items.append(line)
        elif open_item and _continues(items[-1], line):
            items[-1] = f"{items[-1]} {line.strip()}"
        else:
            open_item = False  # a remark ends the item; later unnumbered lines are not in it
    return items


def parse_response(
    text: str,
    *,
    word_limit: int,
    examples: tuple[str, ...] | list[str] = (),
    truncated: bool = False,
    min_words: int = MIN_WORDS,
) -> ParseResult:
    """Items of one response that are usable prompts, and the count of dropped items by reason.

    ``truncated`` says the response was cut at the token limit: its last item is incomplete.
    """
    result = ParseResult()
    raw = split_items(text)
    result.candidates = len(raw)
    if truncated and raw:
        raw = raw[:-1]
        result.dropped["truncated"] += 1
    seen = {_normalise_key(e) for e in examples}
    example_keys = set(seen)
    for item in raw:
        cleaned = clean_item(item)
        n_words = len(cleaned.split())
        key = _normalise_key(cleaned)
        if not key:
            result.dropped["empty"] += 1
        elif n_words < min_words:
            result.dropped["too_short"] += 1
        elif n_words > word_limit:
            result.dropped["too_long"] += 1
        elif key in example_keys:
            result.dropped["copies_example"] += 1
        elif key in seen:
            result.dropped["repeat_in_response"] += 1
        else:
            seen.add(key)
            result.items.append(cleaned)
    return result
