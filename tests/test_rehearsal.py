"""Rehearsals: a real preset with same-architecture stand-ins, shrunk to minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from selma_ray.config import ConfigError, load_config, validate_config
from selma_ray.rehearsal import MODEL_FIELDS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", ["sd15", "sd2", "sdxl"])
def test_rehearsal_replaces_every_model_and_keeps_the_presets_choices(preset):
    real = load_config(preset=preset)
    rehearsal = load_config(preset=preset, overrides=["rehearse=true"])
    # every model field in use now names a tiny stand-in, recorded against the real id
    stand_ins = rehearsal.rehearsal["stand_ins"]
    for section, name in MODEL_FIELDS:
        was = getattr(getattr(real, section), name)
        now = getattr(getattr(rehearsal, section), name)
        if was is None:
            assert now is None
            continue
        assert now.startswith("tiny:"), (section, name, now)
        assert stand_ins[was] == now
    # ... everything else the preset chose stays
    assert rehearsal.prompts.engine == real.prompts.engine == "vllm"
    assert rehearsal.merge == real.merge
    assert rehearsal.eval.benchmarks == real.eval.benchmarks
    assert [s.name for s in rehearsal.prompts.skills] == [s.name for s in real.prompts.skills]
    assert rehearsal.images.exact_per_image == real.images.exact_per_image
    # ... and counts, sizes and resources shrink to a CPU's minutes
    assert rehearsal.prompts.num_prompts <= 6 < real.prompts.num_prompts
    assert rehearsal.train.max_steps <= 4 and rehearsal.train.resolution <= 64
    assert rehearsal.images.resolution <= 64 and rehearsal.eval.max_items <= 3
    assert not rehearsal.train.use_gpu and rehearsal.train.mixed_precision == "no"
    for pool in (
        rehearsal.prompts.vllm.pool,
        rehearsal.images.pool,
        rehearsal.train.cache_pool,
        rehearsal.eval.pool,
        rehearsal.serve.pool,
    ):
        assert pool.gpus == 0 and pool.max_size == 1 and pool.resources == {}
    # the LoRA scale alpha / rank survives the smaller rank
    assert rehearsal.train.alpha / rehearsal.train.rank == real.train.alpha / real.train.rank
    shrunk = rehearsal.rehearsal["shrunk"]
    assert shrunk["train.max_steps"] == {"from": real.train.max_steps, "to": 4}


@pytest.mark.parametrize("preset", ["sd15", "sd2", "sdxl"])
def test_rehearsal_of_a_cluster_config_runs_its_pools_on_the_local_cpu(preset):
    """configs/<preset>.yaml pins vLLM to cluster.yaml's llm_worker nodes (``llm_node``); its
    rehearsal asks for no resource a laptop lacks, and stage 1 is the preset's own."""
    path = str(ROOT / "configs" / f"{preset}.yaml")
    assert load_config(path).prompts.vllm.pool.resources == {"llm_node": 1.0}
    cfg = load_config(path, overrides=["rehearse=true"])
    assert cfg.prompts.vllm.pool.resources == {} and cfg.prompts.vllm.pool.gpus == 0
    shrunk = cfg.rehearsal["shrunk"]["prompts.vllm.pool"]
    assert (shrunk["from"]["resources"], shrunk["to"]["resources"]) == ({"llm_node": 1.0}, {})
    same = load_config(preset=preset, overrides=["rehearse=true"])
    assert cfg.fingerprint(("prompts",)) == same.fingerprint(("prompts",))


def test_weak_to_strong_survives_the_rehearsal():
    cfg = load_config(preset="sdxl", overrides=["rehearse=true"])
    assert (cfg.images.model, cfg.train.base_model) == ("tiny:sd21-base", "tiny:sdxl")
    drawn = cfg.variant_images()
    assert drawn.model == "tiny:sdxl"  # eval and serving draw with the experts' model


def test_rehearsal_is_idempotent_through_the_saved_config():
    cfg = load_config(preset="sdxl", overrides=["rehearse=true"])
    again = validate_config(cfg.model_dump(mode="json"))
    assert again == cfg


def test_a_model_without_a_stand_in_is_refused_naming_the_field(tmp_path):
    from selma_ray.cli import main

    with pytest.raises(ConfigError, match=r"images\.model: .*'someone/custom-model'"):
        load_config(preset="sd15", overrides=["rehearse=true", "images.model=someone/custom-model"])
    code = main(
        [
            "run", "--preset", "sd15", "--rehearse", "--run-dir", str(tmp_path / "run"),
            "--set", "eval.vqa_model=someone/custom-vqa",
        ]
    )  # fmt: skip
    assert code == 2
    assert not (tmp_path / "run").exists()


def test_tiny_refs_and_the_tiny_preset_pass_through():
    cfg = load_config(overrides=["rehearse=true"])
    assert cfg.images.model == "tiny:sd" and cfg.rehearsal["stand_ins"] == {}
