"""Re-scoring answers tables: the DSG authors' published table, hand-computed rules, I/O."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from selma_ray.evaluation.benchmarks import load_dsg1k
from selma_ray.evaluation.rescore import format_table, read_answers, rescore_answers, rescore_file

DATA = Path(__file__).parent / "data"
RELEASE = DATA / "dsg1k_pali17b_sd2dot1" / "answers.csv"
MINI = DATA / "mini_dsg1k.csv"
MINI_ANSWERS = DATA / "mini_dsg1k_answers.csv"
MODEL_KEYS = {"overall", "by_category", "n_items", "n_missing"}

#: SD v2.1 answered by PaLI-17B: the table printed by the DSG authors' t2i_eval_dsg1k.py
#: (README of github.com/j-min/DSG, "DSG-1k score calculation").
PUBLISHED_SD21 = {
    "tifa": 88.1,
    "paragraph": 85.1,
    "relation": 34.4,
    "count": 70.4,
    "real_user": 89.7,
    "pose": 89.6,
    "defying": 84.4,
    "text": 83.7,
}
PUBLISHED_SD21_OVERALL = 80.5
PUBLISHED_SD21_ITEMS = {
    "tifa": 160,
    "paragraph": 200,
    "relation": 100,
    "count": 100,
    "real_user": 200,
    "pose": 100,
    "defying": 100,
    "text": 100,
}


# --------------------------------------------------------------------------- published table


@pytest.fixture(scope="module")
def release_reports():
    return {
        rules: rescore_file("dsg1k", str(RELEASE), rules=rules)
        for rules in ("reference", "transitive")
    }


def test_reference_rules_reproduce_the_published_dsg1k_table(release_reports):
    report = release_reports["reference"]
    assert set(report) == {"benchmark", "models", "diagnostics"}
    assert report["benchmark"] == "dsg1k"
    sd21 = report["models"]["sd2dot1"]
    assert set(sd21) == MODEL_KEYS
    assert round(sd21["overall"], 1) == PUBLISHED_SD21_OVERALL
    assert {c: round(v, 1) for c, v in sd21["by_category"].items()} == PUBLISHED_SD21
    assert list(sd21["by_category"]) == list(PUBLISHED_SD21)  # the published order
    assert (sd21["n_items"], sd21["n_missing"]) == (1060, 1)  # tifa160_134 has no answers
    assert sum(PUBLISHED_SD21_ITEMS.values()) == 1060


def test_transitive_rules_on_the_release(release_reports):
    """Transitive zeroing and kept integer parts move four categories.

    These numbers are OUR OWN output (a snapshot of rescore with rules="transitive" when it was
    written), not published ones: nobody else computes the transitive reading. They are checked
    independently by test_transitive_release_scores_match_an_independent_computation below and
    by the hand-computed cases further down."""
    sd21 = release_reports["transitive"]["models"]["sd2dot1"]
    assert round(sd21["overall"], 1) == 80.3
    assert {c: round(v, 1) for c, v in sd21["by_category"].items()} == {
        **PUBLISHED_SD21,
        "tifa": 88.0,
        "paragraph": 84.8,
        "pose": 89.2,
        "defying": 83.7,
    }


def _said_yes(answer: str) -> bool:
    return re.sub(r"[^\w\s]", " ", answer.lower()).split() == ["yes"]


def _ancestors(parents: dict[int, set[int]], pid: int) -> set[int]:
    seen: set[int] = set()
    todo = [pid]
    while todo:
        for parent in parents[todo.pop()] - seen:
            seen.add(parent)
            todo.append(parent)
    return seen - {pid}


def _transitive_by_hand(items, answers: pd.DataFrame) -> tuple[float, dict[str, float]]:
    """An independent transitive DSG score: a question scores 1 when its answer is "yes" and
    every question it depends on, directly or through others, was answered "yes"; an item
    scores the mean of its questions (0 without answers); the last repeated row wins."""
    given: dict[str, dict[int, str]] = {}
    for row in answers.itertuples(index=False):
        given.setdefault(row.item_id, {})[int(row.question_id)] = row.answer
    scores: dict[str, list[float]] = {}
    for item in items:
        mine = given.get(item.item_id, {})
        yes = {q.proposition_id: _said_yes(mine.get(q.proposition_id, "")) for q in item.questions}
        parents = {q.proposition_id: set(q.dependency) & set(yes) for q in item.questions}
        ok = [yes[pid] and all(yes[a] for a in _ancestors(parents, pid)) for pid in yes]
        scores.setdefault(item.category, []).append(sum(ok) / len(ok))
    everything = [v for vals in scores.values() for v in vals]
    by_category = {c: 100 * sum(v) / len(v) for c, v in scores.items()}
    return 100 * sum(everything) / len(everything), by_category


def test_transitive_release_scores_match_an_independent_computation(release_reports):
    """The transitive snapshot above, recomputed by a second implementation (ancestor sets
    instead of a fixpoint) from the same loaded benchmark and the raw answers CSV."""
    answers = pd.read_csv(RELEASE, dtype=str, keep_default_na=False)
    overall, by_category = _transitive_by_hand(load_dsg1k().items, answers)
    sd21 = release_reports["transitive"]["models"]["sd2dot1"]
    assert sd21["overall"] == pytest.approx(overall, abs=1e-4)
    assert sd21["by_category"] == pytest.approx(by_category, abs=1e-4)
    assert round(overall, 1) == 80.3


def test_release_diagnostics_report_the_loader_fixes(release_reports):
    diag = release_reports["transitive"]["diagnostics"]
    assert diag["rules"]["name"] == "transitive"
    assert release_reports["reference"]["diagnostics"]["rules"]["zeroing"] == "direct"
    assert diag["dependency_fixes"]["counts"] == {
        "non-integer text": 10,
        "self-reference": 44,
        "unknown parent": 8,
    }
    assert {
        "item_id": "posescript_69",
        "proposition_id": 9,
        "raw": "5, right",
        "kept": [5],
        "dropped": ["right"],
        "reasons": ["non-integer text"],
    } in diag["dependency_fixes"]["cells"]
    model = diag["models"]["sd2dot1"]
    assert model["unknown_item_rows"] == model["unknown_question_rows"] == 0
    assert model["missing_questions"] == 0
    table = format_table(release_reports["reference"])
    assert "rules: reference" in table
    assert "80.5" in table and "sd2dot1" in table
    assert "10 non-integer text, 44 self-reference, 8 unknown parent" in table


# --------------------------------------------------------------------------- hand-computed rules


@pytest.fixture(scope="module")
def mini():
    return load_dsg1k(str(MINI))


# Hand computation (per item: question scores after zeroing -> item score).
# Model A, transitive rules (dirty cell "2, left" keeps parent 2):
#   tifa160_1 yes,no,yes,yes: q2 no -> q3 (<-2) and q4 (<-2) zeroed -> [1,0,0,0] = 0.25
#   tifa160_2 Yes.,no,yes: q3 (<-1,2) zeroed by q2 -> 1/3
#   vrd_1 yes,yes,no,yes: q4 (<-3; the self-reference 4 is dropped) zeroed -> 0.5
#   whoops_1 no rows -> missing, 0;   whoops_2 only q1 yes -> [1,0] = 0.5
#   countbench_1 no -> 0
A_TRANSITIVE = {
    "overall": 100 * (0.25 + 1 / 3 + 0.5 + 0 + 0.5 + 0) / 6,
    "by_category": {
        "tifa": 100 * (0.25 + 1 / 3) / 2,
        "relation": 50.0,
        "count": 0.0,
        "defying": 25.0,
    },
    "n_items": 6,
    "n_missing": 1,
}
# Reference rules: tifa160_1 has a dirty cell, so it loses all dependencies -> [1,0,1,1] = 0.75.
A_REFERENCE = {
    **A_TRANSITIVE,
    "overall": 100 * (0.75 + 1 / 3 + 0.5 + 0 + 0.5 + 0) / 6,
    "by_category": {**A_TRANSITIVE["by_category"], "tifa": 100 * (0.75 + 1 / 3) / 2},
}
# Model B answers only tifa and relation items (count and defying are not scored):
#   tifa160_1 (repeated q1: the last row, "yes", counts) yes,yes,no,yes -> [1,1,0,1] = 0.75
#   tifa160_2 only a row for question 9, which does not exist -> missing, 0
#   vrd_1 no,yes,yes,yes: transitive: q3 (<-1) zeroed, so q4 (<-3) too -> [0,1,0,0] = 0.25
#                         reference (direct): q4's parent q3 answered yes -> [0,1,0,1] = 0.5
B_TRANSITIVE = {
    "overall": 100 * (0.75 + 0 + 0.25) / 3,
    "by_category": {"tifa": 37.5, "relation": 25.0},
    "n_items": 3,
    "n_missing": 1,
}
B_REFERENCE = {
    **B_TRANSITIVE,
    "overall": 100 * (0.75 + 0 + 0.5) / 3,
    "by_category": {"tifa": 37.5, "relation": 50.0},
}


def assert_model(got, expected):
    assert set(got) == MODEL_KEYS
    assert got["overall"] == pytest.approx(expected["overall"], abs=1e-4)
    assert list(got["by_category"]) == list(expected["by_category"])
    assert got["by_category"] == pytest.approx(expected["by_category"], abs=1e-4)
    assert (got["n_items"], got["n_missing"]) == (expected["n_items"], expected["n_missing"])


@pytest.mark.parametrize(
    ("rules", "expected_a", "expected_b"),
    [("transitive", A_TRANSITIVE, B_TRANSITIVE), ("reference", A_REFERENCE, B_REFERENCE)],
)
def test_two_models_hand_computed(mini, rules, expected_a, expected_b):
    report = rescore_answers(read_answers(str(MINI_ANSWERS)), mini, rules, source="mini")
    assert list(report["models"]) == ["A", "B"]
    assert_model(report["models"]["A"], expected_a)
    assert_model(report["models"]["B"], expected_b)
    diag = report["diagnostics"]
    assert diag["models"]["A"]["missing_questions"] == 1  # whoops_2 q2
    assert diag["models"]["A"]["categories_without_answers"] == []
    b = diag["models"]["B"]
    assert (b["unknown_item_rows"], b["unknown_question_rows"], b["duplicate_rows"]) == (1, 1, 1)
    assert b["categories_without_answers"] == ["count", "defying"]
    assert diag["unknown_item_ids"] == ["vrd_999"]
    assert diag["unknown_questions"] == ["tifa160_2:9"]
    assert diag["dependency_fixes"]["counts"] == {"non-integer text": 1, "self-reference": 1}


def test_parquet_input_with_a_model_column(mini, tmp_path):
    df = read_answers(str(MINI_ANSWERS)).rename(columns={"t2i_model": "model"})
    df["question_id"] = df["question_id"].astype(int)
    path = tmp_path / "answers.parquet"
    df.to_parquet(path)
    report = rescore_answers(read_answers(str(path)), mini, "transitive", source=str(path))
    assert_model(report["models"]["A"], A_TRANSITIVE)
    assert_model(report["models"]["B"], B_TRANSITIVE)


def test_without_a_model_column_everything_is_default(mini, tmp_path):
    df = read_answers(str(MINI_ANSWERS))
    df = (
        df[df["t2i_model"] == "A"]
        .drop(columns="t2i_model")
        .rename(columns={"question_id": "proposition_id"})
    )
    path = tmp_path / "a.csv"
    df.to_csv(path, index=False)
    report = rescore_answers(read_answers(str(path)), mini, "transitive")
    assert list(report["models"]) == ["default"]
    assert_model(report["models"]["default"], A_TRANSITIVE)


def test_format_table(mini):
    report = rescore_answers(read_answers(str(MINI_ANSWERS)), mini, "transitive", source="mini.csv")
    table = format_table(report)
    lines = table.splitlines()
    assert lines[0] == "DSG-1k scores (0-100) from mini.csv"
    header = next(line for line in lines if line.startswith("model"))
    assert header.split() == [
        "model",
        "overall",
        "tifa",
        "relation",
        "count",
        "defying",
        "items",
        "missing",
    ]
    row_b = next(line for line in lines if line.startswith("B "))
    assert row_b.split() == ["B", "33.3", "37.5", "25.0", "-", "-", "3", "1"]
    assert "B: 1 row(s) for unknown item_ids, ignored" in table
    assert "B: 1 repeated row(s); the last one counts" in table
    assert "A: 1 unanswered question(s), scored 0" in table
    assert "'-': the model has no answers in that category" in table


#: Three DSG-1k-shaped items (the annotation file's columns) and their answers.
THREE_ITEMS = (
    (
        "item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,"
        "question_natural_language\n"
    )
    + """tifa160_1,t,k,1,0,entity,whole,t,Is there a cat?
tifa160_1,t,k,2,1,attribute,color,t,Is the cat black?
tifa160_1,t,k,3,2,attribute,state,t,Is the black cat asleep?
vrd_1,t,k,1,0,entity,whole,t,Is there a man?
vrd_1,t,k,2,0,entity,whole,t,Is there a horse?
vrd_1,t,k,3,"1,2",relation,spatial,t,Is the man on the horse?
vrd_1,t,k,4,3,relation,action,t,Is the man riding the horse?
countbench_1,t,k,1,0,entity,whole,t,Are there dogs?
countbench_1,t,k,2,1,other,count,t,Are there three dogs?
"""
)
THREE_ANSWERS = """item_id,question_id,answer
tifa160_1,1,no
tifa160_1,2,yes
tifa160_1,3,yes
vrd_1,1,yes
vrd_1,2,no
vrd_1,3,yes
vrd_1,4,yes
countbench_1,1,Yes.
countbench_1,2,yes
"""


@pytest.mark.parametrize(
    ("rules", "overall", "by_category"),
    [
        # tifa160_1 no,yes,yes: 1 fails -> 2 zeroed -> 3 zeroed: [0,0,0] = 0
        # vrd_1 yes,no,yes,yes: 2 fails -> 3 (<-1,2) zeroed -> 4 (<-3) zeroed: [1,0,0,0] = 1/4
        # countbench_1 all yes: 1
        ("transitive", 100 * (0 + 1 / 4 + 1) / 3, {"tifa": 0.0, "relation": 25.0, "count": 100.0}),
        # direct parents only: tifa160_1 [0,0,1] = 1/3; vrd_1 [1,0,0,1] = 1/2 (3 said yes)
        (
            "reference",
            100 * (1 / 3 + 1 / 2 + 1) / 3,
            {"tifa": 100 / 3, "relation": 50.0, "count": 100.0},
        ),
    ],
)
def test_three_items_hand_computed(tmp_path, rules, overall, by_category):
    (tmp_path / "anns.csv").write_text(THREE_ITEMS)
    (tmp_path / "answers.csv").write_text(THREE_ANSWERS)
    bench = load_dsg1k(str(tmp_path / "anns.csv"))
    report = rescore_answers(read_answers(str(tmp_path / "answers.csv")), bench, rules)
    got = report["models"]["default"]
    assert got["overall"] == pytest.approx(overall, abs=1e-4)
    assert got["by_category"] == pytest.approx(by_category, abs=1e-4)
    assert (got["n_items"], got["n_missing"]) == (3, 0)


# Items "answered" (the union over models of items with an answer; whoops_1 has none):
# tifa160_1, tifa160_2, vrd_1, whoops_2, countbench_1. Transitive rules, from the sums above:
#   A: 0.25 + 1/3 + 0.5 + 0.5 + 0 over 5 items, none missing
#   B: tifa160_1 0.75, vrd_1 0.25; tifa160_2, whoops_2 and countbench_1 missing (0)
A_ANSWERED = {
    "overall": 100 * (0.25 + 1 / 3 + 0.5 + 0.5 + 0) / 5,
    "by_category": {"tifa": 100 * (0.25 + 1 / 3) / 2, "relation": 50.0, "count": 0.0,
                    "defying": 50.0},
    "n_items": 5,
    "n_missing": 0,
}  # fmt: skip
B_ANSWERED = {
    "overall": 100 * (0.75 + 0.25) / 5,
    "by_category": {"tifa": 37.5, "relation": 25.0, "count": 0.0, "defying": 0.0},
    "n_items": 5,
    "n_missing": 3,
}


def test_answered_items_score_every_model_on_the_items_any_model_answered(mini):
    report = rescore_answers(read_answers(str(MINI_ANSWERS)), mini, "transitive", items="answered")
    assert report["diagnostics"]["items"] == "answered"
    assert_model(report["models"]["A"], A_ANSWERED)
    assert_model(report["models"]["B"], B_ANSWERED)
    assert "items: those the table has answers for" in format_table(report)


def test_a_table_with_a_benchmark_column_scores_its_own_rows_on_the_answered_items(mini):
    """A run's eval/answers.parquet: rows of other benchmarks are set aside (not unknown items),
    and "auto" scores the items asked, not every item of their categories."""
    df = read_answers(str(MINI_ANSWERS))
    df["benchmark"] = "dsg1k"
    skills = pd.DataFrame(
        {"t2i_model": ["A", "B"], "item_id": ["coco-00001"] * 2, "question_id": ["1"] * 2,
         "answer": ["yes"] * 2, "benchmark": ["skills"] * 2}
    )  # fmt: skip
    report = rescore_answers(pd.concat([df, skills]), mini, "transitive")
    assert_model(report["models"]["A"], A_ANSWERED)
    assert_model(report["models"]["B"], B_ANSWERED)
    diag = report["diagnostics"]
    assert (diag["items"], diag["other_benchmark_rows"]) == ("answered", 2)
    assert diag["unknown_item_ids"] == ["vrd_999"]  # the skill rows are not unknown items
    assert "2 row(s) of other benchmarks, set aside" in format_table(report)
    # asked for, the DSG authors' convention scores every item of the answered categories
    category = rescore_answers(pd.concat([df, skills]), mini, "transitive", items="category")
    assert_model(category["models"]["A"], A_TRANSITIVE)
    assert_model(category["models"]["B"], B_TRANSITIVE)


def test_a_table_without_a_benchmark_column_scores_whole_categories_by_default(mini):
    report = rescore_answers(read_answers(str(MINI_ANSWERS)), mini, "transitive")
    assert (report["diagnostics"]["items"], report["diagnostics"]["other_benchmark_rows"]) == (
        "category",
        0,
    )
    with pytest.raises(ValueError, match=r"items 'some': use one of \['auto', 'category'"):
        rescore_answers(read_answers(str(MINI_ANSWERS)), mini, items="some")


# --------------------------------------------------------------------------- files and errors


def test_rescore_file_writes_the_report_and_excludes_unanswered_categories(tmp_path):
    answers = tmp_path / "answers.csv"
    answers.write_text(
        "item_id,question_id,answer\nwhoops_5,1,Yes\nwhoops_5,2,no\nwhoops_5,3,yes.\n"
    )
    out = tmp_path / "reports" / "report.json"
    report = rescore_file("dsg1k", str(answers), str(out))
    assert json.loads(out.read_text()) == report
    # only "defying" has answers: its 100 items are scored, 99 of them missing (0);
    # whoops_5 scores [1, 0, 1] = 2/3 (questions 2 and 3 both depend on question 1 only)
    assert report["models"] == {
        "default": {
            "overall": round(100 * (2 / 3) / 100, 4),
            "by_category": {"defying": round(100 * (2 / 3) / 100, 4)},
            "n_items": 100,
            "n_missing": 99,
        }
    }


def test_a_model_with_only_unknown_rows_is_reported_not_scored(mini):
    df = pd.DataFrame(
        {
            "t2i_model": ["A", "C"],
            "item_id": ["countbench_1", "parti_1"],
            "question_id": [1, 1],
            "answer": ["yes", "yes"],
        }
    )
    report = rescore_answers(df, mini)
    assert list(report["models"]) == ["A"]
    assert report["diagnostics"]["unscored_models"] == ["C"]
    assert "C: no answer names a benchmark question; not scored" in format_table(report)


def test_csv_with_a_byte_order_mark(tmp_path, mini):
    path = tmp_path / "bom.csv"
    path.write_text("item_id,question_id,answer\ncountbench_1,1,yes\n", encoding="utf-8-sig")
    report = rescore_answers(read_answers(str(path)), mini)
    assert report["models"]["default"]["by_category"] == {"count": 100.0}


def test_rescore_file_reads_fsspec_urls(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    with fs.open("/rescore/answers.csv", "wb") as f, open(RELEASE, "rb") as src:
        shutil.copyfileobj(src, f)
    report = rescore_file("dsg1k", "memory:///rescore/answers.csv", "memory:///rescore/out.json")
    assert report["models"]["sd2dot1"]["n_items"] == 1060
    assert json.loads(fs.cat_file("/rescore/out.json")) == report


def test_missing_columns_name_expected_and_found(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("item,qid,answer\nvrd_1,1,yes\n")
    with pytest.raises(ValueError) as e:
        rescore_file("dsg1k", str(path))
    message = str(e.value)
    assert "missing column(s) ['item_id', 'question_id (or proposition_id)']" in message
    assert "Expected columns: item_id, question_id (or proposition_id), answer" in message
    assert "Found: ['item', 'qid', 'answer']" in message


def test_other_errors(tmp_path, mini):
    with pytest.raises(ValueError, match="use one of \\['dsg1k'\\]"):
        rescore_file("geneval", str(MINI_ANSWERS))
    with pytest.raises(ValueError, match="unknown format; use a .csv"):
        read_answers(str(tmp_path / "answers.json"))
    unknown = pd.DataFrame({"item_id": ["parti_1"], "question_id": [1], "answer": ["yes"]})
    with pytest.raises(ValueError, match="no row names a dsg1k item and question"):
        rescore_answers(unknown, mini)
    with pytest.raises(ValueError, match="DSG rules 'strict' unknown"):
        rescore_answers(unknown, mini, "strict")
