"""images.channels_last and images.fuse_qkv: the same images (within float rounding) as the
default pipeline, a LoRA folded into the fused QKV weights when loaded and out when unloaded,
and the config's checks and fingerprint."""

from __future__ import annotations

import numpy as np
import pytest

from selma_ray import layout
from selma_ray.config import ImagesConfig, SelmaConfig, load_config
from selma_ray.images.generate import ImageGenerator, load_pipeline, sync_fused_qkv

PROMPTS = ["a red cat coco", "two dogs on a table coco"]
SEEDS = [11, 22]
#: float rounding may flip a uint8 rounding of a pixel, never more
TOLERANCE = 2


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(scope="module")
def default_images(tiny_models):
    return _draw(_generator())


@pytest.fixture(scope="module")
def lora_dir(tiny_models, tmp_path_factory):
    """A folder holding one random tiny-SD LoRA (to_q/to_k/to_v/to_out.0, rank 4)."""
    from selma_ray.serving.model import make_random_run_dir
    from selma_ray.storage import RunDir

    root = tmp_path_factory.mktemp("lora")
    spec = make_random_run_dir(str(root / "run"), skills=("coco",), merged=False, seed=4)
    out = root / "coco"
    out.mkdir()
    lora = RunDir(spec.run_dir).read_bytes(*layout.expert_lora("coco"))
    (out / layout.LORA_FILE).write_bytes(lora)
    return str(out)


def _generator(**options) -> ImageGenerator:
    return ImageGenerator(ImagesConfig(**options), "memory://unused", num_threads=1)


def _draw(gen: ImageGenerator) -> np.ndarray:
    return gen.draw(PROMPTS, SEEDS)


def test_channels_last_draws_the_default_images(default_images):
    import torch

    gen = _generator(channels_last=True)
    for model in (gen.pipe.unet, gen.pipe.vae):
        convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        assert not all(w.is_contiguous() for w in convs)
    assert _max_diff(_draw(gen), default_images) <= TOLERANCE


def test_fused_qkv_draws_the_default_images(default_images):
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    gen = _generator(fuse_qkv=True)
    for model in (gen.pipe.unet, gen.pipe.vae):
        assert {type(p) for p in model.attn_processors.values()} == {FusedAttnProcessor2_0}
    # attn1 (self-attention) fuses q, k and v; attn2 (cross-attention) k and v
    block = gen.pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0]
    assert block.attn1.to_qkv.weight.shape[0] == 3 * block.attn1.to_q.weight.shape[0]
    assert block.attn2.to_kv.weight.shape[0] == 2 * block.attn2.to_k.weight.shape[0]
    assert _max_diff(_draw(gen), default_images) <= TOLERANCE


def test_fused_qkv_takes_a_lora_in_and_out(tiny_models, lora_dir, default_images):
    """A LoRA loaded into a fused pipeline draws what it draws unfused once the fused weights
    are rebuilt (sync_fused_qkv); diffusers' fused weights alone would leave its q/k/v out.
    Unloaded and rebuilt, the base images are the fused pipeline's first ones, byte for byte."""
    from diffusers.models.attention_processor import Attention

    unfused = _generator()
    unfused.pipe.load_lora_weights(lora_dir, weight_name=layout.LORA_FILE, adapter_name="coco")
    expected = _draw(unfused)
    assert _max_diff(expected, default_images) > 10  # the LoRA changes the images

    fused = _generator(fuse_qkv=True)
    fused_base = _draw(fused)
    fused.pipe.load_lora_weights(lora_dir, weight_name=layout.LORA_FILE, adapter_name="coco")
    stale = _draw(fused)  # the fused weights still hold the base's q/k/v
    assert _max_diff(stale, expected) > 10
    attention = [
        m for model in (fused.pipe.unet, fused.pipe.vae) for m in model.modules()
        if isinstance(m, Attention)
    ]  # fmt: skip
    assert sync_fused_qkv(fused.pipe) == len(attention) > 0
    assert _max_diff(_draw(fused), expected) <= TOLERANCE

    fused.pipe.unload_lora_weights()
    sync_fused_qkv(fused.pipe)
    assert np.array_equal(_draw(fused), fused_base)


def test_a_lora_loaded_before_fusing_is_folded_in(tiny_models, lora_dir):
    from selma_ray.images.generate import fuse_qkv_projections

    gen = _generator()
    gen.pipe.load_lora_weights(lora_dir, weight_name=layout.LORA_FILE, adapter_name="coco")
    expected = _draw(gen)
    fuse_qkv_projections(gen.pipe)
    assert _max_diff(_draw(gen), expected) <= TOLERANCE


def test_fused_qkv_needs_sdpa_attention():
    with pytest.raises(ValueError, match=r"images\.fuse_qkv needs images\.attention: sdpa"):
        ImagesConfig(fuse_qkv=True, attention="default")
    with pytest.raises(ValueError, match=r"images\.fuse_qkv needs images\.attention: sdpa"):
        load_pipeline("tiny:sd", attention="default", fuse_qkv=True, device="cpu")
    with pytest.raises(Exception, match=r"images\.fuse_qkv needs images\.attention: sdpa"):
        load_config(overrides=["images.fuse_qkv=true", "images.attention=default"])


@pytest.mark.parametrize("field", ["channels_last", "fuse_qkv"])
def test_the_options_are_part_of_the_images_fingerprint(field):
    """They change float sums, so an image's bytes may change: a run drawn without them is not
    resumed with them as if nothing changed."""
    off, on = SelmaConfig(), SelmaConfig.model_validate({"images": {field: True}})
    assert off.fingerprint(("images",))["images"][field] is False
    assert on.fingerprint(("images",)) != off.fingerprint(("images",))
