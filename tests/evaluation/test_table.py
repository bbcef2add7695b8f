"""The paper's comparison table: base / joint / merged (+ other runs) on every metric, with
bootstrap intervals, as Markdown, CSV, HTML and through ``selma-ray report --table``."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from selma_ray.cli import main
from selma_ray.evaluation.report import build_report
from selma_ray.evaluation.table import paper_table, to_csv, to_html, to_markdown
from selma_ray.storage import RunDir

DSG_IDS = [f"d{i}" for i in range(6)]
TIFA_IDS = [f"t{i}" for i in range(4)]
SKILL_IDS = ["coco-1", "coco-2", "whoops-1"]


def _entry(shift: float, rng: np.random.Generator) -> dict:
    dsg = {i: float(round(rng.uniform(20, 80), 2)) + shift for i in DSG_IDS}
    skills = {i: 50.0 + shift for i in SKILL_IDS}
    tifa = {i: float(round(rng.uniform(30, 90), 2)) + shift for i in TIFA_IDS}
    every = DSG_IDS + TIFA_IDS + SKILL_IDS
    return {
        "dsg": {
            "dsg1k": {"overall": float(np.mean(list(dsg.values()))), "items": dsg,
                      "by_category": {"x": float(np.mean(list(dsg.values())))}},
            "skills": {"overall": 50.0 + shift, "items": skills,
                       "by_category": {"coco": 50.0 + shift}},
        },  # fmt: skip
        "tifa": {"overall": float(np.mean(list(tifa.values()))), "items": tifa,
                 "by_category": {}},
        "clip": None,
        "clip_items": {i: 0.5 + shift / 100 for i in every},
        "preference": {
            # the skill prompts score otherwise than the benchmarks' (a column per benchmark)
            "pickscore": {"mean": 20.0 + shift, "items": {
                **{i: 20.0 + shift for i in every}, **{i: 30.0 + 2 * shift for i in SKILL_IDS}
            }},  # fmt: skip
            "imagereward": {"mean": shift / 10, "items": {i: shift / 10 for i in every}},
            "hps": {"mean": 0.25, "items": {i: 0.25 for i in every}},
        },
    }


def _report(shifts: dict[str, float], seed: int = 0, skill_text: str = "") -> dict:
    # every variant shares the same per-item draws: a shift moves all of its items alike
    return {
        "variants": {v: _entry(s, np.random.default_rng(seed)) for v, s in shifts.items()},
        "benchmarks": {"dsg1k": DSG_IDS, "tifa": TIFA_IDS, "skills": SKILL_IDS},
        "items": {
            **{i: {"text": i, "benchmark": "dsg1k", "category": "x"} for i in DSG_IDS},
            **{i: {"text": i, "benchmark": "tifa", "category": "x"} for i in TIFA_IDS},
            **{i: {"text": i + skill_text, "benchmark": "skills", "category": i.split("-")[0]}
               for i in SKILL_IDS},
        },  # fmt: skip
    }


SCORES = ("PickScore", "ImageReward", "HPS", "CLIPScore")


def test_rows_columns_means_and_paired_differences():
    report = _report({"base": 0.0, "expert-coco": 1.0, "joint": 2.0, "merged": 5.0})
    table = paper_table(report)
    assert table.columns == [
        "DSG dsg1k", "TIFA", "DSG skills",
        *(f"{score} {bench}" for score in SCORES for bench in ("dsg1k", "tifa", "skills")),
    ]  # fmt: skip
    assert list(table.rows) == ["base", "joint", "merged"]  # experts live in the skill matrix
    base_dsg = list(report["variants"]["base"]["dsg"]["dsg1k"]["items"].values())
    est = table.rows["base"]["DSG dsg1k"]
    assert est.mean == pytest.approx(np.mean(base_dsg)) and est.n == len(DSG_IDS)
    assert est.low < est.mean < est.high  # items differ: a real interval
    # every merged item is base + 5: the paired difference is exactly 5 with no spread
    d = table.deltas["merged - base"]["DSG dsg1k"]
    assert (d.mean, d.low, d.high) == pytest.approx((5.0, 5.0, 5.0))
    assert table.deltas["merged - joint"]["TIFA"].mean == pytest.approx(3.0)
    assert table.deltas["merged - base"]["HPS dsg1k"].mean == pytest.approx(0.0)
    assert table.deltas["merged - base"]["CLIPScore tifa"].mean == pytest.approx(0.05)
    # the preference scores per benchmark, each over that benchmark's items alone
    pick = {b: table.rows["base"][f"PickScore {b}"] for b in ("dsg1k", "tifa", "skills")}
    assert [(e.mean, e.n) for e in pick.values()] == [(20.0, 6), (20.0, 4), (30.0, 3)]
    assert table.deltas["merged - base"]["PickScore dsg1k"].mean == pytest.approx(5.0)
    assert table.deltas["merged - base"]["PickScore skills"].mean == pytest.approx(10.0)


def test_markdown_csv_and_html_carry_the_same_numbers():
    table = paper_table(_report({"base": 0.0, "merged": 5.0}))
    md = to_markdown(table).splitlines()
    assert md[0].startswith("| model | DSG dsg1k | TIFA |")
    assert [line.split("|")[1].strip() for line in md[2:]] == ["base", "merged", "merged - base"]
    assert "+5.0 [+5.0, +5.0]" in md[-1]
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    got = {(r["row"], r["metric"]): float(r["mean"]) for r in rows}
    assert got[("merged - base", "PickScore dsg1k")] == pytest.approx(5.0)
    assert got[("base", "DSG dsg1k")] == pytest.approx(table.rows["base"]["DSG dsg1k"].mean)
    assert {r["kind"] for r in rows} == {"model", "difference"}
    page = to_html(table)
    assert 'id="paper-table"' in page and '<td class="up">+0.500 [+0.500, +0.500]' in page


def test_other_runs_merged_model_joins_as_a_labelled_row():
    ours = _report({"base": 0.0, "merged": 5.0})
    gt = _report({"base": 0.0, "merged": 4.0})
    table = paper_table(ours, {"ground-truth": gt})
    assert list(table.rows) == ["base", "merged", "merged (ground-truth)"]
    d = table.deltas["merged (ground-truth) - merged"]["TIFA"]
    assert d.mean == pytest.approx(-1.0)
    # the other run's skill prompts behind the same ids are other prompts: not paired
    other = _report({"base": 0.0, "merged": 4.0}, skill_text=" (another run's prompt)")
    table = paper_table(ours, {"other": other})
    row, delta = table.rows["merged (other)"], table.deltas["merged (other) - merged"]
    assert "DSG skills" not in row and "PickScore skills" not in delta
    assert row["DSG dsg1k"].n == len(DSG_IDS) and delta["TIFA"].mean == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="ground-truth"):
        paper_table(ours, {"ground-truth": {"variants": {"base": {}}}})


def test_report_writes_the_table_and_the_cli_prints_it(tmp_path, capsys):
    rd = RunDir(str(tmp_path / "run"))
    rd.write_json(_report({"base": 0.0, "joint": 1.0, "merged": 5.0}), "eval", "report.json")
    gt = RunDir(str(tmp_path / "gt"))
    gt.write_json(_report({"base": 0.0, "merged": 3.0}), "eval", "report.json")
    paths = build_report(rd)
    assert rd.read_text("eval", "table.md").startswith("| model | DSG dsg1k")
    assert "| variant \\ skill | coco | whoops |" in rd.read_text("eval", "table.md")
    assert 'id="paper-table"' in rd.read_text("eval", "report.html")
    assert paths["table_csv"].endswith("eval/table.csv")

    compare = ["--compare", f"ground-truth={gt.uri}"]
    assert main(["report", "--run-dir", rd.uri, "--table", *compare]) == 0
    out = capsys.readouterr().out
    assert "| merged (ground-truth) |" in out and "| merged - joint |" in out
    assert main(["report", "--run-dir", rd.uri, "--table", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    names = {"base", "joint", "merged", "merged - base", "merged - joint"}
    assert {r["row"] for r in rows} == names
    assert main(["report", "--run-dir", rd.uri, "--compare", "nolabel"]) == 2
    assert "LABEL=RUN_DIR" in capsys.readouterr().err
