from __future__ import annotations

from pathlib import Path

import pytest

from selma_ray.config import (
    PRESETS,
    ConfigError,
    SelmaConfig,
    fingerprint_hash,
    load_config,
    preset_dict,
)


def test_default_is_tiny_and_offline():
    cfg = load_config()
    assert cfg.preset == "tiny"
    assert cfg.prompts.engine == "scene-graph"
    assert cfg.images.model == "tiny:sd"
    assert [s.name for s in cfg.prompts.skills] == [
        "localized_narratives",
        "diffusiondb",
        "countbench",
        "coco",
        "whoops",
    ]


def _leaves(tree: dict, prefix: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates_keeping_each_value_it_sets(name):
    """Every setting in the preset's YAML survives validation unchanged (none dropped,
    defaulted or coerced), and the validated config round-trips through its JSON dump."""
    cfg = load_config(preset=name)
    assert cfg.preset == name
    dump = cfg.model_dump(mode="json")
    leaves = list(_leaves(preset_dict(name)))
    assert len(leaves) > 1  # the preset file sets something besides its name
    for path, value in leaves:
        got = dump
        for key in path:
            got = got[key]
        assert got == value, ".".join(path)
    assert SelmaConfig.model_validate(dump) == cfg


def test_paper_settings_in_gpu_presets():
    sd15 = load_config(preset="sd15")
    assert (sd15.train.rank, sd15.train.learning_rate) == (128, 3e-4)
    assert (sd15.train.batch_size, sd15.train.gradient_accumulation) == (16, 4)
    assert (sd15.train.max_steps, sd15.train.resolution) == (5000, 512)
    assert sd15.prompts.num_prompts == 1000
    assert (sd15.prompts.examples_per_request, sd15.prompts.prompts_per_request) == (3, 20)
    sdxl = load_config(preset="sdxl")
    assert (sdxl.train.batch_size, sdxl.train.gradient_accumulation) == (4, 8)
    assert (sdxl.train.learning_rate, sdxl.train.max_steps, sdxl.train.resolution) == (
        1e-4,
        10000,
        1024,
    )
    # weak-to-strong: SD v2 draws, SDXL learns
    assert "stable-diffusion-2" in sdxl.images.model
    assert "xl" in sdxl.train.base_model
    # SDXL evaluates at its own default guidance; SD 2.1 draws the training images at 7.5
    drawn = sdxl.variant_images()
    assert (drawn.model, drawn.resolution, drawn.guidance_scale) == (
        sdxl.train.base_model,
        1024,
        5.0,
    )
    assert sdxl.images.guidance_scale == 7.5 == sd15.variant_images().guidance_scale


@pytest.mark.parametrize("name", ["sd15", "sd2", "sdxl"])
def test_gpu_presets_bound_the_vllm_context_to_what_a_request_needs(name):
    """Unset, vLLM takes the model's own context (131,072 tokens for Llama 3.1: 16 GiB of KV
    cache per sequence, more than a 24 GB card has left after the weights)."""
    p = load_config(preset=name).prompts
    assert p.engine == "vllm" and p.vllm.max_model_len is not None
    assert p.max_tokens < p.vllm.max_model_len <= 8192
    # and room for a whole answer: M prompts at the longest word limit (Llama 3: ~1.5 tokens a
    # word, and "NN. " with a newline), so the last prompts of a reply are not cut off
    longest = max(s.word_limit for s in p.skills)
    assert p.max_tokens >= p.prompts_per_request * (1.5 * longest + 5)
    assert (p.temperature, p.top_p, p.vllm.tensor_parallel_size) == (1.0, 1.0, 1)


def test_an_empty_mapping_clears_what_a_preset_gave():
    """configs/<preset>.yaml pins the vLLM engines to llm_node; `--set ...resources={}` (what
    its comment says to do off cluster.yaml) must clear it, not merge nothing into it."""
    pinned = str(Path(__file__).parents[1] / "configs" / "sd15.yaml")
    assert load_config(pinned).prompts.vllm.pool.resources == {"llm_node": 1.0}
    cleared = load_config(pinned, overrides=["prompts.vllm.pool.resources={}"])
    assert cleared.prompts.vllm.pool.resources == {}
    assert cleared.prompts.vllm.pool.gpus == 1  # the rest of the pool stays
    with pytest.raises(ConfigError, match="train.num_workers"):
        load_config(overrides=["train.num_workers=0"])  # 0 would be Ray Train's local mode


def test_overrides_parse_yaml_values():
    cfg = load_config(
        overrides=["prompts.num_prompts=7", "prompts.skills=[coco, whoops]", "seed=3"]
    )
    assert cfg.prompts.num_prompts == 7
    assert [s.name for s in cfg.prompts.skills] == ["coco", "whoops"]
    assert cfg.seed == 3


def test_file_preset_and_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: sd15\nprompts:\n  num_prompts: 50\n")
    cfg = load_config(str(path), overrides=["prompts.num_prompts=60"])
    assert cfg.preset == "sd15"
    assert cfg.train.rank == 128
    assert cfg.prompts.num_prompts == 60


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("prompts.num_promts=3", "prompts.num_promts: unknown key; allowed here:"),
        ("prompts.vllm.dtype=fp8", "prompts.vllm.dtype: Input should be 'auto'"),
        ("train.rank=0", "train.rank: Input should be greater than or equal to 1"),
        ("bogus.key=1", "bogus: unknown key"),
        ("prompts.engine=gpt", "prompts.engine: Input should be 'scene-graph'"),
        ("prompts.skills=[nope]", "unknown skill 'nope'"),
        ("images.pool.min_size=3", "images.pool: min_size (3) must be <= max_size (1)"),
        ("train.cache_pool.gpus=-1", "train.cache_pool.gpus: Input should be greater than"),
        ("preset=sd3", "unknown preset 'sd3'"),
        ("eval.variants=[base,joint]", "eval.variants includes joint, but train.joint is false"),
        (
            "prompts.skills=[{name: joint, instruction: x, seeds: [a]}]",
            "'joint' is reserved for the joint multi-skill baseline",
        ),
    ],
)
def test_bad_values_name_the_field(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("prompts.vllm.min_engines=1", "prompts.vllm.pool.min_size"),
        ("prompts.vllm.max_engines=4", "prompts.vllm.pool.max_size"),
        ("prompts.vllm.gpus_per_engine=1", "prompts.vllm.pool.gpus"),
        ("prompts.vllm.batch_size=8", "prompts.vllm.rows_per_task"),
        ("images.min_actors=1", "images.pool.min_size"),
        ("images.max_actors=8", "images.pool.max_size"),
        ("images.gpus_per_actor=1", "images.pool.gpus"),
        ("images.max_task_retries=2", "images.pool.max_task_retries"),
        ("images.batch_size=8", "images.rows_per_task (rows per Ray task) and images.images_per"),
        ("train.cache_actors=5", "train.cache_pool.max_size"),
        ("train.cache_gpus_per_actor=1", "train.cache_pool.gpus"),
        ("eval.batch_size=32", "eval.rows_per_task"),
        ("serve.min_replicas=0", "serve.pool.min_size"),
        ("serve.max_replicas=2", "serve.pool.max_size"),
    ],
)
def test_renamed_key_exits_naming_the_new_one(old, new, tmp_path):
    from selma_ray.cli import main

    with pytest.raises(ConfigError) as info:
        load_config(overrides=[old])
    key = old.split("=")[0]
    assert f"{key}: renamed; use {new}" in str(info.value)
    # the same from a config file, through the CLI: exit code 2
    section, *rest = key.split(".")
    nested: dict = {}
    cursor = nested.setdefault(section, {})
    for part in rest[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[rest[-1]] = 1
    path = tmp_path / "old.yaml"
    path.write_text(__import__("yaml").safe_dump(nested))
    assert main(["config", "validate", "--config", str(path)]) == 2


def test_every_pooled_stage_has_the_same_pool_shape():
    from selma_ray.config import ActorPool

    cfg = load_config(preset="sd15")
    pools = {
        "prompts.vllm.pool": cfg.prompts.vllm.pool,
        "images.pool": cfg.images.pool,
        "train.cache_pool": cfg.train.cache_pool,
        "eval.pool": cfg.eval.pool,
        "serve.pool": cfg.serve.pool,
    }
    assert all(type(p) is ActorPool for p in pools.values())
    assert {k: (p.max_size, p.gpus) for k, p in pools.items()} == {
        "prompts.vllm.pool": (4, 1.0),
        "images.pool": (8, 1.0),
        "train.cache_pool": (5, 1.0),
        "eval.pool": (8, 1.0),
        "serve.pool": (1, 1.0),
    }
    # a cache encoder takes a GPU when training does, unless the pool says otherwise
    assert load_config(overrides=["train.use_gpu=true"]).train.cache_pool.gpus == 1.0
    assert load_config(overrides=["train.use_gpu=false"]).train.cache_pool.gpus == 0.0
    pinned = load_config(overrides=["train.use_gpu=true", "train.cache_pool.gpus=0.5"])
    assert pinned.train.cache_pool.gpus == 0.5


def test_user_skills_validated():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["prompts.skills=[{name: mine, instruction: '', seeds: []}]"])
    text = str(info.value)
    assert "prompts.skills[0].instruction" in text and "instruction is empty" in text
    assert "prompts.skills[0].seeds" in text and "at least one" in text
    cfg = load_config(
        overrides=[
            "prompts.skills=[{name: mine, instruction: Write about hats., seeds: [a red hat]}]"
        ]
    )
    assert cfg.prompts.skills[0].word_limit == 30


def test_builtin_skill_partial_override():
    cfg = load_config(overrides=["prompts.skills=[{name: whoops, word_limit: 12}]"])
    skill = cfg.prompts.skills[0]
    assert skill.word_limit == 12 and len(skill.seeds) == 3


def test_fingerprint_ignores_runtime_fields():
    a = load_config()
    b = load_config(overrides=["prompts.vllm.pool.max_size=8", "prompts.max_rounds=999"])
    c = load_config(overrides=["prompts.num_prompts=99"])
    fa, fb, fc = (fingerprint_hash(x.fingerprint(("prompts",))) for x in (a, b, c))
    assert fa == fb
    assert fa != fc
    # what changes an image's bytes is part of the images fingerprint, as channels_last is
    base = fingerprint_hash(a.fingerprint(("images",)))
    for change in ("images.attention=default", "images.compile=true", "images.channels_last=true"):
        other = load_config(overrides=[change]).fingerprint(("images",))
        assert fingerprint_hash(other) != base, change
    pool = load_config(overrides=["images.pool.max_size=7"]).fingerprint(("images",))
    assert fingerprint_hash(pool) == base


def test_resolved_config_roundtrips():
    cfg = load_config(preset="sdxl")
    again = SelmaConfig.model_validate(__import__("yaml").safe_load(cfg.to_yaml()))
    assert again == cfg


def test_a_partly_given_engine_pool_keeps_two_restarts():
    """An engine whose process dies while it starts must not be restarted forever, also when a
    preset or --set gives only part of prompts.vllm.pool."""
    for preset in ("tiny", "sd15", "sdxl"):
        assert load_config(preset=preset).prompts.vllm.pool.max_restarts == 2, preset
    partial = load_config(overrides=["prompts.vllm.pool={gpus: 1}"])
    assert partial.prompts.vllm.pool.max_restarts == 2
    given = load_config(overrides=["prompts.vllm.pool.max_restarts=5"])
    assert given.prompts.vllm.pool.max_restarts == 5
