"""Stage-5 benchmark data: DSG-1k, TIFA v1.0 and held-out skill prompts as typed items.

Three loaders, one shape. Each returns a :class:`Benchmark`: the items (a prompt and the
questions a VQA model answers about an image generated from it) and a :class:`LoadReport` that
says what the loader did with anything it had to clean or skip, so a caller can print it.

* :func:`load_dsg1k` reads the vendored DSG-1k annotations (Cho et al., ICLR 2024) through
  ``importlib.resources``. Its ``dependency`` cells are cleaned, never fatal: integer parts are
  kept, other text (``5, right``), self-references and parents the item does not have are
  dropped, and every such cell is listed in the report.
* :func:`load_tifa` reads TIFA v1.0's ``tifa_v1.0_question_answers.json`` format: a JSON list
  of multiple-choice questions, several per caption, grouped by the caption ``id``.
* :func:`load_skill_prompts` reads ``<run_dir>/prompts/<skill>.jsonl`` rows with the questions
  the scene-graph engine wrote; rows without questions are skipped and counted.

Dependencies are lists of parent ``proposition_id`` s; ``0`` in the source means "no parent" and
is not kept, so a root question has ``dependency == []``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Generic, TypeVar

import fsspec

from selma_ray import layout
from selma_ray.storage import RunDir

#: Where the vendored DSG-1k annotations live inside the package.
DSG1K_RESOURCE = ("data", "dsg1k", "dsg-1k-anns.csv")

#: DSG-1k dataset categories, in the order of the DSG authors' published table.
DSG1K_CATEGORIES = (
    "tifa",
    "paragraph",
    "relation",
    "count",
    "real_user",
    "pose",
    "defying",
    "text",
)

#: ``item_id`` prefix -> dataset category (DSG-1k's 10 source datasets, 8 categories).
DSG1K_PREFIXES = (
    ("tifa160", "tifa"),
    ("stanford", "paragraph"),
    ("localized", "paragraph"),
    ("countbench", "count"),
    ("vrd", "relation"),
    ("diffusiondb", "real_user"),
    ("midjourney", "real_user"),
    ("posescript", "pose"),
    ("whoops", "defying"),
    ("drawtext", "text"),
)

_DSG1K_REQUIRED = ("item_id", "text", "proposition_id", "dependency", "question_natural_language")
_TIFA_REQUIRED = ("id", "caption", "question", "choices", "answer", "element", "element_type")
_INT = re.compile(r"\s*\d+\s*")


def dataset_category(item_id: str) -> str:
    """DSG-1k dataset category of an item, from its ``item_id`` prefix (``vrd_3`` -> relation)."""
    for prefix, category in DSG1K_PREFIXES:
        if item_id.startswith(prefix):
            return category
    known = ", ".join(prefix for prefix, _ in DSG1K_PREFIXES)
    msg = f"item_id {item_id!r} has no known DSG-1k prefix ({known})"
    raise ValueError(msg)


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class Question:
    """One DSG question about a prompt (the DSG-1k annotation fields)."""

    proposition_id: int
    question: str
    category_broad: str = ""  # entity | attribute | relation | global | other
    category_detailed: str = ""  # whole, color, spatial, action, ...
    tuple: str = ""  # e.g. "attribute - color (cup, red)"
    dependency: list[int] = field(default_factory=list)  # parent proposition ids; [] = root
    dependency_raw: str | None = None  # the source cell, when the source was text


@dataclass(frozen=True)
class BenchmarkItem:
    """A prompt of a DSG-style benchmark and the questions asked about its image."""

    item_id: str
    text: str
    category: str  # dataset category (DSG-1k) or skill name (our prompts)
    questions: list[Question]


@dataclass(frozen=True)
class TifaQuestion:
    """One TIFA v1.0 multiple-choice question; ``question_id`` is its 1-based caption position."""

    question_id: int
    question: str
    choices: list[str]
    answer: str
    element: str
    element_type: str
    question_type: str | None = None


@dataclass(frozen=True)
class TifaItem:
    """A TIFA caption and its questions; ``category`` is the id's source prefix (``coco``)."""

    item_id: str
    text: str
    category: str
    questions: list[TifaQuestion]


ItemT = TypeVar("ItemT", BenchmarkItem, TifaItem)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class DependencyFix:
    """A ``dependency`` cell the loader changed: the raw cell, what was kept, what was dropped."""

    item_id: str
    proposition_id: int
    raw: str
    kept: list[int]
    dropped: list[str]
    reasons: list[str]  # "non-integer text", "self-reference", "unknown parent"

    def describe(self) -> str:
        kept = ",".join(map(str, self.kept))
        return (
            f"{self.item_id} q{self.proposition_id}: dependency {self.raw!r} -> kept [{kept}], "
            f"dropped {self.dropped} ({'; '.join(self.reasons)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "proposition_id": self.proposition_id,
            "raw": self.raw,
            "kept": list(self.kept),
            "dropped": list(self.dropped),
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Skipped:
    """Something the loader left out: where it was and why."""

    where: str
    reason: str


@dataclass
class LoadReport:
    """What a loader cleaned, skipped or noticed; ``summary()`` is meant for the terminal."""

    source: str
    n_items: int = 0
    n_questions: int = 0
    dependency_fixes: list[DependencyFix] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skipped_counts(self) -> dict[str, int]:
        """How many things were skipped, per reason."""
        return dict(Counter(s.reason for s in self.skipped))

    def fix_counts(self) -> dict[str, int]:
        """How many dependency cells were changed, per reason."""
        return dict(Counter(r for fix in self.dependency_fixes for r in fix.reasons))

    def summary(self, limit: int = 20) -> str:
        lines = [f"{self.source}: {self.n_items} item(s), {self.n_questions} question(s)"]
        if self.dependency_fixes:
            counts = ", ".join(f"{n} {r}" for r, n in self.fix_counts().items())
            lines.append(f"  {len(self.dependency_fixes)} dependency cell(s) cleaned ({counts}):")
            lines += [f"    {fix.describe()}" for fix in self.dependency_fixes[:limit]]
            if len(self.dependency_fixes) > limit:
                lines.append(f"    ... {len(self.dependency_fixes) - limit} more")
        if self.skipped:
            counts = ", ".join(f"{n} {r}" for r, n in self.skipped_counts().items())
            lines.append(f"  skipped: {counts}")
            lines += [f"    {s.where}: {s.reason}" for s in self.skipped[:limit]]
            if len(self.skipped) > limit:
                lines.append(f"    ... {len(self.skipped) - limit} more")
        lines += [f"  note: {note}" for note in self.notes[:limit]]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "n_items": self.n_items,
            "n_questions": self.n_questions,
            "dependency_fixes": [fix.to_dict() for fix in self.dependency_fixes],
            "skipped": [{"where": s.where, "reason": s.reason} for s in self.skipped],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Benchmark(Generic[ItemT]):
    """Items of one benchmark, in source order, and the report of how they were loaded."""

    name: str
    items: list[ItemT]
    report: LoadReport

    def by_id(self) -> dict[str, ItemT]:
        return {item.item_id: item for item in self.items}

    def categories(self) -> list[str]:
        """Categories in first-appearance order (DSG-1k: the published table's order)."""
        seen = dict.fromkeys(item.category for item in self.items)
        if self.name == "dsg1k":
            return [c for c in DSG1K_CATEGORIES if c in seen] + [
                c for c in seen if c not in DSG1K_CATEGORIES
            ]
        return list(seen)


# --------------------------------------------------------------------------- dependencies


def _split_dependency(raw: object) -> tuple[list[int], list[str]]:
    """Integer parents and the non-integer leftovers of one dependency cell or value."""
    if raw is None:
        return [], []
    if isinstance(raw, bool):
        return [], [str(raw)]
    if isinstance(raw, int):
        return [raw], []
    if isinstance(raw, (list, tuple)):
        ints: list[int] = []
        rest: list[str] = []
        for part in raw:
            i, r = _split_dependency(part)
            ints += i
            rest += r
        return ints, rest
    ints, rest = [], []
    for part in str(raw).split(","):
        if _INT.fullmatch(part):
            ints.append(int(part))
        elif part.strip() or "," in str(raw):
            rest.append(part.strip())
    return ints, rest


def clean_dependency(
    item_id: str, proposition_id: int, raw: object, known_ids: Iterable[int]
) -> tuple[list[int], DependencyFix | None]:
    """Parents of a question from a raw dependency value, and the fix when anything was dropped.

    Keeps the integer parts in order (``0`` = no parent, duplicates once); drops non-integer
    text, the question itself and ids the item does not have.
    """
    known = set(known_ids)
    ints, rest = _split_dependency(raw)
    kept: list[int] = []
    dropped = list(rest)
    reasons = ["non-integer text"] if rest else []
    for parent in ints:
        if parent == 0 or parent in kept:
            continue
        if parent == proposition_id:
            dropped.append(str(parent))
            reasons.append("self-reference")
        elif parent not in known:
            dropped.append(str(parent))
            reasons.append("unknown parent")
        else:
            kept.append(parent)
    if not dropped:
        return kept, None
    raw_text = raw if isinstance(raw, str) else json.dumps(raw)
    fix = DependencyFix(
        item_id, proposition_id, raw_text, kept, dropped, list(dict.fromkeys(reasons))
    )
    return kept, fix


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.fullmatch(value):
        return int(value)
    return None


# --------------------------------------------------------------------------- DSG-1k


def _read_text(path: str) -> str:
    with fsspec.open(path, "r", encoding="utf-8-sig") as f:
        return f.read()


def load_dsg1k(path: str | None = None) -> Benchmark[BenchmarkItem]:
    """DSG-1k (1,060 prompts, 8,182 questions) from the packaged CSV, or from ``path``.

    Never fails on a dirty cell: rows it cannot use (no item id, a non-integer
    ``proposition_id``, a repeated question) are skipped and listed in the report, and
    dependency cells are cleaned as :func:`clean_dependency` says.
    """
    if path is None:
        resource = resources.files("selma_ray").joinpath(*DSG1K_RESOURCE)
        text = resource.read_text(encoding="utf-8-sig")
        source = "dsg1k (selma_ray/" + "/".join(DSG1K_RESOURCE) + ")"
    else:
        text = _read_text(path)
        source = f"dsg1k ({path})"
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in _DSG1K_REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        msg = (
            f"{source}: column(s) {missing} missing; a DSG-1k annotation CSV needs "
            f"{list(_DSG1K_REQUIRED)} (found {reader.fieldnames}). Pass the "
            "dsg-1k-anns.csv file of the DSG release."
        )
        raise ValueError(msg)
    report = LoadReport(source)
    rows: dict[str, list[dict[str, str]]] = {}
    texts: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        item_id = (row.get("item_id") or "").strip()
        if not item_id:
            report.skipped.append(Skipped(f"line {line}", "empty item_id"))
            continue
        rows.setdefault(item_id, []).append(row)
        texts.setdefault(item_id, row.get("text") or "")
    items: list[BenchmarkItem] = []
    for item_id, item_rows in rows.items():
        try:
            category = dataset_category(item_id)
        except ValueError:
            category = "unknown"
            report.notes.append(f"{item_id}: unknown item_id prefix, category 'unknown'")
        parsed: dict[int, dict[str, str]] = {}
        for row in item_rows:
            pid = _as_int(row.get("proposition_id"))
            if pid is None or pid <= 0:
                report.skipped.append(
                    Skipped(
                        f"{item_id} proposition_id {row.get('proposition_id')!r}",
                        "proposition_id is not a positive integer",
                    )
                )
            elif pid in parsed:
                report.skipped.append(Skipped(f"{item_id} q{pid}", "repeated proposition_id"))
            else:
                parsed[pid] = row
            if (row.get("text") or "") != texts[item_id]:
                report.notes.append(f"{item_id}: rows disagree on the prompt text; kept the first")
        questions = []
        for pid, row in parsed.items():
            raw = row.get("dependency") or ""
            parents, fix = clean_dependency(item_id, pid, raw, parsed)
            if fix is not None:
                report.dependency_fixes.append(fix)
            questions.append(
                Question(
                    proposition_id=pid,
                    question=row.get("question_natural_language") or "",
                    category_broad=row.get("category_broad") or "",
                    category_detailed=row.get("category_detailed") or "",
                    tuple=row.get("tuple") or "",
                    dependency=parents,
                    dependency_raw=raw,
                )
            )
        if questions:
            items.append(BenchmarkItem(item_id, texts[item_id], category, questions))
    report.notes = list(dict.fromkeys(report.notes))
    report.n_items = len(items)
    report.n_questions = sum(len(item.questions) for item in items)
    return Benchmark("dsg1k", items, report)


# --------------------------------------------------------------------------- TIFA v1.0


def _tifa_category(item_id: str) -> str:
    head, _, tail = item_id.rpartition("_")
    return head if head and tail.isdigit() else item_id


def load_tifa(path: str) -> Benchmark[TifaItem]:
    """TIFA v1.0 question-answer pairs (``tifa_v1.0_question_answers.json`` format).

    The file is a JSON list of questions with at least ``id`` (the caption id, shared by all
    questions of a caption), ``caption``, ``question``, ``choices``, ``answer``, ``element`` and
    ``element_type``; ``question_type`` is kept when present. Questions are numbered 1.. in file
    order within their caption. An answer that is not among its choices is kept and noted.
    """
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        msg = f"TIFA file {path!r} is not JSON ({e}); pass tifa_v1.0_question_answers.json"
        raise ValueError(msg) from e
    if not isinstance(data, list):
        msg = (
            f"TIFA file {path!r} holds a JSON {type(data).__name__}, not a list of questions; "
            "pass tifa_v1.0_question_answers.json (not the text-inputs file)"
        )
        raise ValueError(msg)
    report = LoadReport(f"tifa ({path})")
    grouped: dict[str, list[TifaQuestion]] = {}
    captions: dict[str, str] = {}
    for index, entry in enumerate(data):
        missing = (
            list(_TIFA_REQUIRED)
            if not isinstance(entry, Mapping)
            else [k for k in _TIFA_REQUIRED if k not in entry]
        )
        if missing:
            msg = (
                f"TIFA file {path!r}, entry {index}: field(s) {missing} missing; every entry "
                f"needs {list(_TIFA_REQUIRED)}"
            )
            raise ValueError(msg)
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            msg = f"TIFA file {path!r}, entry {index}: 'choices' must be a non-empty list"
            raise ValueError(msg)
        item_id = str(entry["id"])
        caption = str(entry["caption"])
        if captions.setdefault(item_id, caption) != caption:
            report.notes.append(f"{item_id}: entries disagree on the caption; kept the first")
        questions = grouped.setdefault(item_id, [])
        answer = str(entry["answer"])
        choices = [str(c) for c in choices]
        if answer not in choices:
            report.notes.append(
                f"{item_id} q{len(questions) + 1}: answer {answer!r} is not one of {choices}"
            )
        question_type = entry.get("question_type")
        questions.append(
            TifaQuestion(
                question_id=len(questions) + 1,
                question=str(entry["question"]),
                choices=choices,
                answer=answer,
                element=str(entry["element"]),
                element_type=str(entry["element_type"]),
                question_type=None if question_type is None else str(question_type),
            )
        )
    items = [
        TifaItem(item_id, captions[item_id], _tifa_category(item_id), questions)
        for item_id, questions in grouped.items()
    ]
    if len(items) == len(data) > len(set(captions.values())):
        report.notes.append(
            "every question has its own id while captions repeat: in TIFA v1.0 'id' is the "
            "caption id shared by its questions; check the file if items look one-question"
        )
    report.notes = list(dict.fromkeys(report.notes))
    report.n_items = len(items)
    report.n_questions = sum(len(item.questions) for item in items)
    return Benchmark("tifa", items, report)


# --------------------------------------------------------------------------- skill prompts


def _question_from_dict(
    item_id: str, q: object, known_ids: Iterable[int], report: LoadReport
) -> Question | str:
    """A question from an engine-written dict, or why it cannot be used."""
    if not isinstance(q, Mapping):
        return f"a question is a {type(q).__name__}, not an object"
    pid = _as_int(q.get("proposition_id"))
    if pid is None or pid <= 0:
        return f"proposition_id {q.get('proposition_id')!r} is not a positive integer"
    text = q.get("question", q.get("question_natural_language"))
    if not isinstance(text, str) or not text.strip():
        return f"question {pid} has no 'question' text"
    raw = q.get("dependency")
    parents, fix = clean_dependency(item_id, pid, raw, known_ids)
    if fix is not None:
        report.dependency_fixes.append(fix)
    return Question(
        proposition_id=pid,
        question=text,
        category_broad=str(q.get("category_broad") or ""),
        category_detailed=str(q.get("category_detailed") or ""),
        tuple=str(q.get("tuple") or ""),
        dependency=parents,
        dependency_raw=raw if isinstance(raw, str) else None,
    )


def load_skill_prompts(run_dir: str | RunDir, skills: Sequence[str]) -> Benchmark[BenchmarkItem]:
    """Our skill prompts with the scene-graph engine's DSG questions, one item per prompt row.

    Reads ``<run_dir>/prompts/<skill>.jsonl`` for each skill (rows: ``id``, ``prompt``,
    ``questions``). A row whose ``questions`` is null, missing or empty is skipped and counted
    in the report, as is a row whose questions cannot be read. An item's category is its skill.
    """
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if not skills:
        msg = "load_skill_prompts: no skills given; pass the skill names to evaluate"
        raise ValueError(msg)
    report = LoadReport(f"skill prompts ({rd.url(*layout.prompts_dir())})")
    items: list[BenchmarkItem] = []
    seen: set[str] = set()
    for skill in skills:
        if not rd.exists(*layout.prompts_file(skill)):
            msg = (
                f"skill prompts: {rd.url(*layout.prompts_file(skill))} does not exist; run the "
                f"prompts stage for skill {skill!r} first, or check the skill name and run dir"
            )
            raise ValueError(msg)
        for n, row in enumerate(rd.read_jsonl(*layout.prompts_file(skill)), start=1):
            where = f"prompts/{skill}.jsonl line {n}"
            item_id = row.get("id")
            prompt = row.get("prompt")
            if not isinstance(item_id, str) or not item_id or not isinstance(prompt, str):
                report.skipped.append(Skipped(where, "row has no string 'id' and 'prompt'"))
                continue
            if item_id in seen:
                report.skipped.append(Skipped(f"{where} ({item_id})", "repeated id"))
                continue
            raw_questions = row.get("questions")
            if not raw_questions:
                report.skipped.append(Skipped(f"{where} ({item_id})", "no questions"))
                continue
            if not isinstance(raw_questions, list):
                reason = f"'questions' is a {type(raw_questions).__name__}, not a list"
                report.skipped.append(Skipped(f"{where} ({item_id})", reason))
                continue
            known = [
                pid
                for q in raw_questions
                if isinstance(q, Mapping) and (pid := _as_int(q.get("proposition_id")))
            ]
            fixes_before = len(report.dependency_fixes)
            parsed = [_question_from_dict(item_id, q, known, report) for q in raw_questions]
            problems = [p for p in parsed if isinstance(p, str)]
            pids = [q.proposition_id for q in parsed if isinstance(q, Question)]
            if not problems and len(set(pids)) != len(pids):
                problems = ["repeated proposition_id"]
            if problems:
                del report.dependency_fixes[fixes_before:]
                report.skipped.append(Skipped(f"{where} ({item_id})", problems[0]))
                continue
            seen.add(item_id)
            questions = [q for q in parsed if isinstance(q, Question)]
            items.append(BenchmarkItem(item_id, prompt, skill, questions))
    report.n_items = len(items)
    report.n_questions = sum(len(item.questions) for item in items)
    return Benchmark("skills", items, report)


__all__ = [
    "DSG1K_CATEGORIES",
    "DSG1K_PREFIXES",
    "Benchmark",
    "BenchmarkItem",
    "DependencyFix",
    "LoadReport",
    "Question",
    "Skipped",
    "TifaItem",
    "TifaQuestion",
    "clean_dependency",
    "dataset_category",
    "load_dsg1k",
    "load_skill_prompts",
    "load_tifa",
]
