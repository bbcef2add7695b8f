"""Stage-3 inputs: imagefolder loading, skips, holdout split, preprocessing and the input cache."""

from __future__ import annotations

import io
import json
import random

import pytest
import torch
from PIL import Image

from selma_ray.storage import RunDir
from selma_ray.training import cache as cache_mod
from selma_ray.training.cache import (
    EncodedInputs,
    OnTheFlyInputs,
    encode_images,
    load_components,
    load_or_build_cache,
)
from selma_ray.training.data import (
    CropInfo,
    Pair,
    load_pairs,
    preprocess,
    resize_and_crop,
    split_holdout,
    to_tensor,
    write_synthetic_skill,
)

torch.set_num_threads(1)


def write_skill(run_dir: RunDir, skill: str = "count", prompts: int = 4, per_prompt: int = 1):
    """A random imagefolder for ``skill`` (PNG files + metadata.jsonl); returns its rows."""
    return write_synthetic_skill(
        run_dir, skill, prompts=prompts, images_per_prompt=per_prompt, size=(80, 64)
    )


def png(color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- preprocess


def test_preprocess_shapes_range_and_center_crop():
    # 128 wide x 64 high: left half red, right half blue; the centre crop is [32, 96)
    img = Image.new("RGB", (128, 64), (255, 0, 0))
    img.paste((0, 0, 255), (64, 0, 128, 64))
    x = preprocess(img, 64, center_crop=True)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert torch.allclose(x[:, :, 0], torch.tensor([1.0, -1.0, -1.0])[:, None].expand(3, 64))
    assert torch.allclose(x[:, :, 63], torch.tensor([-1.0, -1.0, 1.0])[:, None].expand(3, 64))

    # shorter side resized (portrait 40x100 -> 32x80), then cropped to 32x32
    tall = Image.fromarray(torch.randint(0, 256, (100, 40, 3), dtype=torch.uint8).numpy())
    y = preprocess(tall, 32, center_crop=False, rng=random.Random(3))
    assert y.shape == (3, 32, 32)
    assert torch.equal(y, preprocess(tall, 32, center_crop=False, rng=random.Random(3)))
    _, info = resize_and_crop(tall, 32, center_crop=False, rng=random.Random(3))
    assert (info.resized_width, info.resized_height) == (32, 80)
    assert info.left == 0 and 0 <= info.top <= 48
    assert (info.original_height, info.original_width) == (100, 40)

    # SDXL micro-conditioning of the flipped crop: the left edge mirrored in the resized image
    assert CropInfo(3, 10, 100, 150, 64, 96).flipped_left(64) == 22
    assert cache_mod._time_ids(CropInfo(3, 10, 100, 150, 64, 96), 64, True) == [
        100.0, 150.0, 3.0, 22.0, 64.0, 64.0,
    ]  # fmt: skip

    # grayscale input becomes 3 channels; extremes map to exactly -1 / 1
    gray = Image.new("L", (16, 16), 255)
    assert torch.equal(to_tensor(gray), torch.ones(3, 16, 16))
    assert torch.equal(preprocess(Image.new("RGB", (8, 8)), 8), -torch.ones(3, 8, 8))


# --------------------------------------------------------------------------- load_pairs


@pytest.mark.parametrize("scheme", ["local", "memory"])
def test_load_pairs_skips_missing_corrupt_and_bad_lines(tmp_path, scheme):
    uri = str(tmp_path / "run") if scheme == "local" else f"memory://pairs-{tmp_path.name}"
    rd = RunDir(uri)
    rows = write_skill(rd, prompts=5)
    rd.write_bytes(b"\x89PNG\r\n\x1a\n definitely not an image", "images", "count", "00001_0.png")
    good = png((10, 20, 30))
    rd.write_bytes(good[: len(good) // 2], "images", "count", "00002_0.png")  # truncated
    extra = [
        {"file_name": "gone.png", "text": "a ghost", "skill": "count", "prompt_id": "x"},
        {"file_name": "00000_0.png", "text": "repeat", "skill": "count", "prompt_id": "y"},
        {"file_name": "00003_0.png", "text": "elsewhere", "skill": "other", "prompt_id": "z"},
        {"text": "no file name"},
        {"file_name": "../../escape.png", "text": "outside", "prompt_id": "w"},
    ]
    lines = [json.dumps(r) for r in rows + extra] + ["{not json"]
    rd.write_text("\n".join(lines) + "\n", "images", "count", "metadata.jsonl")

    pairs, skipped = load_pairs(rd, "count")
    assert [p.file_name for p in pairs] == ["00000_0.png", "00003_0.png", "00004_0.png"]
    assert skipped == {
        "corrupt": 2,
        "missing": 1,
        "duplicate": 1,
        "other_skill": 1,
        "bad_metadata": 3,
    }
    p = pairs[0]
    assert p.text == rows[0]["text"] and p.prompt_id == rows[0]["prompt_id"]
    assert p.model == "synthetic" and p.image().size == (80, 64) and len(p.digest) == 64


def test_empty_skill_raises_naming_skill_and_folder(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"skill 'spatial'.*images/spatial.*metadata\.jsonl"):
        load_pairs(rd, "spatial")
    rd.write_text(
        json.dumps({"file_name": "a.png", "text": "t", "prompt_id": "p"}) + "\n",
        "images",
        "spatial",
        "metadata.jsonl",
    )
    with pytest.raises(ValueError, match=r"skill 'spatial'.*no usable.*'missing': 1"):
        load_pairs(rd, "spatial")


# --------------------------------------------------------------------------- holdout


def _pairs(n_prompts: int, per_prompt: int = 3) -> list[Pair]:
    return [
        Pair(file_name=f"{i}_{j}.png", text=f"t{i}", prompt_id=f"p{i}", image_index=j)
        for i in range(n_prompts)
        for j in range(per_prompt)
    ]


def test_split_holdout_deterministic_and_grouped_by_prompt():
    pairs = _pairs(40)
    train, val = split_holdout(pairs, 0.2, seed=7)
    assert (train, val) == split_holdout(list(pairs), 0.2, seed=7)
    assert {p.prompt_id for p in train}.isdisjoint({p.prompt_id for p in val})
    assert len(train) + len(val) == len(pairs)
    assert all(sum(q.prompt_id == p.prompt_id for q in val) == 3 for p in val)
    assert 1 <= len({p.prompt_id for p in val}) < 40
    # a prompt's side depends only on (seed, prompt_id): adding prompts keeps earlier ones
    _, val2 = split_holdout(_pairs(80), 0.2, seed=7)
    assert {p.prompt_id for p in val} <= {p.prompt_id for p in val2}
    assert split_holdout(pairs, 0.2, seed=8)[1] != val

    # small sets: fraction > 0 with >= 2 prompts always holds out one prompt, keeps one
    for seed in range(20):
        tr, va = split_holdout(_pairs(2, 2), 0.01, seed)
        assert len({p.prompt_id for p in va}) == 1 and len(tr) == 2
        tr, va = split_holdout(_pairs(2, 2), 0.99, seed)
        assert len({p.prompt_id for p in tr}) == 1 and len(va) == 2
    assert split_holdout(_pairs(1), 0.5, 0)[1] == []
    assert split_holdout(pairs, 0.0, 0) == (pairs, [])
    with pytest.raises(ValueError, match="fraction"):
        split_holdout(pairs, 1.0, 0)


# --------------------------------------------------------------------------- input cache


@pytest.fixture(scope="module")
def components(tiny_models):
    return load_components(tiny_models["sd"])


def test_cache_reused_and_invalidated(tmp_path, components, monkeypatch):
    rd = RunDir(str(tmp_path / "run"))
    write_skill(rd, prompts=3, per_prompt=2)
    pairs, _ = load_pairs(rd, "count")
    calls = []
    real = cache_mod.encode_pairs

    def counting(*args, **kwargs):
        calls.append(kwargs["resolution"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "encode_pairs", counting)
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


def test_cache_flips_and_on_the_fly_match(tmp_path, components):
    rd = RunDir(str(tmp_path / "run"))
    write_skill(rd, prompts=3)
    pairs, _ = load_pairs(rd, "count")
    enc = cache_mod.encode_pairs(components, pairs, resolution=32, random_flip=True, seed=0)
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
        cache_mod.encode_pairs(components, pairs, resolution=32, random_flip=False).batch(
            [0], [True], "cpu"
        )
