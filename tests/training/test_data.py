"""Stage-3 raw inputs: imagefolder loading, skips, holdout split and preprocessing."""

from __future__ import annotations

import io
import json
import random

import pytest
import torch
from PIL import Image

from selma_ray.storage import RunDir
from selma_ray.training import inputs as inputs_mod
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
    assert inputs_mod._time_ids(CropInfo(3, 10, 100, 150, 64, 96), 64, True) == [
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
