"""Stage-5 re-scoring of a saved answers table (``selma-ray evaluate rescore``).

An answers table is a CSV or Parquet file (chosen by extension; any fsspec path) with one row
per answered question: ``item_id``, ``question_id`` (or ``proposition_id``), ``answer`` and,
when it holds several text-to-image models, ``t2i_model`` (or ``model``). Without a model
column everything is one model named ``default``. :func:`rescore_file` scores each model on the
benchmark and returns (and optionally writes) the report::

    {"benchmark": "dsg1k",
     "models": {"<name>": {"overall": 80.4939, "by_category": {"tifa": 88.1112, ...},
                           "n_items": 1060, "n_missing": 1}},
     "diagnostics": {...}}

Scores are on a 0-100 scale. Which items a model is scored on (``items``):

- ``category``: every benchmark item in the categories the model has answers for, as the DSG
  authors' script does; an item without any answer scores 0 and counts in ``n_missing``;
- ``answered``: the items the table answers for any model (so every model is scored on the
  same items, and one without an answer for one of them scores 0 there). This is what a run's
  ``eval/answers.parquet`` needs: stage 5 asks about ``eval.max_items`` DSG-1k items, not the
  whole benchmark, and its numbers are over those items;
- ``auto`` (the default): ``answered`` for a table with a ``benchmark`` column (the stage's
  ``eval/answers.parquet``, whose rows of other benchmarks are set aside, counted in
  ``other_benchmark_rows``), else ``category``.

Rows naming unknown items or questions, and repeated rows (the last one wins), are counted in
``diagnostics`` and are not fatal; so is what the benchmark loader did with dirty dependency
cells. :func:`format_table` renders a report for the terminal.
"""

from __future__ import annotations

import json
import math
import numbers
import posixpath
from collections.abc import Sequence
from typing import Any

import fsspec
import pandas as pd

from selma_ray.evaluation.benchmarks import Benchmark, BenchmarkItem, load_dsg1k
from selma_ray.evaluation.scoring import RULE_PRESETS, DSGRules, resolve_rules, score_dsg

#: Benchmarks :func:`rescore_file` knows, and their display names.
SUPPORTED_BENCHMARKS = {"dsg1k": "DSG-1k"}
QUESTION_ID_COLUMNS = ("question_id", "proposition_id")
#: Which items a model is scored on (module doc).
ITEM_SETS = ("auto", "category", "answered")
MODEL_COLUMNS = ("t2i_model", "model")
DEFAULT_MODEL = "default"
_EXPECTED = (
    "item_id, question_id (or proposition_id), answer, and optionally t2i_model (or model) "
    "naming the text-to-image model of each row"
)
_LIST_LIMIT = 20
_DIGITS = 4


def read_answers(path: str) -> pd.DataFrame:
    """An answers table from a ``.csv`` (``.csv.gz``) or ``.parquet`` file on any fsspec path."""
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        with fsspec.open(path, "rb") as f:
            return pd.read_parquet(f)
    if lower.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.xz")):
        with fsspec.open(path, "rb", compression="infer") as f:
            # keep every cell as text: an answer "None" or "NA" is not a missing value
            return pd.read_csv(f, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    msg = f"answers file {path!r}: unknown format; use a .csv (or .csv.gz) or .parquet file"
    raise ValueError(msg)


def _columns(df: pd.DataFrame, source: str) -> tuple[str, str | None]:
    cols = [str(c) for c in df.columns]
    missing = []
    if "item_id" not in cols:
        missing.append("item_id")
    qcol = next((c for c in QUESTION_ID_COLUMNS if c in cols), None)
    if qcol is None:
        missing.append("question_id (or proposition_id)")
    if "answer" not in cols:
        missing.append("answer")
    if missing or qcol is None:
        msg = (
            f"answers table {source}: missing column(s) {missing}. Expected columns: "
            f"{_EXPECTED}. Found: {cols}. Rename the columns to match."
        )
        raise ValueError(msg)
    return qcol, next((c for c in MODEL_COLUMNS if c in cols), None)


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return str(value)


def _question_id(value: object) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, numbers.Real):  # int, float, numpy scalars from Parquet
        return int(value) if float(value).is_integer() else None
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _rules_entry(rules: DSGRules) -> dict[str, str]:
    name = next((n for n, r in RULE_PRESETS.items() if r == rules), "custom")
    return {"name": name, **rules.to_dict(), "description": rules.describe()}


def rescore_answers(
    answers: pd.DataFrame,
    benchmark: Benchmark[BenchmarkItem],
    rules: str | DSGRules = "reference",
    *,
    source: str = "answers",
    items: str = "auto",
) -> dict[str, Any]:
    """The rescore report (module doc) of an answers DataFrame on a DSG-style benchmark."""
    rules = resolve_rules(rules)
    qcol, mcol = _columns(answers, source)
    if items not in ITEM_SETS:
        msg = f"items {items!r}: use one of {list(ITEM_SETS)}"
        raise ValueError(msg)
    other_benchmark_rows = 0
    if "benchmark" in answers.columns:
        mine = answers["benchmark"].map(_text) == benchmark.name
        other_benchmark_rows = int((~mine).sum())
        answers = answers[mine]
        items = "answered" if items == "auto" else items
    items = "category" if items == "auto" else items
    by_id = benchmark.by_id()
    qids = {item_id: {q.proposition_id for q in item.questions} for item_id, item in by_id.items()}
    models = (
        [_text(m) or DEFAULT_MODEL for m in answers[mcol]]
        if mcol
        else [DEFAULT_MODEL] * len(answers)
    )
    given: dict[str, dict[str, dict[int, str]]] = {m: {} for m in dict.fromkeys(models)}
    stats = {
        m: {"unknown_item_rows": 0, "unknown_question_rows": 0, "duplicate_rows": 0} for m in given
    }
    unknown_items: dict[str, None] = {}
    unknown_questions: dict[str, None] = {}
    for model, item_id, qid_value, answer in zip(
        models, answers["item_id"], answers[qcol], answers["answer"], strict=True
    ):
        item_id = _text(item_id).strip()
        if item_id not in by_id:
            stats[model]["unknown_item_rows"] += 1
            unknown_items.setdefault(item_id)
            continue
        qid = _question_id(qid_value)
        if qid is None or qid not in qids[item_id]:
            stats[model]["unknown_question_rows"] += 1
            unknown_questions.setdefault(f"{item_id}:{_text(qid_value)}")
            continue
        item_answers = given[model].setdefault(item_id, {})
        if qid in item_answers:
            stats[model]["duplicate_rows"] += 1
        item_answers[qid] = _text(answer)

    order = benchmark.categories()
    answered_ids = {item_id for item_answers in given.values() for item_id in item_answers}
    report_models: dict[str, Any] = {}
    diag_models: dict[str, Any] = {}
    unscored: list[str] = []
    for model, item_answers in given.items():
        answered = {by_id[item_id].category for item_id in item_answers}
        diag = {
            **stats[model],
            "categories_without_answers": [c for c in order if c not in answered],
        }
        if not answered:
            unscored.append(model)
            diag_models[model] = diag
            continue
        scored = [
            item
            for item in benchmark.items
            if (item.item_id in answered_ids if items == "answered" else item.category in answered)
        ]
        result = score_dsg(scored, item_answers, rules, category_order=order)
        report_models[model] = {
            "overall": round(result.overall, _DIGITS),
            "by_category": {c: round(v, _DIGITS) for c, v in result.by_category.items()},
            "n_items": result.n_items,
            "n_missing": result.n_missing,
        }
        diag["missing_questions"] = sum(len(s.unanswered) for s in result.item_scores if s.answered)
        diag["by_broad_category"] = {
            k: round(v, _DIGITS) for k, v in result.by_broad_category.items()
        }
        diag_models[model] = diag
    if not report_models:
        msg = (
            f"answers table {source}: no row names a {benchmark.name} item and question "
            f"({len(answers)} row(s); unknown item ids such as {list(unknown_items)[:5]}). "
            f"Check that item_id / {qcol} are the benchmark's (e.g. 'vrd_3' and 1, 2, ...)."
        )
        raise ValueError(msg)
    load = benchmark.report
    return {
        "benchmark": benchmark.name,
        "models": report_models,
        "diagnostics": {
            "answers": source,
            "rules": _rules_entry(rules),
            "items": items,
            "other_benchmark_rows": other_benchmark_rows,
            "models": diag_models,
            "unscored_models": unscored,
            "unknown_item_ids": list(unknown_items)[:_LIST_LIMIT],
            "unknown_questions": list(unknown_questions)[:_LIST_LIMIT],
            "dependency_fixes": {
                "counts": load.fix_counts(),
                "cells": [fix.to_dict() for fix in load.dependency_fixes],
            },
            "load_skipped": [f"{s.where}: {s.reason}" for s in load.skipped],
            "load_notes": list(load.notes),
        },
    }


def _load_benchmark(name: str) -> Benchmark[BenchmarkItem]:
    if name == "dsg1k":
        return load_dsg1k()
    msg = f"benchmark {name!r} cannot be re-scored; use one of {list(SUPPORTED_BENCHMARKS)}"
    raise ValueError(msg)


def _write_json(obj: Any, path: str) -> None:
    fs, target = fsspec.core.url_to_fs(path)
    parent = posixpath.dirname(target)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(target, "w") as f:
        f.write(json.dumps(obj, indent=2) + "\n")


def rescore_file(
    benchmark: str,
    answers_path: str,
    output_path: str | None = None,
    *,
    rules: str | DSGRules = "reference",
    items: str = "auto",
) -> dict[str, Any]:
    """Score the answers table at ``answers_path`` on ``benchmark``; write JSON if asked."""
    bench = _load_benchmark(benchmark)
    answers = read_answers(answers_path)
    report = rescore_answers(answers, bench, rules, source=answers_path, items=items)
    if output_path:
        _write_json(report, output_path)
    return report


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    return out


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of a rescore report, with its notes, for the terminal."""
    name = report.get("benchmark", "?")
    diag = report.get("diagnostics", {})
    models = report.get("models", {})
    rules = diag.get("rules", {})
    lines = [f"{SUPPORTED_BENCHMARKS.get(name, name)} scores (0-100)"]
    if diag.get("answers"):
        lines[0] += f" from {diag['answers']}"
    if rules:
        lines.append(f"rules: {rules.get('name')} ({rules.get('description')})")
    if diag.get("items") == "answered":
        lines.append("items: those the table has answers for")
    elif diag.get("items") == "category":
        lines.append("items: every benchmark item in the categories with answers")
    categories = list(dict.fromkeys(c for m in models.values() for c in m.get("by_category", {})))
    header = ["model", "overall", *categories, "items", "missing"]
    rows = [
        [
            model,
            _fmt(m["overall"]),
            *(_fmt(m["by_category"].get(c)) for c in categories),
            str(m["n_items"]),
            str(m["n_missing"]),
        ]
        for model, m in models.items()
    ]
    lines += ["", *_table(header, rows)]
    notes = []
    if any(m["by_category"].get(c) is None for m in models.values() for c in categories):
        notes.append("'-': the model has no answers in that category, which is not scored")
    for model, m in models.items():
        d = diag.get("models", {}).get(model, {})
        if m["n_missing"]:
            notes.append(f"{model}: {m['n_missing']} item(s) without answers, scored 0")
        if d.get("missing_questions"):
            notes.append(f"{model}: {d['missing_questions']} unanswered question(s), scored 0")
        for key, what in (
            ("unknown_item_rows", "row(s) for unknown item_ids, ignored"),
            ("unknown_question_rows", "row(s) for unknown question ids, ignored"),
            ("duplicate_rows", "repeated row(s); the last one counts"),
        ):
            if d.get(key):
                notes.append(f"{model}: {d[key]} {what}")
    if diag.get("other_benchmark_rows"):
        notes.append(f"{diag['other_benchmark_rows']} row(s) of other benchmarks, set aside")
    if diag.get("unknown_item_ids"):
        notes.append(f"unknown item_ids, e.g. {diag['unknown_item_ids'][:5]}")
    if diag.get("unknown_questions"):
        notes.append(f"unknown questions (item:question), e.g. {diag['unknown_questions'][:5]}")
    for model in diag.get("unscored_models", []):
        notes.append(f"{model}: no answer names a benchmark question; not scored")
    fixes = diag.get("dependency_fixes", {}).get("counts", {})
    if fixes:
        counts = ", ".join(f"{n} {reason}" for reason, n in fixes.items())
        notes.append(
            f"dependency cells cleaned by the loader: {counts} "
            "(each listed under diagnostics.dependency_fixes in the JSON report)"
        )
    if notes:
        lines += ["", "notes:", *(f"  - {n}" for n in notes)]
    return "\n".join(lines)


__all__ = [
    "DEFAULT_MODEL",
    "ITEM_SETS",
    "MODEL_COLUMNS",
    "QUESTION_ID_COLUMNS",
    "SUPPORTED_BENCHMARKS",
    "format_table",
    "read_answers",
    "rescore_answers",
    "rescore_file",
]
