"""The encoding pass of stage 3 (:class:`CacheEncoder`), without Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from selma_ray import layout
from selma_ray.config import TrainConfig
from selma_ray.layout import CACHE_FILE
from selma_ray.storage import RunDir
from selma_ray.training.components import load_components
from selma_ray.training.data import load_pairs, write_synthetic_skill
from selma_ray.training.encoder import CacheEncoder
from selma_ray.training.inputs import EncodedInputs, encode_pairs
from selma_ray.training.loop import LocalReporter, train_expert
from selma_ray.training.store import cache_is_current, cache_key, cache_uri

torch.set_num_threads(1)

TRAIN = TrainConfig(
    max_steps=2, checkpoint_every=2, batch_size=2, resolution=32, validation_fraction=0.0
)


@pytest.fixture
def run_dir(tmp_path, tiny_models):
    rd = RunDir(str(tmp_path / "run"))
    write_synthetic_skill(rd, "coco", prompts=3, size=40, seed=0)
    write_synthetic_skill(rd, "whoops", prompts=2, images_per_prompt=2, size=32, seed=1)
    return rd


def _encoder(run_dir: RunDir, tiny_models, **train) -> CacheEncoder:
    return CacheEncoder(
        TRAIN.model_copy(update=train).model_dump(mode="json"),
        base_model="tiny:sd",
        run_dir_uri=run_dir.uri,
        model_cache_dir=None,
        seed=7,
        device="cpu",
    )


def test_encoder_writes_each_skills_cache_equal_to_encode_pairs(run_dir, tiny_models):
    enc = _encoder(run_dir, tiny_models)
    out = enc({"skill": np.array(["coco", "whoops", "absent"])})
    assert list(out["skill"]) == ["coco", "whoops", "absent"]
    assert list(out["built"]) == [True, True, False]
    assert list(out["pairs"]) == [3, 4, 0]
    # a skill with no usable data is reported by name, not raised: training raises it later
    assert out["error"][0] == out["error"][1] == ""
    assert "'absent'" in out["error"][2] and "images stage" in out["error"][2]
    assert enc.components.unet is None  # encoding never loads the UNet

    comps = load_components(tiny_models["sd"], unet=False)
    for skill in ("coco", "whoops"):
        pairs, _ = load_pairs(run_dir, skill)
        cached, key = EncodedInputs.from_safetensors(run_dir.read_bytes("cache", skill, CACHE_FILE))
        ref = encode_pairs(comps, pairs, resolution=32, random_flip=True, seed=7)
        assert cached.keys == ref.keys
        assert cached.latents.shape == (len(pairs), 4, 16, 16)  # the tiny VAE halves 32 px
        torch.testing.assert_close(cached.latents, ref.latents)
        torch.testing.assert_close(cached.latents_flipped, ref.latents_flipped)
        torch.testing.assert_close(cached.prompt_embeds, ref.prompt_embeds)
        assert torch.equal(cached.text_index, ref.text_index)
        opts = {"resolution": 32, "center_crop": True, "random_flip": True, "seed": 7}
        assert key == cache_key(pairs, model="tiny:sd", **opts)
        assert cache_is_current(run_dir.url("cache", skill), key)


def test_current_caches_are_checked_not_rebuilt(run_dir, tiny_models):
    _encoder(run_dir, tiny_models)({"skill": np.array(["coco"])})
    before = run_dir.fs.modified(run_dir.path("cache", "coco", CACHE_FILE))

    again = _encoder(run_dir, tiny_models)
    row = again.encode_skill("coco")
    assert row["built"] is False and row["error"] == ""
    assert again._components is None  # nothing to build: the encoders were never loaded
    assert run_dir.fs.modified(run_dir.path("cache", "coco", CACHE_FILE)) == before

    # another resolution is another cache: rebuilt
    assert _encoder(run_dir, tiny_models, resolution=16).encode_skill("coco")["built"] is True
    # new images for the skill: the key changes, so the cache is rebuilt
    write_synthetic_skill(run_dir, "coco", prompts=4, size=40, seed=5)
    assert _encoder(run_dir, tiny_models, resolution=16).encode_skill("coco")["built"] is True


def test_a_half_written_cache_is_not_current(run_dir, tiny_models):
    row = _encoder(run_dir, tiny_models).encode_skill("whoops")
    assert row["built"]
    uri = run_dir.url("cache", "whoops")
    key = run_dir.read_json("cache", "whoops", "cache.json")
    assert cache_is_current(uri, key)
    assert not cache_is_current(uri, {**key, "resolution": 64})
    run_dir.write_bytes(b"\x00" * 5, "cache", "whoops", CACHE_FILE)  # truncated tensors file
    assert not cache_is_current(uri, key)
    assert _encoder(run_dir, tiny_models).encode_skill("whoops")["built"] is True
    assert cache_is_current(uri, key)


def test_training_reads_the_encoded_cache(run_dir, tiny_models):
    _encoder(run_dir, tiny_models)({"skill": np.array(["whoops"])})
    result = train_expert(
        TRAIN,
        skill="whoops",
        run_dir_uri=run_dir.uri,
        base_model="tiny:sd",
        model_cache_dir=None,
        seed=7,
        reporter=LocalReporter(),
        device="cpu",
    )
    assert result.steps == 2
    meta = run_dir.read_json("experts", "whoops", "expert.json")
    assert meta["cache"]["enabled"] is True
    assert meta["cache"]["built"] is False  # the worker read what the encoder wrote


def test_encoder_takes_the_train_config_typed_or_dumped_and_validates_it(run_dir, tiny_models):
    typed = CacheEncoder(TRAIN, "tiny:sd", run_dir.uri, seed=7, device="cpu")
    dumped = _encoder(run_dir, tiny_models)
    assert isinstance(typed.train, TrainConfig) and isinstance(dumped.train, TrainConfig)
    assert typed.train == dumped.train == TRAIN
    assert typed.train is not TRAIN  # validated into the encoder's own copy
    # the cache directory is the skill's in the run directory, whichever way it was given
    assert typed.encode_skill("coco")["built"] is True
    assert dumped.encode_skill("coco")["built"] is False
    key = run_dir.read_json(*layout.cache_key("coco"))
    assert cache_is_current(cache_uri(run_dir, "coco"), key)
    assert cache_uri(run_dir, "coco") == run_dir.url("cache", "coco")
    with pytest.raises(ValidationError, match="resolution"):
        CacheEncoder({**TRAIN.model_dump(), "resolution": 2}, "tiny:sd", run_dir.uri)
    with pytest.raises(ValidationError, match="cache_actors"):
        CacheEncoder({**TRAIN.model_dump(), "cache_actors": 2}, "tiny:sd", run_dir.uri)
