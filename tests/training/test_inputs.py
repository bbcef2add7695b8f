"""Encoded inputs: flipped latents, and on-the-fly batches equal to cached ones."""

from __future__ import annotations

import pytest
import torch

from selma_ray.storage import RunDir
from selma_ray.training import inputs as inputs_mod
from selma_ray.training.components import load_components
from selma_ray.training.data import load_pairs, preprocess, write_synthetic_skill
from selma_ray.training.inputs import OnTheFlyInputs, encode_images

torch.set_num_threads(1)


def write_skill(run_dir: RunDir, skill: str = "count", prompts: int = 4, per_prompt: int = 1):
    """A random imagefolder for ``skill`` (PNG files + metadata.jsonl); returns its rows."""
    return write_synthetic_skill(
        run_dir, skill, prompts=prompts, images_per_prompt=per_prompt, size=(80, 64)
    )


@pytest.fixture(scope="module")
def components(tiny_models):
    return load_components(tiny_models["sd"])


def test_cache_flips_and_on_the_fly_match(tmp_path, components):
    rd = RunDir(str(tmp_path / "run"))
    write_skill(rd, prompts=3)
    pairs, _ = load_pairs(rd, "count")
    enc = inputs_mod.encode_pairs(components, pairs, resolution=32, random_flip=True, seed=0)
    with torch.no_grad():
        pixels = torch.stack([preprocess(p.image(), 32) for p in pairs])
        flipped = encode_images(components, pixels.flip(-1))
    assert torch.allclose(enc.latents_flipped, flipped, atol=1e-5)
    assert not torch.allclose(enc.latents, flipped, atol=1e-3)

    live = OnTheFlyInputs(components, pairs, resolution=32, random_flip=True, seed=0)
    a = enc.batch([2, 0], [True, False], "cpu")
    b = live.batch([2, 0], [True, False], "cpu")
    assert torch.allclose(a.latents, b.latents, atol=1e-5)
    assert torch.allclose(a.encoder_hidden_states, b.encoder_hidden_states, atol=1e-5)
    assert a.added_cond_kwargs() is None
    with pytest.raises(ValueError, match="random_flip"):
        inputs_mod.encode_pairs(components, pairs, resolution=32, random_flip=False).batch(
            [0], [True], "cpu"
        )
