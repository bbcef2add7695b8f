"""Eval drawing (LoraImageGenerator) with images.fuse_qkv and images.channels_last: every
variant's LoRA is in its images, which match the unfused drawing's within float rounding, and
a variant's bytes do not depend on the variants drawn before it."""

from __future__ import annotations

import io

import numpy as np
import pytest

from selma_ray import layout
from selma_ray.config import ImagesConfig
from selma_ray.evaluation.stage import LoraImageGenerator
from selma_ray.execution import rows_to_batch
from selma_ray.storage import RunDir

VARIANTS = ("base", "expert-coco", "expert-whoops")
PROMPTS = ("a red cat", "two dogs on a table")
TOLERANCE = 2  # float rounding may flip a uint8 rounding, never more


@pytest.fixture(scope="module")
def loras(tiny_models, tmp_path_factory):
    from selma_ray.serving.model import make_random_run_dir

    root = tmp_path_factory.mktemp("eval-fused")
    spec = make_random_run_dir(str(root / "run"), skills=("coco", "whoops"), merged=False)
    rd = RunDir(spec.run_dir)
    return {
        "base": None,
        **{f"expert-{s}": rd.url(*layout.expert_lora(s)) for s in ("coco", "whoops")},
    }


def _rows(variants) -> list[dict]:
    return [
        {
            "prompt_id": f"item-{i}",
            "skill": v,
            "prompt": p,
            "image_index": 0,
            "seed": 7 + i,
            "file_name": f"item-{i}.png",
        }
        for v in variants
        for i, p in enumerate(PROMPTS)
    ]


def _draw(loras, out, variants, **options) -> dict[tuple[str, str], np.ndarray]:
    """{(variant, file): pixels} of one generator drawing ``variants`` in this order."""
    from PIL import Image

    cfg = ImagesConfig(steps=2, **options)
    gen = LoraImageGenerator(cfg, str(out), loras, num_threads=1)
    rows = _rows(variants)
    gen(rows_to_batch(rows))
    rd = RunDir(str(out))
    return {
        (r["skill"], r["file_name"]): np.asarray(
            Image.open(io.BytesIO(rd.read_bytes(r["skill"], r["file_name"])))
        )
        for r in rows
    }


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_fused_qkv_variants_draw_their_loras_images(loras, tmp_path):
    unfused = _draw(loras, tmp_path / "unfused", VARIANTS)
    fused = _draw(loras, tmp_path / "fused", VARIANTS, fuse_qkv=True, channels_last=True)
    assert fused.keys() == unfused.keys()
    for key, pixels in unfused.items():
        assert _max_diff(fused[key], pixels) <= TOLERANCE, key
    for variant in VARIANTS[1:]:  # each LoRA is really applied: far from the base images
        for name in ("item-0.png", "item-1.png"):
            assert _max_diff(fused[(variant, name)], fused[("base", name)]) > 10


def test_fused_qkv_variant_bytes_do_not_depend_on_what_was_drawn_before(loras, tmp_path):
    """The fused weights are rebuilt from the untouched base weights on every swap, so base
    after two experts, and an expert after another, are what a fresh generator draws."""
    order = ("expert-coco", "expert-whoops", "base")  # one generator, swapping in this order
    after = _draw(loras, tmp_path / "after", order, fuse_qkv=True)
    alone = _draw(loras, tmp_path / "alone", ("expert-whoops",), fuse_qkv=True)
    first_base = _draw(loras, tmp_path / "first", ("base",), fuse_qkv=True)
    for name in ("item-0.png", "item-1.png"):
        assert np.array_equal(after[("expert-whoops", name)], alone[("expert-whoops", name)])
        assert np.array_equal(after[("base", name)], first_base[("base", name)])
