"""The on-disk input cache: reused while its key matches, rebuilt when anything changes."""

from __future__ import annotations

import pytest
import torch

from selma_ray.storage import RunDir
from selma_ray.training import store as store_mod
from selma_ray.training.components import load_components
from selma_ray.training.data import Pair, load_pairs, write_synthetic_skill
from selma_ray.training.inputs import EncodedInputs
from selma_ray.training.store import load_or_build_cache

torch.set_num_threads(1)


def write_skill(run_dir: RunDir, skill: str = "count", prompts: int = 4, per_prompt: int = 1):
    """A random imagefolder for ``skill`` (PNG files + metadata.jsonl); returns its rows."""
    return write_synthetic_skill(
        run_dir, skill, prompts=prompts, images_per_prompt=per_prompt, size=(80, 64)
    )


@pytest.fixture(scope="module")
def components(tiny_models):
    return load_components(tiny_models["sd"])


def test_cache_reused_and_invalidated(tmp_path, components, monkeypatch):
    rd = RunDir(str(tmp_path / "run"))
    write_skill(rd, prompts=3, per_prompt=2)
    pairs, _ = load_pairs(rd, "count")
    calls = []
    real = store_mod.encode_pairs

    def counting(*args, **kwargs):
        calls.append(kwargs["resolution"])
        return real(*args, **kwargs)

    monkeypatch.setattr(store_mod, "encode_pairs", counting)
    uri = rd.url("cache", "count")
    kw = {"model": "tiny:sd", "resolution": 32, "random_flip": True, "seed": 0}

    first, info1 = load_or_build_cache(uri, pairs, components, **kw)
    assert info1.built and calls == [32]
    assert rd.exists("cache", "count", "inputs.safetensors")
    key = rd.read_json("cache", "count", "cache.json")
    assert key["resolution"] == 32 and key["model"] == "tiny:sd" and key["random_flip"]
    assert first.latents.shape == (6, 4, 16, 16) and first.latents_flipped is not None
    assert first.prompt_embeds.shape == (3, 77, 32)  # one row per distinct caption
    idx = first.text_index.tolist()  # two images per caption share one row
    assert idx[0::2] == idx[1::2] and sorted(idx[0::2]) == [0, 1, 2]

    # second call: read back, no encoding; the model is not even needed
    second, info2 = load_or_build_cache(uri, pairs, lambda: pytest.fail("loaded"), **kw)
    assert not info2.built and calls == [32]
    for name in EncodedInputs._TENSORS:
        a, b = getattr(first, name), getattr(second, name)
        assert (a is None and b is None) or torch.equal(a, b)

    # a new resolution (or new images) rebuilds
    third, info3 = load_or_build_cache(uri, pairs, components, **{**kw, "resolution": 64})
    assert info3.built and calls == [32, 64] and third.latents.shape[-1] == 32
    assert rd.read_json("cache", "count", "cache.json")["resolution"] == 64
    changed = [*pairs[:-1], Pair(**{**pairs[-1].__dict__, "digest": "0" * 64})]
    _, info4 = load_or_build_cache(uri, changed, components, **{**kw, "resolution": 64})
    assert info4.built and calls == [32, 64, 64]
