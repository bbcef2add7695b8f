"""The one interface every prompt engine implements: requests in, texts out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


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
    """One response. ``truncated`` is True when the engine stopped at the token limit."""

    text: str
    truncated: bool = False


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
