"""The report's two views of the held-out skill evaluation, with 95 % bootstrap intervals.

- :func:`skill_matrix`: each variant's DSG score on every skill's held-out prompts (rows:
  base, each ``expert-<skill>``, merged; columns: skills), the view the SELMA paper uses to
  show that experts specialise (an expert scores best on its own skill's column).
- :func:`merged_minus_base`: per skill, merged minus base over the same prompts (paired by
  item), with its interval; drawn as an inline SVG bar chart by :func:`delta_chart_svg`.

Intervals are percentile bootstraps over items (:func:`bootstrap_ci`, seeded: the report is
the same every time it is built). Inputs are ``eval/report.json``'s per-item scores.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Estimate",
    "bootstrap_ci",
    "delta_chart_svg",
    "merged_minus_base",
    "skill_matrix",
    "skill_matrix_html",
]

RESAMPLES = 2000
SEED = 0
#: Colours of the chart's bars (the screenshot test looks for them).
UP_COLOR, DOWN_COLOR = "#1a9641", "#d7191c"


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` items with its 95 % interval (None with fewer than two items)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def text(self) -> str:
        if self.low is None or self.high is None:
            return f"{self.mean:.1f} (n={self.n})"
        return f"{self.mean:.1f} [{self.low:.1f}, {self.high:.1f}]"


def bootstrap_ci(values: list[float], *, resamples: int = RESAMPLES, seed: int = SEED) -> Estimate:
    """Mean of ``values`` and the 2.5 / 97.5 percentiles of the means of ``resamples``
    resamples with replacement."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        msg = "bootstrap_ci: no values"
        raise ValueError(msg)
    if x.size < 2:
        return Estimate(float(x.mean()), None, None, int(x.size))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(float(x.mean()), float(low), float(high), int(x.size))


def _skill_items(report: dict[str, Any]) -> dict[str, list[str]]:
    """Held-out skill prompts by skill (the ``skills`` benchmark's categories)."""
    out: dict[str, list[str]] = {}
    for item_id in report.get("benchmarks", {}).get("skills", []):
        skill = report["items"][item_id]["category"]
        out.setdefault(skill, []).append(item_id)
    return out


def _item_scores(report: dict[str, Any], variant: str) -> dict[str, float]:
    dsg = (report["variants"].get(variant) or {}).get("dsg") or {}
    return {k: float(v) for k, v in ((dsg.get("skills") or {}).get("items") or {}).items()}


def skill_matrix(report: dict[str, Any]) -> dict[str, dict[str, Estimate]]:
    """{variant: {skill: DSG on that skill's held-out prompts}}, for every variant scored on
    them (base, experts, merged, ...); empty without held-out skill prompts."""
    items = _skill_items(report)
    out: dict[str, dict[str, Estimate]] = {}
    for variant in report["variants"]:
        scores = _item_scores(report, variant)
        row = {
            skill: bootstrap_ci([scores[i] for i in ids if i in scores])
            for skill, ids in items.items()
            if any(i in scores for i in ids)
        }
        if row:
            out[variant] = row
    return out


def merged_minus_base(report: dict[str, Any]) -> dict[str, Estimate]:
    """{skill: merged - base over the skill's held-out prompts both were scored on}."""
    base, merged = _item_scores(report, "base"), _item_scores(report, "merged")
    out = {}
    for skill, ids in _skill_items(report).items():
        diffs = [merged[i] - base[i] for i in ids if i in base and i in merged]
        if diffs:
            out[skill] = bootstrap_ci(diffs)
    return out


def skill_matrix_html(matrix: dict[str, dict[str, Estimate]]) -> str:
    """The matrix as a table; each column's best variant in bold, an expert on its own skill
    outlined."""
    if not matrix:
        return "<p>no held-out skill prompts were scored</p>"
    skills = sorted({s for row in matrix.values() for s in row})
    best = {
        s: max((row[s].mean for row in matrix.values() if s in row), default=None) for s in skills
    }
    head = "".join(f"<th>{html.escape(s)}</th>" for s in skills)
    body = []
    for variant, row in matrix.items():
        cells = []
        for s in skills:
            est = row.get(s)
            if est is None:
                cells.append("<td></td>")
                continue
            cls = ["own"] if variant == f"expert-{s}" else []
            if est.mean == best[s]:
                cls.append("best")
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{html.escape(est.text())}</td>")
        body.append(f"<tr><th>{html.escape(variant)}</th>{''.join(cells)}</tr>")
    return (
        '<table class="matrix" id="skill-matrix"><thead><tr><th>variant \\ skill</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def delta_chart_svg(deltas: dict[str, Estimate], *, width: int = 640, bar_h: int = 28) -> str:
    """Horizontal bars of merged - base per skill around a zero line, with interval
    whiskers; green up, red down."""
    if not deltas:
        return "<p>no skill was scored for both base and merged</p>"
    label_w, pad = 140, 16
    plot_w = width - label_w - 2 * pad
    ends = [abs(e.mean) for e in deltas.values()]
    ends += [abs(v) for e in deltas.values() for v in (e.low, e.high) if v is not None]
    span = max(max(ends), 1e-9)
    zero = label_w + pad + plot_w / 2

    def x(v: float) -> float:
        return zero + v / span * (plot_w / 2)

    rows = []
    for k, (skill, e) in enumerate(deltas.items()):
        y = pad + k * bar_h
        left, right = sorted((x(0.0), x(e.mean)))
        color = UP_COLOR if e.mean >= 0 else DOWN_COLOR
        rows.append(
            f'<text x="{label_w}" y="{y + bar_h * 0.65:.1f}" text-anchor="end" '
            f'font-size="13">{html.escape(skill)}</text>'
            f'<rect x="{left:.1f}" y="{y + 4}" width="{max(right - left, 1):.1f}" '
            f'height="{bar_h - 8}" fill="{color}"><title>{html.escape(e.text())}</title></rect>'
        )
        if e.low is not None and e.high is not None:
            cy = y + bar_h / 2
            rows.append(
                f'<line x1="{x(e.low):.1f}" x2="{x(e.high):.1f}" y1="{cy}" y2="{cy}" '
                'stroke="#222" stroke-width="2"/>'
            )
    height = 2 * pad + bar_h * len(deltas) + 18
    axis = (
        f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="{pad / 2}" y2="{height - 20}" '
        'stroke="#555"/>'
        f'<text x="{x(-span):.1f}" y="{height - 4}" font-size="11">{-span:+.1f}</text>'
        f'<text x="{zero:.1f}" y="{height - 4}" font-size="11" text-anchor="middle">0</text>'
        f'<text x="{x(span):.1f}" y="{height - 4}" font-size="11" text-anchor="end">'
        f"{span:+.1f}</text>"
    )
    return (
        f'<svg id="merged-minus-base" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" role="img" aria-label="merged minus base DSG per skill">'
        f"{''.join(rows)}{axis}</svg>"
    )
