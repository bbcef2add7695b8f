"""Scoring core: answer normalisation, DSG zeroing rules, aggregation, TIFA, CLIPScore."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from selma_ray.evaluation.benchmarks import BenchmarkItem, Question, load_tifa
from selma_ray.evaluation.scoring import (
    DEFAULT_RULES,
    REFERENCE_RULES,
    TRANSITIVE_RULES,
    DSGRules,
    clip_score,
    has_dirty_dependency,
    is_yes,
    match_choice,
    normalize_answer,
    resolve_rules,
    score_dsg,
    score_dsg_item,
    score_tifa,
)

DATA = Path(__file__).parent / "data"
DIRECT = DSGRules(zeroing="direct")


def make_item(item_id, deps, category="tifa", broad=None, raw=None):
    """An item with questions 1..n; ``deps[i]`` lists the parents of question i+1."""
    questions = [
        Question(
            proposition_id=i,
            question=f"q{i}?",
            category_broad=(broad or {}).get(i, "entity"),
            dependency=list(parents),
            dependency_raw=(raw or {}).get(i),
        )
        for i, parents in enumerate(deps, start=1)
    ]
    return BenchmarkItem(item_id, f"prompt {item_id}", category, questions)


def answers(*values):
    return {i: v for i, v in enumerate(values, start=1)}


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("answer", "yes"),
    [
        ("yes", True),
        ("Yes.", True),
        ("  YES ", True),
        ("yes!", True),
        ("\tYes\n", True),
        ("no", False),
        ("No.", False),
        ("yes, it is", False),
        ("yess", False),
        ("", False),
        (None, False),
        (float("nan"), False),
        ("unanswerable", False),
    ],
)
def test_is_yes(answer, yes):
    assert is_yes(answer) is yes


def test_normalize_answer():
    assert normalize_answer("  A  Lamp-Post! ") == "a lamp post"
    assert normalize_answer(3) == "3"
    assert normalize_answer(None) == normalize_answer(math.nan) == ""


# --------------------------------------------------------------------------- DSG items


def test_default_rules_zero_only_direct_children_and_drop_dirty_dependencies():
    """The default (REFERENCE_RULES, the DSG authors' script): a failed question zeroes its
    direct children only, and an item with a dirty dependency cell loses all dependencies."""
    chain = make_item("tifa160_1", [[], [1], [2]])  # 3 <- 2 <- 1
    s = score_dsg_item(chain, answers("no", "yes", "yes"))  # no rules given: the default
    assert s.question_scores == {1: 0.0, 2: 0.0, 3: 1.0}  # 3's parent 2 said yes: kept
    assert (s.score, s.zeroed) == (pytest.approx(1 / 3), (2,))
    dirty = make_item("posescript_1", [[], [1]], raw={1: "0", 2: "1, right"})
    assert score_dsg_item(dirty, answers("no", "yes")).question_scores == {1: 0.0, 2: 1.0}
    items = [chain, make_item("tifa160_2", [[], [1]])]
    given = {"tifa160_1": answers("no", "yes", "yes"), "tifa160_2": answers("no", "yes")}
    # tifa160_1: 1/3 (above); tifa160_2: [0, 0] = 0 -> overall 100 * (1/3 + 0) / 2
    assert score_dsg(items, given).overall == pytest.approx(100 * (1 / 3) / 2)
    assert score_dsg(items, given).overall == score_dsg(items, given, REFERENCE_RULES).overall


def test_transitive_rules_zero_every_descendant_of_a_failed_question():
    chain = make_item("tifa160_1", [[], [1], [2]])  # 3 <- 2 <- 1
    s = score_dsg_item(chain, answers("no", "yes", "yes"), TRANSITIVE_RULES)
    assert s.raw_scores == {1: 0.0, 2: 1.0, 3: 1.0}
    assert s.question_scores == {1: 0.0, 2: 0.0, 3: 0.0}
    assert (s.score, s.zeroed) == (0.0, (2, 3))
    direct = score_dsg_item(chain, answers("no", "yes", "yes"), DIRECT)
    assert direct.question_scores == {1: 0.0, 2: 0.0, 3: 1.0}
    assert direct.score == pytest.approx(1 / 3)
    mid = score_dsg_item(chain, answers("yes", "no", "yes"), TRANSITIVE_RULES)
    assert mid.question_scores == {1: 1.0, 2: 0.0, 3: 0.0}


def test_zeroing_follows_dependencies_not_question_order():
    backwards = make_item("vrd_1", [[2], [3], []])  # 1 <- 2 <- 3, listed child-first
    s = score_dsg_item(backwards, answers("yes", "yes", "no"), TRANSITIVE_RULES)
    assert s.question_scores == {1: 0.0, 2: 0.0, 3: 0.0}
    d = score_dsg_item(backwards, answers("yes", "yes", "no"), DIRECT)
    assert d.question_scores == {1: 1.0, 2: 0.0, 3: 0.0}


def test_cycles_and_self_references_terminate():
    cycle = make_item("vrd_2", [[2], [1], [3]])  # 1 <-> 2, 3 names itself
    assert score_dsg_item(cycle, answers("yes", "yes", "yes"), TRANSITIVE_RULES).score == 1.0
    s = score_dsg_item(cycle, answers("no", "yes", "yes"), TRANSITIVE_RULES)
    assert s.question_scores == {1: 0.0, 2: 0.0, 3: 1.0}


def test_unanswered_questions_and_missing_items_score_zero():
    item = make_item("vrd_3", [[], [], []])
    s = score_dsg_item(item, {1: "Yes."})
    assert (s.score, s.answered, s.unanswered) == (pytest.approx(1 / 3), True, (2, 3))
    missing = score_dsg_item(item, None)
    assert (missing.score, missing.answered, missing.unanswered) == (0.0, False, (1, 2, 3))


def test_dirty_cells_under_both_rules():
    dirty = make_item("posescript_1", [[], [1]], raw={1: "0", 2: "1, right"})
    clean = make_item("posescript_2", [[], [1]], raw={1: "0", 2: "1"})
    assert has_dirty_dependency(dirty.questions) and not has_dirty_dependency(clean.questions)
    no_yes = answers("no", "yes")
    assert (
        score_dsg_item(dirty, no_yes, TRANSITIVE_RULES).score == 0.0
    )  # kept parent 1 zeroes question 2
    assert score_dsg_item(dirty, no_yes, REFERENCE_RULES).score == 0.5  # item loses its deps
    assert score_dsg_item(clean, no_yes, REFERENCE_RULES).score == 0.0


def test_item_without_questions_is_an_error():
    with pytest.raises(ValueError, match="'empty_1' has no questions"):
        score_dsg_item(BenchmarkItem("empty_1", "x", "tifa", []), {})


def test_rules_validation_and_presets():
    assert DEFAULT_RULES == REFERENCE_RULES  # what the DSG authors compute
    assert (
        resolve_rules("transitive") == TRANSITIVE_RULES == DSGRules("transitive", "keep_integers")
    )
    assert (
        resolve_rules("reference")
        == REFERENCE_RULES
        == DSGRules("direct", "ignore_item_dependencies")
    )
    assert resolve_rules(DIRECT) is DIRECT
    with pytest.raises(
        ValueError, match=r"DSGRules.zeroing='all'; use one of \['transitive', 'direct'\]"
    ):
        DSGRules(zeroing="all")
    with pytest.raises(ValueError, match="DSG rules 'strict' unknown"):
        resolve_rules("strict")


# --------------------------------------------------------------------------- DSG aggregate


def test_score_dsg_aggregates_items_categories_and_broad_categories():
    items = [
        make_item("tifa160_1", [[], []], broad={2: "attribute"}),  # yes, no -> 0.5
        make_item("tifa160_2", [[]]),  # yes -> 1
        make_item("vrd_1", [[], [1]], category="relation", broad={2: "relation"}),  # no, yes -> 0
        make_item("vrd_2", [[]], category="relation"),  # no answers -> 0, missing
    ]
    given = {
        "tifa160_1": answers("yes", "no"),
        "tifa160_2": answers("Yes"),
        "vrd_1": answers("no", "yes"),
        "vrd_9": answers("yes"),  # not in items: ignored
    }
    result = score_dsg(items, given, category_order=["relation", "tifa"])
    assert result.overall == pytest.approx(37.5)
    # the SELMA paper's mean over the 6 questions: 1, 0 | 1 | 0, 0 (zeroed) | 0 (missing)
    assert result.question_mean == pytest.approx(100 * 2 / 6)
    assert result.by_category == {"relation": 0.0, "tifa": 75.0}
    assert list(result.by_category) == ["relation", "tifa"]
    assert result.by_broad_category == {"entity": 50.0, "attribute": 0.0, "relation": 0.0}
    assert (result.n_items, result.n_missing) == (4, 1)
    assert [s.item_id for s in result.item_scores if not s.answered] == ["vrd_2"]


def test_score_dsg_needs_items():
    with pytest.raises(ValueError, match="no items to score"):
        score_dsg([], {})


# --------------------------------------------------------------------------- TIFA


@pytest.mark.parametrize(
    ("answer", "choices", "match"),
    [
        ("Red.", ["red", "blue"], "red"),
        ("2", ["1", "2"], "2"),
        ("two", ["1", "2"], None),
        ("Lamp  Post", ["lamp post", "tree"], "lamp post"),
        ("a lamp post", ["lamp post", "tree"], None),
        (None, ["yes", "no"], None),
        ("", ["yes", "no"], None),
    ],
)
def test_match_choice(answer, choices, match):
    assert match_choice(answer, choices) == match


def test_score_tifa_on_the_sample():
    items = load_tifa(str(DATA / "tifa_v1.0_sample_question_answers.json")).items
    given = {
        "coco_101": answers("Yes", "red.", "no", "a lamp post"),  # 2/4; q4 matches no choice
        "drawbench_7": answers("yes", "3", "Sleeping", "yes"),  # 3/4
        # partiprompt_12: no answers -> 0, missing
        "paintskill_3": answers("yes", "YES!", ""),  # 2/3
        "coco_202": answers("yes", "raincoat", "yellow", "3", "yes", "yes"),  # 6/6
    }
    result = score_tifa(items, given)
    assert result.overall == pytest.approx(100 * (0.5 + 0.75 + 0 + 2 / 3 + 1) / 5)
    assert result.by_category == pytest.approx(
        {"coco": 75.0, "drawbench": 75.0, "partiprompt": 0.0, "paintskill": 200 / 3}
    )
    assert result.by_element_type == pytest.approx(
        {
            "object": 60.0,
            "color": 100.0,
            "activity": 200 / 3,
            "animal/human": 100.0,
            "counting": 50.0,
            "other": 0.0,
            "location": 50.0,
            "spatial": 0.0,
        }
    )
    assert (result.n_items, result.n_missing, result.n_unmatched) == (5, 1, 1)
    assert result.item_scores[0].unmatched == (4,)


# --------------------------------------------------------------------------- CLIPScore


def test_clip_score_formula():
    assert clip_score([1.0, 0.0], [1.0, 0.0]) == pytest.approx(2.5)
    assert clip_score([1.0, 0.0], [0.0, 3.0]) == 0.0
    assert clip_score([1.0, 0.0], [-1.0, 0.0]) == 0.0  # negative cosine is clipped
    assert clip_score([3.0, 4.0], [4.0, 3.0]) == pytest.approx(2.5 * 24 / 25)
    assert clip_score([1.0, 1.0], [1.0, 0.0], w=1.0) == pytest.approx(1 / math.sqrt(2))


def test_clip_score_batches_and_tensors():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    out = clip_score(image, text)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [2.5, 0.0])
    assert isinstance(clip_score(torch.ones(4), torch.ones(4)), float)


@pytest.mark.parametrize(
    ("image", "text", "match"),
    [
        ([1.0, 0.0], [1.0, 0.0, 0.0], "differ"),
        ([0.0, 0.0], [1.0, 0.0], "zero embedding"),
        ([[[1.0]]], [[[1.0]]], "must be a vector"),
    ],
)
def test_clip_score_errors(image, text, match):
    with pytest.raises(ValueError, match=match):
        clip_score(image, text)
