"""The one interface every prompt engine implements: requests in, texts out.

Also what an engine that can count tokens offers the stage (:class:`TokenBudget`), and the
model's context length as vLLM derives it from ``config.json`` (:func:`model_context_length`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class GenerationRequest:
    """One few-shot request: show numbered examples of a skill, ask for ``n_items`` more.

    ``messages`` is the chat form (for chat models / endpoints), ``prompt`` the plain-text
    form (for completion endpoints and models without a chat template). Both say the same.
    """

    skill: str
    messages: list[dict[str, str]]
    prompt: str
    n_items: int
    start_index: int
    seed: int
    examples: tuple[str, ...] = ()
    word_limit: int = 30
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024


@dataclass(frozen=True)
class Completion:
    """One response. ``truncated`` is True when the engine stopped at the token limit.

    ``error``: the engine refused the request (a reason name, e.g. ``rejected_by_engine``;
    ``text`` is then empty). ``prompt_tokens``: the prompt's length as the engine counted it,
    when it says.
    """

    text: str
    truncated: bool = False
    error: str | None = None
    prompt_tokens: int | None = None


def as_completion(value: str | Completion) -> Completion:
    return value if isinstance(value, Completion) else Completion(str(value))


@dataclass
class Question:
    """A DSG-style atomic question about a prompt (same fields as the DSG-1k annotations)."""

    proposition_id: int
    question: str
    category_broad: str  # entity | attribute | relation | global | other
    category_detailed: str  # whole, color, count, spatial, action, ...
    tuple: str  # e.g. "attribute - color (cup, red)"
    dependency: list[int] = field(default_factory=list)  # parent proposition ids; [] = root

    def to_dict(self) -> dict:
        return {
            "proposition_id": self.proposition_id,
            "question": self.question,
            "category_broad": self.category_broad,
            "category_detailed": self.category_detailed,
            "tuple": self.tuple,
            "dependency": list(self.dependency),
        }


@dataclass(frozen=True)
class TokenBudget:
    """What an engine that counts tokens tells the stage: the tokens a sequence may hold
    (prompt + response) and a request's prompt tokens, counted with the model's own tokenizer
    and chat template exactly as the engine will feed the request.

    Engines that can count (``vllm``, ``transformers``) have a ``token_budget()`` method
    returning one; the stage fits every request into it before sending it.
    """

    max_model_len: int
    count: Callable[[GenerationRequest], int]


def count_prompt_tokens(
    tokenizer: Any, request: GenerationRequest, *, plain_special_tokens: bool
) -> int:
    """Tokens of the request as fed to the model: its chat messages through the chat template
    when the tokenizer has one (no special tokens added on top, as vLLM's ``chat`` and
    transformers' ``apply_chat_template`` do), else its plain prompt, with the tokenizer's
    special tokens when ``plain_special_tokens`` (vLLM's ``generate``) or without them."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            request.messages, add_generation_prompt=True, tokenize=True
        )
        if hasattr(ids, "keys"):  # a BatchEncoding (transformers 5)
            ids = ids["input_ids"]
        return len(ids)
    return len(tokenizer(request.prompt, add_special_tokens=plain_special_tokens)["input_ids"])


#: Config keys that bound a model's context, as vLLM reads them (the smallest wins).
CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
#: RoPE types whose ``max_position_embeddings`` already includes the scaling.
_ROPE_PRESCALED = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")


def model_context_length(path: str, tokenizer: Any = None) -> tuple[int | None, str]:
    """(tokens, what says so) the model at ``path`` supports, derived as vLLM derives its
    default ``max_model_len``: the smallest of :data:`CONTEXT_KEYS` in the (text) config
    (``model_max_length`` when set), times a RoPE scaling factor, capped by the tokenizer's
    ``model_max_length`` (when ``tokenizer`` is given and sets one). ``(None, ...)`` when
    nothing names a limit."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    found = {k: getattr(text, k) for k in CONTEXT_KEYS if getattr(text, k, None) is not None}
    if getattr(text, "model_max_length", None):
        found = {"model_max_length": text.model_max_length}
    length: float | None = None
    source = "no context length in its config.json"
    if found:
        key = min(found, key=lambda k: found[k])
        length, source = float(found[key]), f"{key}={found[key]} in its config.json"
        length, source = _rope_scaled(config, text, length, source)
    cap = getattr(tokenizer, "model_max_length", None)
    if isinstance(cap, (int, float)) and cap < 10**9 and (length is None or cap < length):
        length, source = float(cap), f"model_max_length={int(cap)} in its tokenizer_config.json"
    return (None if length is None else int(length)), source


def _rope_scaled(config: Any, text: Any, length: float, source: str) -> tuple[float, str]:
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None)
    if not isinstance(rope, dict) or "gemma3" in str(getattr(config, "model_type", "")):
        return length, source
    nested = bool(rope) and all(isinstance(v, dict) for v in rope.values())
    factor = 1.0
    for params in rope.values() if nested else [rope]:
        kind = params.get("rope_type", params.get("type"))
        if kind == "longrope" and getattr(text, "original_max_position_embeddings", None):
            original = text.original_max_position_embeddings
            return float(original), f"original_max_position_embeddings={original}"
        if kind not in _ROPE_PRESCALED:
            factor = params.get("factor") or factor
    if factor != 1.0:
        return length * factor, f"{source} x RoPE factor {factor}"
    return length, source


@runtime_checkable
class PromptEngine(Protocol):
    """Turns requests into raw response texts, one per request, in order.

    ``generate`` returns plain strings or :class:`Completion` objects (which also say whether
    the response was cut at the token limit). A completion-style engine that sends
    ``request.prompt`` must prefix its output with ``f"{request.start_index}."``, the number the
    prompt ends with.
    """

    name: str

    def generate(self, requests: list[GenerationRequest]) -> list[str | Completion]: ...

    def questions_for(self, prompt: str) -> list[Question] | None:
        """DSG questions for a prompt this engine wrote, when it knows them (else None)."""
        ...

    def close(self) -> None: ...
