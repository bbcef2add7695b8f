"""Stage-5 scoring core: pure DSG, TIFA and CLIPScore arithmetic over items and answers.

Nothing here runs a model: the VQA and CLIP stages hand their answers / embeddings in.
Answers are given per item as ``{item_id: {question_id: answer_text}}``.

DSG (Cho et al., ICLR 2024). A question scores 1 when its answer is "yes" after
:func:`normalize_answer` (case, surrounding whitespace and punctuation ignored: ``"Yes."``
counts, ``"yes, it is"`` does not). A question whose parent scored 0 is zeroed; an item scores
the mean over all its questions (a question without an answer scores 0); a benchmark scores the
mean item score x 100, also per dataset category, and per question ``category_broad`` (the mean
question score after zeroing, x 100). Two things are rule choices, held in :class:`DSGRules`:

* ``zeroing``: ``"direct"`` looks only at the parents' own answers (the authors' script);
  ``"transitive"`` zeroes a question when any ancestor is zeroed, to a fixpoint, so the order of
  the questions and forward references do not matter.
* ``dirty_cells``: ``"ignore_item_dependencies"`` drops every dependency of an item that has a
  cell which is not a plain integer list (the authors' script); ``"keep_integers"`` uses the
  dependencies the loader kept from a dirty cell such as ``5, right``.

``REFERENCE_RULES`` (direct + ignore), the default, is what the DSG authors'
``t2i_eval_dsg1k.py`` computes: with it the released PaLI-17B answers for SD v2.1 reproduce
their published table exactly, so our numbers compare with published ones. ``TRANSITIVE_RULES``
(transitive + keep integers) is the stricter reading, offered as ``rules="transitive"``.

TIFA (Hu et al., ICCV 2023). The VQA answer is matched to one of the question's choices
(exact after normalisation; no match counts as wrong), a caption scores its accuracy, the
benchmark the mean caption score x 100; per ``element_type`` the question accuracy x 100.

CLIPScore (Hessel et al., 2021): ``w * max(cos(image, text), 0)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from selma_ray.evaluation.benchmarks import BenchmarkItem, Question, TifaItem

Zeroing = Literal["transitive", "direct"]
DirtyCells = Literal["keep_integers", "ignore_item_dependencies"]

_PUNCT = re.compile(r"[^\w\s]")
_STRICT_DEPENDENCY = re.compile(r"\s*\d+\s*(,\s*\d+\s*)*")


# --------------------------------------------------------------------------- answers


def normalize_answer(answer: object) -> str:
    """Lower-case text with punctuation removed and whitespace collapsed; None/NaN -> ''."""
    if answer is None or (isinstance(answer, float) and math.isnan(answer)):
        return ""
    return " ".join(_PUNCT.sub(" ", str(answer).lower()).split())


def is_yes(answer: object) -> bool:
    """Whether a VQA answer is "yes" (``"Yes."``, ``" yes "``; not ``"yes it is"``)."""
    return normalize_answer(answer) == "yes"


# --------------------------------------------------------------------------- DSG


@dataclass(frozen=True)
class DSGRules:
    """How DSG zeroes dependent questions and treats dirty dependency cells (module doc)."""

    zeroing: Zeroing = "direct"
    dirty_cells: DirtyCells = "ignore_item_dependencies"

    def __post_init__(self) -> None:
        for name, allowed in (("zeroing", Zeroing), ("dirty_cells", DirtyCells)):
            value = getattr(self, name)
            if value not in get_args(allowed):
                msg = f"DSGRules.{name}={value!r}; use one of {list(get_args(allowed))}"
                raise ValueError(msg)

    def describe(self) -> str:
        zeroing = {"transitive": "transitive parent zeroing", "direct": "direct-parent zeroing"}
        dirty = {
            "keep_integers": "dirty dependency cells keep their integer parts",
            "ignore_item_dependencies": "items with a dirty dependency cell lose all dependencies",
        }
        return f"{zeroing[self.zeroing]}; {dirty[self.dirty_cells]}"

    def to_dict(self) -> dict[str, str]:
        return {"zeroing": self.zeroing, "dirty_cells": self.dirty_cells}


#: The semantics of the DSG authors' ``t2i_eval_dsg1k.py`` (DSG repository, March 2024).
REFERENCE_RULES = DSGRules(zeroing="direct", dirty_cells="ignore_item_dependencies")
TRANSITIVE_RULES = DSGRules(zeroing="transitive", dirty_cells="keep_integers")
DEFAULT_RULES = REFERENCE_RULES
RULE_PRESETS: dict[str, DSGRules] = {"reference": REFERENCE_RULES, "transitive": TRANSITIVE_RULES}


def resolve_rules(rules: str | DSGRules) -> DSGRules:
    """A :class:`DSGRules` from itself or a preset name (``reference``, ``transitive``)."""
    if isinstance(rules, DSGRules):
        return rules
    try:
        return RULE_PRESETS[rules]
    except KeyError:
        msg = f"DSG rules {rules!r} unknown; use one of {list(RULE_PRESETS)} or a DSGRules"
        raise ValueError(msg) from None


def has_dirty_dependency(questions: Sequence[Question]) -> bool:
    """Whether any question's source dependency cell is not a plain comma list of integers."""
    return any(
        q.dependency_raw is not None and not _STRICT_DEPENDENCY.fullmatch(q.dependency_raw)
        for q in questions
    )


@dataclass(frozen=True)
class ItemScore:
    """One item's DSG score (0-1) and how it came about."""

    item_id: str
    category: str
    score: float
    answered: bool  # False: no answer for any of its questions (a missing item, scored 0)
    question_scores: dict[int, float]  # after zeroing
    raw_scores: dict[int, float]  # "yes" or not, before zeroing
    zeroed: tuple[int, ...]  # questions zeroed because of a parent
    unanswered: tuple[int, ...]  # questions without an answer (scored 0)


def score_dsg_item(
    item: BenchmarkItem,
    answers: Mapping[int, object] | None,
    rules: DSGRules = DEFAULT_RULES,
) -> ItemScore:
    """DSG score of one item from its answers ``{proposition_id: answer}`` (None: missing)."""
    if not item.questions:
        msg = f"item {item.item_id!r} has no questions and cannot be scored; drop it"
        raise ValueError(msg)
    answers = answers or {}
    raw = {q.proposition_id: float(is_yes(answers.get(q.proposition_id))) for q in item.questions}
    if rules.dirty_cells == "ignore_item_dependencies" and has_dirty_dependency(item.questions):
        parents: dict[int, list[int]] = {pid: [] for pid in raw}
    else:
        parents = {
            q.proposition_id: [p for p in q.dependency if p != q.proposition_id and p in raw]
            for q in item.questions
        }
    final = dict(raw)
    if rules.zeroing == "direct":
        for pid, ps in parents.items():
            if any(raw[p] == 0.0 for p in ps):
                final[pid] = 0.0
    else:
        changed = True
        while changed:  # monotone: scores only fall, so this ends; cycles are fine
            changed = False
            for pid, ps in parents.items():
                if final[pid] and any(final[p] == 0.0 for p in ps):
                    final[pid] = 0.0
                    changed = True
    unanswered = tuple(pid for pid in raw if pid not in answers)
    return ItemScore(
        item_id=item.item_id,
        category=item.category,
        score=sum(final.values()) / len(final),
        answered=len(unanswered) < len(raw),
        question_scores=final,
        raw_scores=raw,
        zeroed=tuple(pid for pid in raw if raw[pid] != final[pid]),
        unanswered=unanswered,
    )


@dataclass(frozen=True)
class DSGResult:
    """A DSG evaluation: overall and per-category scores on a 0-100 scale."""

    overall: float
    by_category: dict[str, float]  # mean item score per dataset category (or skill)
    by_broad_category: dict[str, float]  # mean question score per question category_broad
    n_items: int
    n_missing: int  # items without any answer (each scored 0)
    item_scores: list[ItemScore]

    @property
    def question_mean(self) -> float:
        """The mean over every question (after zeroing), not over items: the "Average" the
        SELMA paper's DSG evaluation prints (its ``DSG/evaluation.py``), where an item with
        more questions weighs more. ``overall`` is the DSG authors' per-item mean."""
        return _mean100([v for s in self.item_scores for v in s.question_scores.values()])


def _mean100(values: Sequence[float]) -> float:
    return 100.0 * sum(values) / len(values)


def score_dsg(
    items: Sequence[BenchmarkItem],
    answers: Mapping[str, Mapping[int, object]],
    rules: DSGRules = DEFAULT_RULES,
    *,
    category_order: Sequence[str] | None = None,
) -> DSGResult:
    """Score ``items`` from ``answers`` (``{item_id: {proposition_id: answer}}``).

    Every item counts: one absent from ``answers`` scores 0 and is counted in ``n_missing``.
    Categories are listed in ``category_order`` first, then in order of appearance.
    """
    if not items:
        msg = "score_dsg: no items to score; pass the benchmark items the answers are for"
        raise ValueError(msg)
    scores = [score_dsg_item(item, answers.get(item.item_id), rules) for item in items]
    order = list(dict.fromkeys([*(category_order or []), *(s.category for s in scores)]))
    by_category = {
        c: _mean100(vals) for c in order if (vals := [s.score for s in scores if s.category == c])
    }
    broad: dict[str, list[float]] = {}
    for item, s in zip(items, scores, strict=True):
        for q in item.questions:
            key = q.category_broad or "unknown"
            broad.setdefault(key, []).append(s.question_scores[q.proposition_id])
    return DSGResult(
        overall=_mean100([s.score for s in scores]),
        by_category=by_category,
        by_broad_category={k: _mean100(v) for k, v in broad.items()},
        n_items=len(scores),
        n_missing=sum(not s.answered for s in scores),
        item_scores=scores,
    )


# --------------------------------------------------------------------------- TIFA


def match_choice(answer: object, choices: Sequence[str]) -> str | None:
    """The choice a free-form VQA answer names (exact after normalisation), else None."""
    norm = normalize_answer(answer)
    if not norm:
        return None
    for choice in choices:
        if normalize_answer(choice) == norm:
            return choice
    return None


@dataclass(frozen=True)
class TifaItemScore:
    """One caption's TIFA accuracy (0-1)."""

    item_id: str
    category: str
    accuracy: float
    answered: bool
    correct: dict[int, bool]
    unmatched: tuple[int, ...]  # questions whose answer named none of the choices


@dataclass(frozen=True)
class TifaResult:
    """A TIFA evaluation on a 0-100 scale."""

    overall: float  # mean over captions of the caption accuracy
    by_element_type: dict[str, float]  # question accuracy per element_type
    by_category: dict[str, float]  # mean caption accuracy per source (coco, drawbench, ...)
    n_items: int
    n_missing: int
    n_unmatched: int
    item_scores: list[TifaItemScore]


def score_tifa(
    items: Sequence[TifaItem], answers: Mapping[str, Mapping[int, object]]
) -> TifaResult:
    """TIFA accuracy of ``items`` from ``answers`` (``{item_id: {question_id: answer}}``)."""
    if not items:
        msg = "score_tifa: no items to score; pass the TIFA items the answers are for"
        raise ValueError(msg)
    scores: list[TifaItemScore] = []
    by_type: dict[str, list[float]] = {}
    for item in items:
        given = answers.get(item.item_id) or {}
        correct: dict[int, bool] = {}
        unmatched = []
        for q in item.questions:
            answer = given.get(q.question_id)
            choice = match_choice(answer, q.choices)
            if choice is None and normalize_answer(answer):
                unmatched.append(q.question_id)
            ok = choice is not None and normalize_answer(choice) == normalize_answer(q.answer)
            correct[q.question_id] = ok
            by_type.setdefault(q.element_type, []).append(float(ok))
        scores.append(
            TifaItemScore(
                item_id=item.item_id,
                category=item.category,
                accuracy=sum(correct.values()) / len(correct) if correct else 0.0,
                answered=any(q.question_id in given for q in item.questions),
                correct=correct,
                unmatched=tuple(unmatched),
            )
        )
    categories = list(dict.fromkeys(s.category for s in scores))
    return TifaResult(
        overall=_mean100([s.accuracy for s in scores]),
        by_element_type={k: _mean100(v) for k, v in by_type.items()},
        by_category={
            c: _mean100([s.accuracy for s in scores if s.category == c]) for c in categories
        },
        n_items=len(scores),
        n_missing=sum(not s.answered for s in scores),
        n_unmatched=sum(len(s.unmatched) for s in scores),
        item_scores=scores,
    )


# --------------------------------------------------------------------------- CLIPScore


def _as_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in (1, 2) or arr.shape[-1] == 0:
        msg = f"clip_score: {name} must be a vector (D,) or a batch (N, D); got shape {arr.shape}"
        raise ValueError(msg)
    return arr


def clip_score(image_emb: Any, text_emb: Any, w: float = 2.5) -> float | np.ndarray:
    """CLIPScore ``w * max(cos(image_emb, text_emb), 0)``: a float for vectors, an (N,) array
    for row-paired batches. Embeddings need not be normalised; a zero vector is an error."""
    a = _as_array(image_emb, "image_emb")
    b = _as_array(text_emb, "text_emb")
    if a.shape != b.shape:
        msg = f"clip_score: image_emb {a.shape} and text_emb {b.shape} differ; pair them row by row"
        raise ValueError(msg)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    if np.any(norms == 0):
        msg = "clip_score: a zero embedding has no direction; check the encoder output"
        raise ValueError(msg)
    cos = np.sum(a * b, axis=-1) / norms
    score = w * np.maximum(cos, 0.0)
    return float(score) if a.ndim == 1 else score


__all__ = [
    "DEFAULT_RULES",
    "TRANSITIVE_RULES",
    "REFERENCE_RULES",
    "RULE_PRESETS",
    "DSGResult",
    "DSGRules",
    "ItemScore",
    "TifaItemScore",
    "TifaResult",
    "clip_score",
    "has_dirty_dependency",
    "is_yes",
    "match_choice",
    "normalize_answer",
    "resolve_rules",
    "score_dsg",
    "score_dsg_item",
    "score_tifa",
]
