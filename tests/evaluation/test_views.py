"""The report's skill matrix and merged - base chart (selma_ray/evaluation/views.py)."""

from __future__ import annotations

import numpy as np
import pytest

from selma_ray.evaluation.views import (
    DOWN_COLOR,
    UP_COLOR,
    bootstrap_ci,
    delta_chart_svg,
    merged_minus_base,
    skill_matrix,
    skill_matrix_html,
)

SCORES = {  # variant -> item -> DSG score (0-100)
    "base": {"coco-1": 20.0, "coco-2": 40.0, "coco-3": 30.0, "whoops-1": 50.0, "whoops-2": 70.0},
    "expert-coco": {"coco-1": 60.0, "coco-2": 80.0, "coco-3": 70.0, "whoops-1": 40.0,
                    "whoops-2": 60.0},
    "expert-whoops": {"coco-1": 10.0, "coco-2": 30.0, "coco-3": 20.0, "whoops-1": 90.0,
                      "whoops-2": 100.0},
    "merged": {"coco-1": 50.0, "coco-2": 70.0, "coco-3": 60.0, "whoops-1": 40.0,
               "whoops-2": 50.0},
}  # fmt: skip


def _report() -> dict:
    items = {
        i: {"text": i, "benchmark": "skills", "category": i.split("-")[0]} for i in SCORES["base"]
    }
    return {
        "variants": {
            v: {"dsg": {"skills": {"overall": None, "by_category": {}, "items": s}}}
            for v, s in SCORES.items()
        },
        "benchmarks": {"skills": list(items)},
        "items": items,
    }


def test_bootstrap_interval_matches_a_plain_python_percentile_bootstrap():
    import random
    import statistics

    values = list(np.random.default_rng(3).normal(50, 15, size=40))
    ours = bootstrap_ci(values)
    rng = random.Random(1)  # an independent bootstrap: stdlib resampling, sorted percentiles
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(20000))
    ref_low, ref_high = means[int(0.025 * len(means))], means[int(0.975 * len(means)) - 1]
    assert ours.mean == pytest.approx(np.mean(values))
    assert ours.low == pytest.approx(ref_low, abs=0.8)  # two Monte Carlo estimates
    assert ours.high == pytest.approx(ref_high, abs=0.8)
    assert ours.low < ours.mean < ours.high and ours.n == 40
    assert bootstrap_ci(values) == ours  # seeded: the report is reproducible
    single = bootstrap_ci([7.0])
    assert (single.mean, single.low, single.high, single.text()) == (7.0, None, None, "7.0 (n=1)")
    with pytest.raises(ValueError, match="no values"):
        bootstrap_ci([])


def test_skill_matrix_has_each_variant_on_each_skill():
    m = skill_matrix(_report())
    assert list(m) == ["base", "expert-coco", "expert-whoops", "merged"]
    assert {v: {s: e.mean for s, e in row.items()} for v, row in m.items()} == {
        "base": {"coco": 30.0, "whoops": 60.0},
        "expert-coco": {"coco": 70.0, "whoops": 50.0},
        "expert-whoops": {"coco": 20.0, "whoops": 95.0},
        "merged": {"coco": 60.0, "whoops": 45.0},
    }
    assert m["base"]["coco"].n == 3 and m["base"]["whoops"].n == 2
    page = skill_matrix_html(m)
    # experts specialise here: each is the best on its own skill, outlined and bold
    assert '<td class="own best">70.0 [' in page and '<td class="own best">95.0 [' in page
    assert page.count('class="own') == 2


def test_merged_minus_base_is_paired_by_item():
    d = merged_minus_base(_report())
    assert d["coco"].mean == pytest.approx(30.0) and d["whoops"].mean == pytest.approx(-15.0)
    assert d["coco"].low == d["coco"].high == pytest.approx(30.0)  # every item +30
    svg = delta_chart_svg(d)
    assert svg.startswith('<svg id="merged-minus-base"')
    assert svg.count("<rect") == 2 and UP_COLOR in svg and DOWN_COLOR in svg
    assert ">coco</text>" in svg and ">whoops</text>" in svg


def test_no_held_out_skill_prompts_says_so():
    empty = {"variants": {"base": {"dsg": {}}}, "benchmarks": {}, "items": {}}
    assert skill_matrix(empty) == {} and merged_minus_base(empty) == {}
    assert "no held-out skill prompts" in skill_matrix_html({})
    assert "no skill was scored" in delta_chart_svg({})
