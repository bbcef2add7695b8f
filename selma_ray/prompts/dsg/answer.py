"""The DSG answer format: writing a scene graph as numbered lines, and reading one back.

One answer holds the three outputs of the DSG pipeline (Cho et al., ICLR 2024) for one prompt,
each a section of ``id | value`` lines as in DSG's own prompts::

    Tuples:
    1 | entity - whole (rubix cube)
    2 | attribute - color (rubix cube, purple)
    Dependencies:
    1 | 0
    2 | 1
    Questions:
    1 | Is there a rubix cube?
    2 | Is the rubix cube purple?

:func:`parse_answer` is lenient about chatter before and after, markdown bullets and bold
headers, ``N.`` instead of ``N |`` (what a completion engine's ``1.`` prefix gives), and a
missing ``Tuples:`` header (a completion prompt ends with it); it stops at a second item
(``Text:`` or a repeated header). Anything else wrong drops the whole answer under one reason
of :data:`DSG_DROP_REASONS`: a scene graph with a wrong id, parent or question count would
score images wrongly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from selma_ray.prompts.engines.base import Question

SECTIONS = ("tuples", "dependencies", "questions")
#: The broad tuple categories of DSG (the ``category_broad`` column of DSG-1k).
BROAD_CATEGORIES = ("entity", "attribute", "relation", "global", "other")

#: Why an answer (or its request) gave no questions. Stable names: they appear in stats files.
DSG_DROP_REASONS = (
    "request_too_long",  # does not fit the model's context even with one example
    "rejected_by_engine",  # the engine refused the request
    "empty",  # the engine answered nothing
    "truncated",  # cut at the token limit before the answer was complete
    "no_tuples",
    "no_dependencies",
    "no_questions",
    "bad_id",  # an id that is not a positive integer, or one given twice in a section
    "numbering_gap",  # a section's ids are not 1, 2, 3 ... in order
    "bad_tuple",  # not "<entity|attribute|relation|global|other> - <detail> (<args>)"
    "dependency_count_mismatch",  # dependency ids are not exactly the tuple ids
    "bad_dependency",  # a parent that is not an integer or not a tuple id
    "dependency_cycle",  # a tuple that is its own ancestor (itself included)
    "question_count_mismatch",  # question ids are not exactly the tuple ids
    "bad_question",  # an empty question
)

_HEADER = re.compile(
    r"^[\s#*_]*(tuples?|dependenc(?:y|ies)|questions?)[\s*_]*:?[\s*_]*$", re.IGNORECASE
)
_TEXT = re.compile(r"^[\s*_]*(?:text|prompt|input)[\s*_]*:", re.IGNORECASE)
_BULLET = re.compile(r"^\s*[-*\u2022]\s+")
_PIPE_LINE = re.compile(r"^\s*([^|\s]+)\s*\|\s*(.*)$")
_DOT_LINE = re.compile(r"^\s*(\d+)\.\s*(.*)$")
#: "<category> - <detail> (<args>)": no parenthesis or "|" in the detail or the arguments (none of
#: DSG-1k's 8,182 tuples has one), so a line where the model ran two tuples together is dropped
#: rather than split at a guess.
_TUPLE = re.compile(r"^([A-Za-z]+)\s+-\s+([^()|]+?)\s*\(([^()|]+)\)$")
_POSITIVE_INT = re.compile(r"^[1-9]\d*$")


def format_tuples(questions: list[Question]) -> str:
    return "\n".join(f"{q.proposition_id} | {q.tuple}" for q in questions)


def format_dependencies(questions: list[Question]) -> str:
    return "\n".join(
        f"{q.proposition_id} | {','.join(map(str, q.dependency)) or '0'}" for q in questions
    )


def format_questions(questions: list[Question]) -> str:
    return "\n".join(f"{q.proposition_id} | {q.question}" for q in questions)


def format_answer(questions: list[Question]) -> str:
    """A scene graph as the answer a request asks for (the format of its examples)."""
    return (
        f"Tuples:\n{format_tuples(questions)}\n"
        f"Dependencies:\n{format_dependencies(questions)}\n"
        f"Questions:\n{format_questions(questions)}"
    )


@dataclass(frozen=True)
class ParsedAnswer:
    """An answer's questions, or (``questions`` None) the reason it was dropped."""

    questions: list[Question] | None
    dropped: str | None = None


def _section_name(header: str) -> str:
    word = header.lower()
    if word.startswith("tuple"):
        return "tuples"
    return "dependencies" if word.startswith("dependenc") else "questions"


def split_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """The ``(id, value)`` lines of each section found, in order (ids as written)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: str | None = None
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        header = _HEADER.match(line)
        if header:
            name = _section_name(header.group(1))
            if name in sections:  # the model went on with another item
                break
            sections[name], current = [], name
            continue
        if _TEXT.match(line):
            if sections:  # the model went on with another item
                break
            continue
        line = _BULLET.sub("", line)
        entry = _PIPE_LINE.match(line) or _DOT_LINE.match(line)
        if entry is None:
            continue  # chatter
        if current is None:  # numbered lines before any header: the prompt ended in "Tuples:"
            sections["tuples"], current = [], "tuples"
        body = " ".join(entry.group(2).replace("**", "").split())
        sections[current].append((entry.group(1).strip("*"), body))
    return sections


def _check_ids(lines: list[tuple[str, str]]) -> str | None:
    ids = [raw for raw, _ in lines]
    if any(not _POSITIVE_INT.match(raw) for raw in ids) or len(set(ids)) != len(ids):
        return "bad_id"
    if [int(raw) for raw in ids] != list(range(1, len(ids) + 1)):
        return "numbering_gap"
    return None


def _parents(value: str, ids: set[int]) -> list[int] | None:
    parents: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit():
            return None
        parent = int(part)
        if parent == 0 or parent in parents:
            continue
        if parent not in ids:
            return None
        parents.append(parent)
    return parents


def _has_cycle(parents: dict[int, list[int]]) -> bool:
    state: dict[int, int] = {}  # 1: on the current path, 2: done

    def visit(node: int) -> bool:
        state[node] = 1
        for p in parents[node]:
            if state.get(p) == 1 or (p not in state and visit(p)):
                return True
        state[node] = 2
        return False

    return any(node not in state and visit(node) for node in parents)


def _parse(text: str) -> ParsedAnswer:
    if not text.strip():
        return ParsedAnswer(None, "empty")
    sections = split_sections(text)
    tuples = sections.get("tuples", [])
    if not tuples:
        return ParsedAnswer(None, "no_tuples")
    for name, reason in (("dependencies", "no_dependencies"), ("questions", "no_questions")):
        if not sections.get(name):
            return ParsedAnswer(None, reason)
    for name in SECTIONS:
        bad = _check_ids(sections[name])
        if bad:
            return ParsedAnswer(None, bad)
    n = len(tuples)
    parsed_tuples = []
    for _, body in tuples:
        m = _TUPLE.match(body)
        if m is None or m.group(1).lower() not in BROAD_CATEGORIES:
            return ParsedAnswer(None, "bad_tuple")
        parsed_tuples.append((m.group(1).lower(), m.group(2), m.group(3).strip()))
    if len(sections["dependencies"]) != n:
        return ParsedAnswer(None, "dependency_count_mismatch")
    ids = set(range(1, n + 1))
    parents: dict[int, list[int]] = {}
    for pid, (_, value) in enumerate(sections["dependencies"], start=1):
        found = _parents(value, ids)
        if found is None:
            return ParsedAnswer(None, "bad_dependency")
        parents[pid] = found
    if _has_cycle(parents):
        return ParsedAnswer(None, "dependency_cycle")
    if len(sections["questions"]) != n:
        return ParsedAnswer(None, "question_count_mismatch")
    if any(not body for _, body in sections["questions"]):
        return ParsedAnswer(None, "bad_question")
    questions = [
        Question(
            proposition_id=pid,
            question=sections["questions"][pid - 1][1],
            category_broad=broad,
            category_detailed=detailed,
            tuple=f"{broad} - {detailed} ({args})",
            dependency=parents[pid],
        )
        for pid, (broad, detailed, args) in enumerate(parsed_tuples, start=1)
    ]
    return ParsedAnswer(questions)


def parse_answer(text: str, *, truncated: bool = False) -> ParsedAnswer:
    """The questions of one answer, or why there are none. ``truncated``: the engine stopped
    at the token limit; an answer that is incomplete then counts as ``truncated``."""
    parsed = _parse(text)
    if parsed.questions is None and truncated and parsed.dropped != "empty":
        return ParsedAnswer(None, "truncated")
    return parsed
