"""Stage 5's saved work: answers.parquet's free_answer, folded answer parts (and a kill while
folding), CLIP / preference scores saved and reused, flagged images listed in the report."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from selma_ray import layout
from selma_ray.config import load_config
from selma_ray.evaluation import saved as saved_parts
from selma_ray.evaluation import stage as eval_stage
from selma_ray.evaluation.scoring import normalize_answer
from selma_ray.execution import InProcessExecutor, batch_to_rows
from selma_ray.storage import RunDir

OVERRIDES = [
    "eval.benchmarks=[dsg1k]",
    "eval.variants=[base]",
    "eval.max_items=3",
    "eval.rows_per_task=2",
    "images.steps=2",
    "train.resolution=32",  # the variants are drawn at the experts' training resolution
    "images.safety_checker=true",
]
SCORERS = ("clip", "pickscore", "imagereward", "hps")


class SpyExecutor(InProcessExecutor):
    """The in-process executor, recording each map: (class, wrapped scorer class, rows)."""

    def __init__(self) -> None:
        self.maps: list[tuple[str, str, int]] = []

    def map_rows(self, rows, fn_cls, **kw):
        inner = kw["fn_kwargs"].get("scorer_cls")
        self.maps.append((fn_cls.__name__, inner.__name__ if inner else "", len(rows)))
        return super().map_rows(rows, fn_cls, **kw)


@pytest.fixture(scope="module")
def patched():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def checker(tiny_models, install_flagging_checker, patched):
    """A flagging checker in every pipeline loaded with ``safety_checker=True``."""
    return install_flagging_checker(patched)


@pytest.fixture(scope="module")
def run(tiny_models, checker, tmp_path_factory):
    """One eval run (base variant, 3 DSG-1k items) whose pipeline has a flagging checker."""
    import torch

    torch.set_num_threads(1)
    rd = RunDir(str(tmp_path_factory.mktemp("eval-resume") / "run"))
    spy = SpyExecutor()
    eval_stage.run_eval_stage(load_config(overrides=OVERRIDES), rd, spy)
    return rd, spy


def _answers(rd: RunDir) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(rd.read_bytes(*layout.eval_answers())))


def test_answers_parquet_has_the_models_free_answer_beside_the_scored_answer(run):
    """free_answer is what the VQA model says (asked again here, batch by batch as the stage
    asked); answer, what DSG scoring used, is its normalised text."""
    from selma_ray.evaluation.benchmarks import load_dsg1k
    from selma_ray.evaluation.vqa import VQAScorer

    rd, _ = run
    df = _answers(rd)
    assert list(df.columns) == list(eval_stage.ANSWER_COLUMNS)
    report = rd.read_json(*layout.eval_report())
    items = {i.item_id: i for i in load_dsg1k().items}
    chosen = {"dsg1k": [items[i] for i in report["benchmarks"]["dsg1k"]]}
    rows = eval_stage.question_rows(rd, chosen, ["base"])
    assert len(df) == len(rows) > 3
    scorer = VQAScorer("tiny:vqa")
    again = [a for k in range(0, len(rows), 2)
             for a in scorer(eval_stage.rows_to_batch(rows[k : k + 2]))["answer"]]  # fmt: skip
    by_key = {eval_stage.answer_key(r): a for r, a in zip(rows, again, strict=True)}
    assert [by_key[eval_stage.answer_key(r)] for r in df.to_dict("records")] == list(
        df["free_answer"]
    )
    assert list(df["answer"]) == [normalize_answer(a) for a in df["free_answer"]]


def test_scored_answer_keeps_every_dsg_and_tifa_score():
    from selma_ray.evaluation.benchmarks import TifaItem, TifaQuestion
    from selma_ray.evaluation.scoring import score_tifa
    from selma_ray.evaluation.vqa import scored_answer

    assert scored_answer("Yes.", []) == "yes" and scored_answer(" NO ", []) == "no"
    assert scored_answer("yes, it is", []) == "yes it is"  # still not a yes
    assert scored_answer("Red!", ["blue", "red"]) == "red"
    assert scored_answer("purple", ["blue", "red"]) == "purple"  # names none: scored wrong
    assert scored_answer(None, ["blue", "red"]) == ""
    q = [TifaQuestion(question_id=i, question="?", choices=["blue", "red"], answer="red",
                      element="car", element_type="color") for i in range(3)]  # fmt: skip
    item = TifaItem(item_id="t", text="a red car", category="coco", questions=q)
    raw = {"t": {0: "Red!", 1: "purple", 2: " BLUE"}}
    scored = {"t": {k: scored_answer(a, ["blue", "red"]) for k, a in raw["t"].items()}}
    assert score_tifa([item], scored) == score_tifa([item], raw)


def test_a_run_folds_its_answer_parts_into_one_and_each_scorers_into_one(run):
    rd, spy = run
    n_questions = len(_answers(rd))
    asked = [m for m in spy.maps if m[0] == "AnswerSaver"]
    assert asked == [("AnswerSaver", "VQAScorer", n_questions)]  # in batches of 2
    assert n_questions > 2
    [part] = rd.listdir(*layout.eval_answer_parts())
    saved = eval_stage.saved_answers(rd, eval_stage.vqa_identity(_vqa()))
    assert len(saved) == n_questions
    scores = rd.listdir(*layout.eval_score_parts())
    assert len(scores) == len(SCORERS)  # one per scorer, folded from 2 (3 images, batches of 2)
    stats = rd.read_json(*layout.eval_stats())
    assert stats["asked_now"] == n_questions and stats["answered_before"] == 0
    assert set(stats["scores"]) == set(SCORERS)
    assert all(s["scored_now"] == s["images"] == 3 and s["scored_before"] == 0
               for s in stats["scores"].values())  # fmt: skip


def _vqa() -> dict:
    cfg = load_config(overrides=OVERRIDES).eval
    return {"model_ref": cfg.vqa_model, "answer_matcher": cfg.answer_matcher}


def test_flagged_eval_images_are_kept_black_and_listed_per_variant(run, checker):
    rd, _ = run
    report = rd.read_json(*layout.eval_report())
    flagged = report["variants"]["base"]["nsfw_flagged"]
    assert len(flagged) == checker.flagged == 1  # the second of 3 images drawn
    for item in report["benchmarks"]["dsg1k"]:
        pixels = _pixels(rd, item)
        assert (pixels.max() == 0) == (item in flagged), item
        marker = layout.flagged_marker(f"{item}.png")
        assert rd.exists(*layout.eval_images("base", marker)) == (item in flagged)
    assert any("safety checker: 1 image(s) flagged" in n for n in report["notes"])
    assert set(report["variants"]["base"]["clip_items"]) == set(report["benchmarks"]["dsg1k"])


def _pixels(rd: RunDir, item: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(rd.read_bytes(*layout.eval_images("base", f"{item}.png")))) as im:
        return np.asarray(im.convert("RGB"))


def test_a_rerun_asks_scores_and_draws_nothing_and_reports_the_same(run, checker):
    rd, _ = run
    report = rd.read_json(*layout.eval_report())
    table = _answers(rd)
    spy = SpyExecutor()
    eval_stage.run_eval_stage(load_config(overrides=OVERRIDES), rd, spy)
    assert spy.maps == []  # no image drawn, no question asked, no image scored
    assert rd.read_json(*layout.eval_report()) == report
    pd.testing.assert_frame_equal(_answers(rd), table)
    stats = rd.read_json(*layout.eval_stats())
    assert stats["asked_now"] == 0 and stats["answered_before"] == len(table)
    assert all(s["scored_now"] == 0 and s["scored_before"] == 3
               for s in stats["scores"].values())  # fmt: skip
    assert checker.flagged == 1


def test_answer_parts_saved_before_free_answer_resume(run, tmp_path):
    """Parts without free_answer (written before the column): nothing is asked again, their
    answer is both the free answer and (normalised) the scored one."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    rd, _ = run
    copy = RunDir(str(tmp_path / "run"))
    shutil.copytree(rd.path(), copy.path())
    said = {}
    rng = np.random.default_rng(1)
    for name in copy.listdir(*layout.eval_answer_parts()):
        path = copy.path(*layout.eval_answer_parts(name))
        rows = pq.read_table(path).drop_columns(["free_answer"]).to_pylist()
        for row in rows:
            row["answer"] = str(rng.choice(["Yes.", " no", "YES", "maybe so"]))
            said[eval_stage.answer_key(row)] = row["answer"]
        pq.write_table(pa.Table.from_pylist(rows), path)
    spy = SpyExecutor()
    eval_stage.run_eval_stage(load_config(overrides=OVERRIDES), copy, spy)
    assert [m for m in spy.maps if m[0] == "AnswerSaver"] == []
    df = _answers(copy)
    keys = [eval_stage.answer_key(r) for r in df.to_dict("records")]
    assert list(df["free_answer"]) == [said[k] for k in keys]
    assert list(df["answer"]) == [normalize_answer(said[k]) for k in keys]
    assert set(df["answer"]) <= {"yes", "no", "maybe so"} and "yes" in set(df["answer"])


# ------------------------------------------------------------------------ folding answer parts


class EchoScorer:
    """A stand-in VQA scorer: answers each question with its text, records what it was asked."""

    asked: list = []

    def __init__(self, model_ref: str, cache_dir: str | None = None) -> None:
        self.model_ref = model_ref

    def __call__(self, batch):
        rows = batch_to_rows(batch)
        EchoScorer.asked.extend(eval_stage.answer_key(r) for r in rows)
        out = dict(batch)
        out["answer"] = np.array([f"{self.model_ref}: {r['question']}" for r in rows], dtype=object)
        out["free_answer"] = out["answer"]
        return out


def _question_rows(n: int) -> list[dict]:
    return [
        {
            "model": ["base", "merged"][i % 2],
            "benchmark": "dsg1k",
            "item_id": f"item-{i // 4}",
            "question_id": i % 4 + 1,
            "question": f"Is there thing {i}?",
            "choices": "",
            "image_uri": f"/nowhere/{i}.png",
        }
        for i in range(n)
    ]


def _ask(rd: RunDir, rows: list[dict], ref: str = "tiny:vqa") -> list[dict]:
    cfg = load_config(overrides=["eval.rows_per_task=3"])
    EchoScorer.asked = []
    return eval_stage.answer_questions(
        cfg, rd, rows, EchoScorer, {"model_ref": ref}, InProcessExecutor()
    )


def _part_bytes(rd: RunDir) -> dict[str, bytes]:
    folder = layout.eval_answer_parts
    return {n: rd.read_bytes(*folder(n)) for n in rd.listdir(*folder())}


def test_a_kill_between_writing_the_folded_part_and_removing_the_others_resumes(tmp_path):
    """The folding's pieces called by hand, as a kill would leave them: the folded part is
    written, none (then only some) of the parts it folds are removed. A rerun asks nothing and
    counts each answer once; the next fold leaves one part holding each answer once."""
    rd = RunDir(str(tmp_path / "run"))
    rows = _question_rows(10)
    vqa = eval_stage.vqa_identity({"model_ref": "tiny:vqa"})
    first = _ask(rd, rows)
    parts = rd.listdir(*layout.eval_answer_parts())
    assert len(parts) == 4  # batches of 3, 3, 3, 1
    saved = eval_stage.saved_answers(rd, vqa)
    folded = saved_parts.write_part(
        rd, layout.eval_answer_parts, list(saved.values()), "vqa", vqa, eval_stage.answer_key
    )  # killed here: nothing removed yet
    assert len(rd.listdir(*layout.eval_answer_parts())) == 5
    by_key = lambda rs: {eval_stage.answer_key(r): r["answer"] for r in rs}  # noqa: E731
    for removed in (0, 2):  # a kill before any removal, then one after two removals
        for name in parts[:removed]:
            rd.remove(*layout.eval_answer_parts(name))
        again = _ask(rd, rows)
        assert EchoScorer.asked == []
        assert len(again) == 10 and by_key(again) == by_key(first)
        assert rd.read_json(*layout.eval_stats())["answered_before"] == 10
    assert eval_stage.compact_answers(rd, vqa, again) == 3  # the folded part and 2 left
    assert rd.listdir(*layout.eval_answer_parts()) == [folded]
    assert sorted(eval_stage.saved_answers(rd, vqa)) == sorted(by_key(first))
    import pyarrow.parquet as pq

    table = pq.read_table(rd.path(*layout.eval_answer_parts(folded)))
    assert table.num_rows == 10 and set(table["vqa"].to_pylist()) == {vqa}
    assert eval_stage.compact_answers(rd, vqa, again) == 0  # one part: nothing to fold
    _ask(rd, rows)
    assert EchoScorer.asked == []


def test_folding_leaves_the_parts_of_other_vqa_settings(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    rows = _question_rows(7)
    _ask(rd, rows, ref="tiny:vqa@2")
    other = _part_bytes(rd)
    assert len(other) == 3
    first = _ask(rd, rows)
    vqa = eval_stage.vqa_identity({"model_ref": "tiny:vqa"})
    assert eval_stage.compact_answers(rd, vqa, first) == 3
    after = _part_bytes(rd)
    assert {n: after[n] for n in other} == other  # untouched
    assert len(after) == len(other) + 1
    _ask(rd, rows, ref="tiny:vqa@2")
    assert EchoScorer.asked == []


def test_a_changed_question_is_folded_with_its_new_answer(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    rows = _question_rows(6)
    _ask(rd, rows)
    changed = [dict(r) for r in rows]
    changed[4]["question"] = "Is there another thing?"
    answered = _ask(rd, changed)
    assert EchoScorer.asked == [eval_stage.answer_key(changed[4])]
    vqa = eval_stage.vqa_identity({"model_ref": "tiny:vqa"})
    eval_stage.compact_answers(rd, vqa, answered)
    assert len(rd.listdir(*layout.eval_answer_parts())) == 1
    _ask(rd, changed)
    assert EchoScorer.asked == []  # the fold kept the answer to the new question


# ------------------------------------------------------------------------ saved scores


class LengthScorer:
    """A stand-in image scorer: the text's length plus a tenth of the model reference's."""

    column = "length_score"
    scored: list = []

    def __init__(self, model_ref: str, cache_dir: str | None = None) -> None:
        self.model_ref = model_ref

    def __call__(self, batch):
        rows = batch_to_rows(batch)
        LengthScorer.scored.extend(eval_stage.score_key(r) for r in rows)
        out = dict(batch)
        out[self.column] = np.array([len(r["text"]) + len(self.model_ref) / 10 for r in rows])
        return out


def _image_rows(n: int) -> list[dict]:
    return [
        {"model": ["base", "merged"][i % 2], "item_id": f"item-{i // 2}",
         "text": "a cat " * (i + 1), "image_uri": f"/nowhere/{i}.png"}
        for i in range(n)
    ]  # fmt: skip


def _score(rd: RunDir, rows: list[dict], ref: str = "m") -> tuple[dict, dict]:
    cfg = load_config(overrides=["eval.rows_per_task=2"])
    LengthScorer.scored = []
    return eval_stage.score_images(
        cfg, rd, rows, "length", LengthScorer, {"model_ref": ref}, InProcessExecutor()
    )


def test_scores_are_saved_and_a_rerun_scores_only_what_has_none(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    rows = _image_rows(5)
    keys = [eval_stage.score_key(r) for r in rows]
    expected = {k: len(r["text"]) + 0.1 for k, r in zip(keys, rows, strict=True)}
    # as after a kill: two batches' scores were saved
    saved_parts.write_score_part(rd, [{**rows[0], "score": 1.5}], "ignored: another scorer")
    tag = eval_stage.scorer_identity("length", {"model_ref": "m"})
    saved = [{k: r[k] for k in ("model", "item_id", "text")} for r in rows[:2]]
    saved_parts.write_score_part(rd, [{**s, "score": expected[keys[i]]}
                                     for i, s in enumerate(saved)], tag)  # fmt: skip
    scores, stats = _score(rd, rows)
    assert scores == pytest.approx(expected)
    assert sorted(LengthScorer.scored) == sorted(keys[2:])
    assert stats == {"model_ref": "m", "images": 5, "scored_before": 2, "scored_now": 3}
    # folded: one part for this scorer (from 1 + 2 batches of 2), the other scorer's kept
    assert len(rd.listdir(*layout.eval_score_parts())) == 2
    assert eval_stage.saved_scores(rd, tag).keys() == set(keys)

    again, stats = _score(rd, rows)
    assert again == scores and LengthScorer.scored == []
    assert (stats["scored_before"], stats["scored_now"]) == (5, 0)

    changed = [dict(r) for r in rows]
    changed[3]["text"] = "a dog"
    _score(rd, changed)
    assert LengthScorer.scored == [keys[3]]
    other, _ = _score(rd, rows, ref="model-2")
    assert sorted(LengthScorer.scored) == sorted(keys)
    assert other == pytest.approx({k: v + 0.6 for k, v in expected.items()})
    stored = eval_stage.saved_scores(rd, tag)
    assert json.loads(tag) == {"scorer": "length", "model_ref": "m"}
    assert stored[keys[3]]["text"] == "a dog"
