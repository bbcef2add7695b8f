"""Benchmark loaders: vendored DSG-1k, its dirty cells, TIFA v1.0 format, skill prompt rows."""

from __future__ import annotations

import hashlib
import inspect
import json
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from selma_ray.evaluation import benchmarks
from selma_ray.evaluation.benchmarks import (
    DSG1K_CATEGORIES,
    clean_dependency,
    dataset_category,
    load_dsg1k,
    load_skill_prompts,
    load_tifa,
)
from selma_ray.prompts.engines.base import Question as EngineQuestion
from selma_ray.storage import RunDir

DATA = Path(__file__).parent / "data"
DSG1K_SHA256 = "b7ce06ea8a0478ccfd8fba105ecd26d7d301eb99d5c412987546c4cc8e08917a"
HEADER = (
    "item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,"
    "question_natural_language\n"
)


@pytest.fixture(scope="module")
def dsg1k():
    return load_dsg1k()


# --------------------------------------------------------------------------- vendored file


def test_vendored_dsg1k_is_package_data_and_unmodified():
    folder = resources.files("selma_ray").joinpath("data", "dsg1k")
    data = folder.joinpath("dsg-1k-anns.csv").read_bytes()
    assert hashlib.sha256(data).hexdigest() == DSG1K_SHA256
    assert "Apache License" in folder.joinpath("LICENSE").read_text()
    readme = folder.joinpath("README.md").read_text()
    assert "Davidsonian Scene Graph" in readme and "unmodified" in readme


def test_loader_reads_the_package_resource_only(monkeypatch):
    source = inspect.getsource(benchmarks)
    assert "../shared" not in source and "/work/shared" not in source

    def no_file_reads(path):
        raise AssertionError(f"load_dsg1k() read {path} instead of the package resource")

    monkeypatch.setattr(benchmarks, "_read_text", no_file_reads)
    assert len(load_dsg1k().items) == 1060


def test_dsg1k_items_categories_and_questions(dsg1k):
    assert dsg1k.name == "dsg1k"
    assert len(dsg1k.items) == 1060
    assert dsg1k.report.n_questions == 8182 == sum(len(i.questions) for i in dsg1k.items)
    assert dsg1k.categories() == list(DSG1K_CATEGORIES)
    assert Counter(i.category for i in dsg1k.items) == {
        "tifa": 160,
        "paragraph": 200,
        "relation": 100,
        "count": 100,
        "real_user": 200,
        "pose": 100,
        "defying": 100,
        "text": 100,
    }
    assert not dsg1k.report.skipped
    item = dsg1k.by_id()["whoops_5"]
    assert item.text == "A rubix cube with ten squares of purple"
    assert [q.proposition_id for q in item.questions] == [1, 2, 3]
    q2 = item.questions[1]
    assert q2.question == "Is the rubix cube purple?"
    assert (q2.category_broad, q2.category_detailed) == ("attribute", "color")
    assert q2.tuple == "attribute - color (rubix cube, purple)"
    assert item.questions[0].dependency == [] and q2.dependency == [1]
    assert q2.dependency_raw == "1"


def test_dsg1k_dirty_dependency_cells_are_cleaned_and_reported(dsg1k):
    report = dsg1k.report
    non_integer = {
        (f.item_id, f.proposition_id): (f.raw, f.kept, f.dropped)
        for f in report.dependency_fixes
        if "non-integer text" in f.reasons
    }
    assert non_integer == {
        ("posescript_69", 9): ("5, right", [5], ["right"]),
        ("posescript_41", 10): ("5, outward", [5], ["outward"]),
        ("posescript_55", 8): ("2, ground", [2], ["ground"]),
        ("stanford_paragraph_54", 13): ("5, background", [5], ["background"]),
        ("tifa160_67", 8): ("1, outside", [1], ["outside"]),
        ("stanford_paragraph_55", 10): ("1, baseball bat", [1], ["baseball bat"]),
        ("stanford_paragraph_72", 14): ("6, air", [6], ["air"]),
        ("posescript_19", 8): ("3, air", [3], ["air"]),
        ("posescript_19", 10): ("4, air", [4], ["air"]),
        ("posescript_19", 12): ("5, air", [5], ["air"]),
    }
    assert report.fix_counts() == {
        "non-integer text": 10,
        "self-reference": 44,
        "unknown parent": 8,  # tifa160_134 has no question 1 in the release
    }
    q = dsg1k.by_id()["posescript_69"].questions[8]
    assert (q.proposition_id, q.dependency, q.dependency_raw) == (9, [5], "5, right")
    summary = report.summary(limit=100)
    assert "posescript_69 q9: dependency '5, right' -> kept [5], dropped ['right']" in summary
    assert "62 dependency cell(s) cleaned" in summary
    assert json.loads(json.dumps(report.to_dict()))["n_items"] == 1060


@pytest.mark.parametrize(
    ("item_id", "category"),
    [
        ("tifa160_3", "tifa"),
        ("stanford_paragraph_1", "paragraph"),
        ("localized_narratives_7", "paragraph"),
        ("countbench_0", "count"),
        ("vrd_3", "relation"),
        ("diffusiondb_2", "real_user"),
        ("midjourney_9", "real_user"),
        ("posescript_4", "pose"),
        ("whoops_5", "defying"),
        ("drawtext_1", "text"),
    ],
)
def test_dataset_category(item_id, category):
    assert dataset_category(item_id) == category


def test_dataset_category_unknown_prefix():
    with pytest.raises(ValueError, match=r"'parti_1' has no known DSG-1k prefix"):
        dataset_category("parti_1")


@pytest.mark.parametrize(
    ("raw", "kept", "dropped", "reasons"),
    [
        ("0", [], [], []),
        ("", [], [], []),
        ("1,2", [1, 2], [], []),
        ("1,2, 4", [1, 2, 4], [], []),
        ("2,2", [2], [], []),
        ("5, right", [5], ["right"], ["non-integer text"]),
        ("1,", [1], [""], ["non-integer text"]),
        ("air", [], ["air"], ["non-integer text"]),
        ("3,6", [3], ["6"], ["self-reference"]),
        ("9", [], ["9"], ["unknown parent"]),
        ("2, up, 6", [2], ["up", "6"], ["non-integer text", "self-reference"]),
        ([0], [], [], []),
        ([1, 2], [1, 2], [], []),
        (3, [3], [], []),
        (None, [], [], []),
    ],
)
def test_clean_dependency(raw, kept, dropped, reasons):
    parents, fix = clean_dependency("vrd_1", 6, raw, known_ids=range(1, 7))
    assert parents == kept
    if not dropped:
        assert fix is None
    else:
        assert fix is not None
        assert (fix.kept, fix.dropped, fix.reasons) == (kept, dropped, reasons)


def test_load_dsg1k_dirty_file_never_crashes(tmp_path):
    path = tmp_path / "anns.csv"
    path.write_text(
        HEADER
        + 'vrd_1,"A cat, a ""dog"", a box",cat,1,0,entity,whole,e,Is there a cat?\n'
        + 'vrd_1,"A cat, a ""dog"", a box",dog,2,"1, left",entity,whole,e,Is there a dog?\n'
        + 'vrd_1,"A cat, a ""dog"", a box",box,3,"2,3,7",entity,whole,e,Is there a box?\n'
        + "vrd_1,x,x,two,0,entity,whole,e,Bad id?\n"
        + "vrd_1,x,x,2,0,entity,whole,e,Repeated?\n"
        + ",x,x,1,0,entity,whole,e,No item?\n"
        + "parti_1,A thing,x,1,,entity,whole,e,Is there a thing?\n"
    )
    bench = load_dsg1k(str(path))
    assert [i.item_id for i in bench.items] == ["vrd_1", "parti_1"]
    vrd = bench.by_id()["vrd_1"]
    assert vrd.text == 'A cat, a "dog", a box'
    assert [q.dependency for q in vrd.questions] == [[], [1], [2]]
    assert bench.by_id()["parti_1"].category == "unknown"
    report = bench.report
    assert report.fix_counts() == {
        "non-integer text": 1,
        "self-reference": 1,
        "unknown parent": 1,
    }
    assert report.skipped_counts() == {
        "empty item_id": 1,
        "proposition_id is not a positive integer": 1,
        "repeated proposition_id": 1,
    }
    assert any("unknown item_id prefix" in n for n in report.notes)
    assert any("disagree on the prompt text" in n for n in report.notes)
    assert (report.n_items, report.n_questions) == (2, 4)


def test_load_dsg1k_wrong_file_names_missing_columns(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("item_id,prompt\nvrd_1,x\n")
    with pytest.raises(ValueError, match=r"column\(s\) \['text', 'proposition_id'"):
        load_dsg1k(str(path))


# --------------------------------------------------------------------------- TIFA


def test_load_tifa_sample():
    bench = load_tifa(str(DATA / "tifa_v1.0_sample_question_answers.json"))
    assert bench.name == "tifa"
    assert [i.item_id for i in bench.items] == [
        "coco_101",
        "drawbench_7",
        "partiprompt_12",
        "paintskill_3",
        "coco_202",
    ]
    assert (bench.report.n_items, bench.report.n_questions) == (5, 20)
    assert bench.categories() == ["coco", "drawbench", "partiprompt", "paintskill"]
    item = bench.by_id()["drawbench_7"]
    assert item.text == "Two cats sleeping on a green sofa."
    assert [q.question_id for q in item.questions] == [1, 2, 3, 4]
    q = item.questions[1]
    assert (q.question, q.choices, q.answer) == (
        "how many cats are there?",
        ["1", "2", "3", "4"],
        "2",
    )
    assert (q.element, q.element_type, q.question_type) == ("two", "counting", None)
    assert bench.by_id()["partiprompt_12"].questions[0].question_type == "style"
    assert not bench.report.notes


def test_load_tifa_notes_answer_outside_choices(tmp_path):
    entry = {
        "id": "coco_1",
        "caption": "c",
        "question": "q?",
        "choices": ["yes", "no"],
        "answer": "maybe",
        "element": "e",
        "element_type": "object",
    }
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([entry]))
    bench = load_tifa(str(path))
    assert bench.report.notes == ["coco_1 q1: answer 'maybe' is not one of ['yes', 'no']"]


def test_load_tifa_notes_per_question_ids(tmp_path):
    base = {"caption": "c", "choices": ["yes", "no"], "answer": "yes", "element": "e"}
    entries = [
        {**base, "id": f"coco_1_{n}", "question": f"q{n}?", "element_type": "object"}
        for n in (1, 2)
    ]
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(entries))
    bench = load_tifa(str(path))
    assert len(bench.items) == 2
    assert "every question has its own id while captions repeat" in bench.report.notes[0]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"id": "coco_1"}', "not a list"),
        ("[{]", "is not JSON"),
        ('[{"id": "coco_1", "caption": "c"}]', r"entry 0: field\(s\) \['question'"),
        (
            '[{"id": "a", "caption": "c", "question": "q", "choices": [], "answer": "x",'
            ' "element": "e", "element_type": "t"}]',
            "'choices' must be a non-empty list",
        ),
    ],
)
def test_load_tifa_rejects_other_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_tifa(str(path))


# --------------------------------------------------------------------------- skill prompts


def _engine_questions():
    return [
        EngineQuestion(1, "Is there a cup?", "entity", "whole", "entity - whole (cup)").to_dict(),
        EngineQuestion(
            2, "Is the cup red?", "attribute", "color", "attribute - color (cup, red)", [1]
        ).to_dict(),
    ]


def test_load_skill_prompts(tmp_path):
    rd = RunDir(str(tmp_path))
    rd.write_jsonl(
        [
            {
                "id": "color-00000",
                "skill": "color",
                "prompt": "a red cup",
                "questions": _engine_questions(),
            },
            {"id": "color-00001", "skill": "color", "prompt": "a blue car", "questions": None},
            {"id": "color-00002", "skill": "color", "prompt": "a green hat"},
            {"id": "color-00003", "skill": "color", "prompt": "a pink pig", "questions": []},
            {
                "id": "color-00004",
                "skill": "color",
                "prompt": "a gold ring",
                "questions": [
                    {"proposition_id": 1, "question": "Is there a ring?", "dependency": "0"},
                    {"proposition_id": 2, "question": "Is it gold?", "dependency": "1, ring"},
                ],
            },
            {
                "id": "color-00005",
                "skill": "color",
                "prompt": "x",
                "questions": [{"question": "?"}],
            },
            {
                "id": "color-00000",
                "skill": "color",
                "prompt": "again",
                "questions": _engine_questions(),
            },
        ],
        "prompts",
        "color.jsonl",
    )
    rd.write_jsonl(
        [
            {
                "id": "count-00000",
                "skill": "count",
                "prompt": "two cups",
                "questions": _engine_questions(),
            }
        ],
        "prompts",
        "count.jsonl",
    )
    bench = load_skill_prompts(str(tmp_path), ["color", "count"])
    assert [i.item_id for i in bench.items] == ["color-00000", "color-00004", "count-00000"]
    assert [i.category for i in bench.items] == ["color", "color", "count"]
    assert bench.categories() == ["color", "count"]
    first = bench.items[0]
    assert first.text == "a red cup"
    assert [(q.proposition_id, q.dependency) for q in first.questions] == [(1, []), (2, [1])]
    assert first.questions[1].category_detailed == "color"
    assert first.questions[1].dependency_raw is None
    assert [q.dependency for q in bench.items[1].questions] == [[], [1]]
    report = bench.report
    assert report.skipped_counts() == {
        "no questions": 3,
        "proposition_id None is not a positive integer": 1,
        "repeated id": 1,
    }
    assert report.fix_counts() == {"non-integer text": 1}
    assert (report.n_items, report.n_questions) == (3, 6)


def test_load_skill_prompts_in_memory_run_dir():
    rd = RunDir("memory://eval-skills")
    rd.write_jsonl(
        [{"id": "s-1", "skill": "s", "prompt": "p", "questions": _engine_questions()}],
        "prompts",
        "s.jsonl",
    )
    bench = load_skill_prompts(rd, ["s"])
    assert [i.item_id for i in bench.items] == ["s-1"]


def test_load_skill_prompts_missing_skill_file(tmp_path):
    with pytest.raises(ValueError, match=r"color\.jsonl does not exist; run the prompts stage"):
        load_skill_prompts(str(tmp_path), ["color"])
    with pytest.raises(ValueError, match="no skills given"):
        load_skill_prompts(str(tmp_path), [])
