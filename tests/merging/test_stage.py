"""The merge stage over a run directory: files, card, fused pipeline, errors
(selma_ray.merging.stage)."""

from __future__ import annotations

import json
import shutil

import pytest
from diffusers import DiffusionPipeline

from selma_ray import layout
from selma_ray.config import ConfigError, load_config
from selma_ray.merging import alpha_from_metadata, merge_run, read_lora_bytes, run_merge_stage
from selma_ray.storage import RunDir

# --------------------------------------------------------------------------- (f) merge_run


def _run_dir(tmp_path, experts) -> RunDir:
    rd = RunDir(str(tmp_path / "run"))
    for skill, d in experts.items():
        shutil.copytree(d, rd.path("experts", skill))
    return rd


def test_merge_run_writes_lora_card_and_fused_pipeline(
    sd_path, experts, spec, make_pipe, draw, tmp_path
):
    rd = _run_dir(tmp_path, experts)
    cfg = load_config(overrides=[f"prompts.skills={spec.skills}", "merge.export_fused=true"])
    counts = run_merge_stage(cfg, rd)
    assert counts == {
        "experts": 3,
        "method": "linear",
        "rank": 9,
        "modules": 56,
        "exact": True,
        "fused": True,
    }
    info = json.loads(rd.read_text("merged", "merge.json"))
    assert info["weights"] == dict.fromkeys(spec.skills, 1 / 3)
    assert [e["selected_step"] for e in info["experts"]] == [10, 11, 12]
    card = rd.read_text("merged", "README.md")
    for text in ("tiny:sd", "coco", "countbench", "whoops", "`linear`", "load_lora_weights"):
        assert text in card
    assert "| coco | 0.3333 | 2 | 4 | 20 | 10 |" in card
    assert rd.read_text("merged", "pipeline", "README.md") == card

    pipe = make_pipe(sd_path)
    base = draw(pipe)
    pipe.load_lora_weights(rd.path("merged"))
    lora = draw(pipe)
    fused = DiffusionPipeline.from_pretrained(rd.path("merged", "pipeline"))
    fused.set_progress_bar_config(disable=True)
    assert abs(lora - base).mean() > 1e-3
    assert abs(draw(fused) - lora).max() < 1e-4

    # method / weights overrides; wrong count names merge.weights and the expert order
    info = merge_run(
        cfg.model_copy(update={"merge": cfg.merge.model_copy(update={"export_fused": False})}),
        rd,
        method="svd",
        weights=[1.0, 0.5, 0.25],
    )
    assert info["method"] == "svd" and info["weights_source"] == "argument"
    assert not rd.exists("merged", "pipeline")
    with pytest.raises(ConfigError, match="merge.weights.*in order: coco, countbench, whoops"):
        merge_run(cfg, rd, weights=[1.0])


def test_merge_run_names_missing_and_mismatched_experts(experts, spec, tmp_path):
    rd = _run_dir(tmp_path, {s: experts[s] for s in spec.skills[:2]})
    cfg = load_config(overrides=[f"prompts.skills={spec.skills}"])
    with pytest.raises(FileNotFoundError, match=r"\['whoops'\].*experts stage"):
        merge_run(cfg, rd)
    shutil.copytree(experts["whoops"], rd.path("experts", "whoops"))
    meta = rd.read_json("experts", "whoops", "expert.json")
    rd.write_json({**meta, "base_model": "tiny:sd@3"}, "experts", "whoops", "expert.json")
    with pytest.raises(ValueError, match="different base models.*whoops"):
        merge_run(cfg, rd)


def test_merge_run_on_an_object_store_run_dir(experts, spec):
    """memory:// stands in for s3:// / gs://: files and the fused pipeline go through fsspec."""
    rd = RunDir("memory://selma-merge-test")
    for skill in spec.skills:
        for name in (layout.LORA_FILE, "expert.json"):
            rd.write_bytes((experts[skill] / name).read_bytes(), "experts", skill, name)
    cfg = load_config(
        overrides=[
            f"prompts.skills={spec.skills}",
            "merge.export_fused=true",
            "merge.method=dare_linear",
            "merge.weights=[1, 1, 1]",
        ]
    )
    info = merge_run(cfg, rd)
    assert info["weights_source"] == "merge.weights" and info["svd_rank"] == 9
    assert rd.exists("merged", "pipeline", "unet", "config.json")
    assert rd.exists("merged", "pipeline", "README.md")
    state, md = read_lora_bytes(rd.read_bytes("merged", layout.LORA_FILE))
    assert alpha_from_metadata(state, md) == 9.0 and "selma_ray.merge" in md
    rd.remove()
