"""Stage 5 end to end on a tiny run dir: images per variant, VQA answers, scores, report, resume."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from selma_ray.config import load_config
from selma_ray.evaluation import stage as eval_stage
from selma_ray.images.generate import result_rows, rows_to_batch
from selma_ray.storage import RunDir

SKILLS = ("coco", "whoops")
WORDS = ("a red cat", "two dogs on a table", "a blue cat on the left", "a green dog")


def _cfg(*extra: str):
    return load_config(
        overrides=[
            f"prompts.skills=[{', '.join(SKILLS)}]",
            "images.resolution=32",
            "images.steps=2",
            "images.batch_size=4",
            "eval.max_items=2",
            "eval.batch_size=8",
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

    from selma_ray.merging_stage import merge_run
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
        rd.write_bytes(open(path, "rb").read(), "experts", skill, eval_stage.LORA_FILE)
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


@pytest.fixture(scope="module")
def in_process():
    """Replace the Ray layer with in-process actors (1 thread each)."""

    def draw(cfg, run_dir, rows, loras):
        gen = eval_stage.LoraImageGenerator(
            {**cfg.images.model_dump(mode="json"), "image_format": "png"},
            run_dir.url("eval", "images"),
            loras,
            num_threads=1,
        )
        out = []
        for i in range(0, len(rows), 4):
            out.extend(result_rows(gen(rows_to_batch(rows[i : i + 4]))))
        draw.calls += 1
        return out

    draw.calls = 0

    def map_(cfg, rows, fn_cls, kwargs):
        fn = fn_cls(**kwargs, num_threads=1)
        out = []
        for i in range(0, len(rows), cfg.eval.batch_size):
            out.extend(result_rows(fn(rows_to_batch(rows[i : i + cfg.eval.batch_size]))))
        return out

    return draw, map_


@pytest.fixture(scope="module")
def run(tiny_models, in_process, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalrun")
    rd = RunDir(str(root / "run"))
    _write_prompts(rd)
    _write_experts(rd, tiny_models["sd"], root / "lora")
    mp = pytest.MonkeyPatch()
    mp.setattr(eval_stage, "_draw", in_process[0])
    mp.setattr(eval_stage, "_map", in_process[1])
    try:
        counts = eval_stage.run_eval_stage(_cfg(), rd)
    finally:
        mp.undo()
    return rd, counts


VARIANTS = ["base", "expert-coco", "expert-whoops", "merged"]


def test_images_answers_and_report_json(run):
    rd, counts = run
    report = rd.read_json("eval", "report.json")
    assert list(report["variants"]) == VARIANTS
    n_items = sum(len(v) for v in report["benchmarks"].values())
    assert n_items == 4  # 2 DSG-1k + 2 held-out skill prompts
    assert counts["images"] == 4 * n_items == counts["images_written"]
    for v in VARIANTS:
        names = sorted(rd.listdir("eval", "images", v))
        assert names == sorted(f"{i}.png" for i in report["items"])
        entry = report["variants"][v]
        assert set(entry["dsg"]) == {"dsg1k", "skills"}
        assert 0 <= entry["dsg"]["dsg1k"]["overall"] <= 100
        assert entry["clip"] is not None and 0 <= entry["clip"] <= 2.5
    # held out: the skills items are the trainer's validation prompts, round-robin over skills
    skills_items = report["benchmarks"]["skills"]
    assert {report["items"][i]["category"] for i in skills_items} == set(SKILLS)
    # LoRA changes the pixels: expert images differ from base ones
    item = report["benchmarks"]["dsg1k"][0]
    base = rd.read_bytes("eval", "images", "base", f"{item}.png")
    assert base != rd.read_bytes("eval", "images", "expert-coco", f"{item}.png")
    assert base != rd.read_bytes("eval", "images", "merged", f"{item}.png")


def test_answers_parquet_rescores_to_the_stage_numbers(run):
    import pandas as pd

    from selma_ray.evaluation.rescore import rescore_file

    rd, _ = run
    df = pd.read_parquet(io.BytesIO(rd.read_bytes("eval", "answers.parquet")))
    assert {"item_id", "question_id", "answer", "model"} <= set(df.columns)
    assert set(df["model"]) == set(VARIANTS)
    report = rd.read_json("eval", "report.json")
    dsg_rows = df[df["benchmark"] == "dsg1k"]
    path = rd.path("eval", "dsg_only.parquet")
    dsg_rows.to_parquet(path, index=False)
    again = rescore_file("dsg1k", path)
    for v in VARIANTS:
        ours = report["variants"][v]["dsg"]["dsg1k"]
        assert again["models"][v]["overall"] == pytest.approx(ours["overall"], abs=1e-3)
        assert again["models"][v]["by_category"] == pytest.approx(ours["by_category"], abs=1e-3)
    # the whole table also rescores (skill rows are counted as unknown items, not fatal)
    whole = rescore_file("dsg1k", rd.path("eval", "answers.parquet"))
    assert whole["models"]["merged"]["overall"] == pytest.approx(
        report["variants"]["merged"]["dsg"]["dsg1k"]["overall"], abs=1e-3
    )


def test_resume_skips_existing_images(run, in_process):
    rd, _ = run
    before = {
        v: rd.read_bytes("eval", "images", v, n)
        for v in VARIANTS
        for n in rd.listdir("eval", "images", v)[:1]
    }
    calls = in_process[0].calls
    mp = pytest.MonkeyPatch()
    mp.setattr(eval_stage, "_draw", in_process[0])
    mp.setattr(eval_stage, "_map", in_process[1])
    try:
        counts = eval_stage.run_eval_stage(_cfg("eval.clip_model=null"), rd)
    finally:
        mp.undo()
    assert counts["images_written"] == 0
    assert in_process[0].calls == calls + 1
    for v in VARIANTS:
        n = rd.listdir("eval", "images", v)[0]
        assert rd.read_bytes("eval", "images", v, n) == before[v]


def test_round_robin_is_deterministic():
    from selma_ray.evaluation.benchmarks import load_dsg1k

    items = load_dsg1k().items
    picked = eval_stage.round_robin(items, 8)
    assert [i.item_id for i in picked] == [i.item_id for i in eval_stage.round_robin(items, 8)]
    assert len({i.category for i in picked}) == 8


def test_vqa_scorer_backends_on_tiny_models(tiny_models):
    import numpy as np
    from PIL import Image

    from selma_ray.evaluation.clip import ClipScorer
    from selma_ray.evaluation.vqa import VQAScorer, chat_prompt

    img = Image.new("RGB", (32, 32), (200, 20, 20))
    vqa = VQAScorer("tiny:vqa", num_threads=1, max_new_tokens=3)
    assert vqa.backend == "generate"
    answers = vqa.answer([img, img], ["Is there a cat?", "What color?"])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    clip = ClipScorer("tiny:clip", num_threads=1)
    s = clip.score([img, img], ["a red cat", "a dog"])
    assert s.shape == (2,) and np.all((s >= 0) & (s <= 2.5))
    assert chat_prompt("Is it red?", []) == "Is it red? Answer yes or no."


@pytest.mark.slow
def test_stage_on_ray_matches_in_process(run, ray_cluster, tmp_path):
    """The real Ray Data path (image actor pool with LoRA swaps, VQA + CLIP pools)."""
    import shutil

    rd, _ = run
    copy = RunDir(str(tmp_path / "run"))
    for folder in ("prompts", "experts", "merged"):
        shutil.copytree(rd.path(folder), copy.path(folder))
    counts = eval_stage.run_eval_stage(_cfg(), copy)
    assert counts["images_written"] == counts["images"]
    ours, ref = copy.read_json("eval", "report.json"), rd.read_json("eval", "report.json")
    for v in VARIANTS:
        assert ours["variants"][v]["dsg"] == ref["variants"][v]["dsg"]
        item = ref["benchmarks"]["dsg1k"][0]
        assert copy.read_bytes("eval", "images", v, f"{item}.png") == rd.read_bytes(
            "eval", "images", v, f"{item}.png"
        )
    assert copy.exists("eval", "report.html") and copy.exists("eval", "contact_sheet.png")


def test_tifa_benchmark_end_to_end(tiny_models, in_process, tmp_path):
    """eval.benchmarks=[tifa]: the TIFA file's captions are drawn, asked and scored."""
    import torch

    from selma_ray.evaluation.benchmarks import load_tifa

    torch.set_num_threads(1)
    tifa_file = Path(__file__).parent / "data" / "tifa_v1.0_sample_question_answers.json"
    rd = RunDir(str(tmp_path / "run"))
    _write_prompts(rd)
    _write_experts(rd, tiny_models["sd"], tmp_path / "lora")
    cfg = _cfg("eval.benchmarks=[tifa]", f"eval.tifa_path={tifa_file}", "eval.variants=[base]")
    mp = pytest.MonkeyPatch()
    mp.setattr(eval_stage, "_draw", in_process[0])
    mp.setattr(eval_stage, "_map", in_process[1])
    try:
        eval_stage.run_eval_stage(cfg, rd)
    finally:
        mp.undo()
    report = rd.read_json("eval", "report.json")
    tifa = report["variants"]["base"]["tifa"]
    captions = load_tifa(str(tifa_file)).items
    assert tifa["n_items"] == min(len(captions), cfg.eval.max_items)
    assert 0 <= tifa["overall"] <= 100 and tifa["by_element_type"]
    # every TIFA question was put to the VQA model with its choices
    answers = pd.read_parquet(rd.path("eval", "answers.parquet"))
    assert set(answers["benchmark"]) == {"tifa"}
    asked = answers.groupby("item_id").size().to_dict()
    expected = {c.item_id: len(c.questions) for c in captions if c.item_id in asked}
    assert asked == expected
