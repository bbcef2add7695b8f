"""The SELMA paper's comparison table from ``eval/report.json``, with 95 % bootstrap intervals.

Rows: ``base``, ``joint`` (one LoRA on every skill's pairs, when evaluated), ``merged``, and the
merged model of any other run given by label (e.g. ``ground-truth``: the same run with skills
trained on ground-truth pairs, the paper's auto-vs-ground-truth comparison), then the paired
differences ``merged - base`` and ``merged - joint``. Columns: DSG per DSG benchmark (``dsg1k``,
the held-out ``skills`` prompts), TIFA, then PickScore, ImageReward, HPS and CLIPScore per
benchmark (``PickScore dsg1k``, ``PickScore skills``, ...: the skill prompts come from the
experts' own training distribution, so pooling them with a public benchmark's prompts would make
a number comparable with neither), each where the run scored it. A cell is the mean over items
with the percentile-bootstrap interval over items
(:func:`~selma_ray.evaluation.views.bootstrap_ci`); a difference is the bootstrap of the
per-item differences over the items both rows were scored on. Another run's merged model is
shown on the items both reports give the same text (skill prompt ids repeat across runs while
their prompts differ), so its row and its difference are over the same items.

:func:`paper_table` builds it; :func:`to_markdown`, :func:`to_csv` and :func:`to_html` write it
(``selma-ray report --table``, ``eval/table.md`` / ``eval/table.csv``, the HTML report). The
skill matrix (each expert on every skill) is :func:`~selma_ray.evaluation.views.skill_matrix`;
:func:`matrix_markdown` writes it for the command line.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from selma_ray.evaluation.views import Estimate, bootstrap_ci, skill_matrix

__all__ = [
    "PaperTable",
    "matrix_markdown",
    "metric_items",
    "paper_table",
    "to_csv",
    "to_html",
    "to_markdown",
]

#: Preference scorers as report.json names them, and their column titles.
PREFERENCE_COLUMNS = {"pickscore": "PickScore", "imagereward": "ImageReward", "hps": "HPS"}
#: Decimals shown per column kind (scales differ: DSG/TIFA 0-100, HPS ~0.3, CLIPScore 0-2.5).
_DIGITS = {"DSG": 1, "TIFA": 1, "PickScore": 2, "ImageReward": 3, "HPS": 4, "CLIPScore": 3}


def _digits(column: str) -> int:
    return _DIGITS.get(column.split(" ")[0], 3)


Extractor = Callable[[Mapping[str, Any]], dict[str, float]]


def _items(value: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in (value or {}).items() if v is not None}


def _of(scores: dict[str, float], ids: frozenset[str]) -> dict[str, float]:
    return {i: v for i, v in scores.items() if i in ids}


def metric_items(report: Mapping[str, Any]) -> dict[str, Extractor]:
    """{column: variant entry -> {item_id: score}} for every metric the run scored; the
    preference scores and CLIPScore per benchmark (``PickScore dsg1k``)."""
    out: dict[str, Extractor] = {}
    benchmarks = report.get("benchmarks", {})
    for bench in benchmarks:
        if bench == "tifa":
            out["TIFA"] = lambda e: _items((e.get("tifa") or {}).get("items"))
        else:
            out[f"DSG {bench}"] = lambda e, b=bench: _items(
                ((e.get("dsg") or {}).get(b) or {}).get("items")
            )
    variants = report.get("variants", {}).values()
    kinds = {k for e in variants for k in e.get("preference") or {}}
    per_item: dict[str, Extractor] = {
        title: lambda e, k=kind: _items(((e.get("preference") or {}).get(k) or {}).get("items"))
        for kind, title in PREFERENCE_COLUMNS.items()
        if kind in kinds
    }
    if any(e.get("clip_items") for e in variants):
        per_item["CLIPScore"] = lambda e: _items(e.get("clip_items"))
    for title, scores in per_item.items():
        for bench, ids in benchmarks.items():
            out[f"{title} {bench}"] = lambda e, f=scores, i=frozenset(ids): _of(f(e), i)
    return out


@dataclass
class PaperTable:
    """Rows of estimates per column; ``deltas`` holds the paired differences."""

    columns: list[str]
    rows: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    deltas: dict[str, dict[str, Estimate]] = field(default_factory=dict)


def _estimate(scores: dict[str, float]) -> Estimate | None:
    return bootstrap_ci(list(scores.values())) if scores else None


def _paired(a: dict[str, float], b: dict[str, float]) -> Estimate | None:
    shared = [i for i in a if i in b]
    return bootstrap_ci([a[i] - b[i] for i in shared]) if shared else None


def _same_text(ours: Mapping[str, Any], other: Mapping[str, Any]) -> frozenset[str]:
    """The item ids both reports give the same text (the items two runs can be paired on)."""
    a, b = ours.get("items", {}), other.get("items", {})
    return frozenset(i for i in a if i in b and a[i].get("text") == b[i].get("text"))


def paper_table(
    report: Mapping[str, Any], others: Mapping[str, Mapping[str, Any]] | None = None
) -> PaperTable:
    """The comparison of ``report``'s base / joint / merged, and of the merged model of each
    labelled other run's report (``{"ground-truth": report}``), on every metric scored."""
    extract = metric_items(report)
    variants = report.get("variants", {})
    table = PaperTable(columns=list(extract))
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for name in ("base", "joint", "merged"):
        if name in variants:
            scores[name] = {c: f(variants[name]) for c, f in extract.items()}
    for label, other in (others or {}).items():
        merged = other.get("variants", {}).get("merged")
        if merged is None:
            msg = f"report --compare {label}: that run's report has no merged variant"
            raise ValueError(msg)
        same = _same_text(report, other)
        scores[f"merged ({label})"] = {c: _of(f(merged), same) for c, f in extract.items()}
    for name, by_col in scores.items():
        table.rows[name] = {c: e for c, s in by_col.items() if (e := _estimate(s)) is not None}
    pairs = [("merged", "base"), ("merged", "joint")]
    pairs += [(f"merged ({label})", "merged") for label in others or {}]
    for a, b in pairs:
        if a in scores and b in scores:
            table.deltas[f"{a} - {b}"] = {
                c: e
                for c in table.columns
                if (e := _paired(scores[a][c], scores[b][c])) is not None
            }
    return table


def _cell(e: Estimate | None, column: str, signed: bool = False) -> str:
    if e is None:
        return ""
    d = _digits(column)
    fmt = f"{{:+.{d}f}}" if signed else f"{{:.{d}f}}"
    if e.low is None or e.high is None:
        return f"{fmt.format(e.mean)} (n={e.n})"
    return f"{fmt.format(e.mean)} [{fmt.format(e.low)}, {fmt.format(e.high)}]"


def _lines(table: PaperTable) -> list[tuple[str, list[str], bool]]:
    out = [(name, [_cell(row.get(c), c) for c in table.columns], False)
           for name, row in table.rows.items()]  # fmt: skip
    out += [(name, [_cell(row.get(c), c, signed=True) for c in table.columns], True)
            for name, row in table.deltas.items()]  # fmt: skip
    return out


def to_markdown(table: PaperTable) -> str:
    """A Markdown table: one row per model and per difference, ``mean [low, high]`` cells."""
    head = "| model | " + " | ".join(table.columns) + " |"
    rule = "|---|" + "---|" * len(table.columns)
    body = [f"| {name} | " + " | ".join(cells) + " |" for name, cells, _ in _lines(table)]
    return "\n".join([head, rule, *body]) + "\n"


def to_csv(table: PaperTable) -> str:
    """Long-format CSV: ``row, kind (model | difference), metric, mean, low, high, n``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "kind", "metric", "mean", "low", "high", "n"])
    for kind, rows in (("model", table.rows), ("difference", table.deltas)):
        for name, row in rows.items():
            for c in table.columns:
                e = row.get(c)
                if e is not None:
                    w.writerow([name, kind, c, e.mean, e.low, e.high, e.n])
    return buf.getvalue()


def to_html(table: PaperTable) -> str:
    """The table for the HTML report (differences coloured by sign)."""
    if not table.columns or not table.rows:
        return "<p>no base, joint or merged scores to compare</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for name, cells, is_delta in _lines(table):
        tds = []
        for c, text in zip(table.columns, cells, strict=True):
            e = (table.deltas if is_delta else table.rows)[name].get(c)
            cls = ""
            if is_delta and e is not None and e.mean != 0:
                cls = ' class="up"' if e.mean > 0 else ' class="down"'
            tds.append(f"<td{cls}>{html.escape(text)}</td>")
        body.append(f"<tr><th>{html.escape(name)}</th>{''.join(tds)}</tr>")
    return (
        f'<table class="metrics" id="paper-table"><thead><tr><th>model</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def matrix_markdown(report: Mapping[str, Any]) -> str:
    """The skill matrix (DSG of every variant on each skill's held-out prompts) in Markdown."""
    matrix = skill_matrix(dict(report))
    if not matrix:
        return "(no held-out skill prompts were scored)\n"
    skills = sorted({s for row in matrix.values() for s in row})
    lines = ["| variant \\ skill | " + " | ".join(skills) + " |", "|---|" + "---|" * len(skills)]
    for variant, row in matrix.items():
        cells = [row[s].text() if s in row else "" for s in skills]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
