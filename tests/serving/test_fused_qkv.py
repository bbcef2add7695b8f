"""Serving with serve.fuse_qkv / serve.channels_last: a replica switching variants (set_adapters
or LoRA hot-swap) draws what a fresh unfused pipeline holding that variant alone draws, within
float rounding; every LoRA is in its images; the flags come from the serve section."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from selma_ray.serving.api import GenerationJob

#: A switch sequence that leaves and comes back to every variant, base included.
ORDER = ("merged", "countbench", "base", "whoops", "merged", "base", "countbench")
TOLERANCE = 2  # float rounding may flip a uint8 rounding, never more


def _job(variant: str) -> GenerationJob:
    return GenerationJob(
        variant=variant, prompt="two red balls", n=1, width=64, height=64, seed=3,
        num_inference_steps=2, guidance_scale=5.0,
    )  # fmt: skip


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(scope="module")
def unfused_images(served_run_dir):
    """Each variant's image from a fresh, unfused pipeline holding that variant's LoRA alone."""
    from selma_ray.serving.model import BASE, VariantPipeline

    spec = served_run_dir["spec"]
    out = {}
    for variant in set(ORDER):
        adapters = {} if variant == BASE else {variant: spec.adapters[variant]}
        kinds = {BASE: "base", **dict.fromkeys(adapters, spec.kinds[variant])}
        one = dataclasses.replace(spec, adapters=adapters, kinds=kinds, hotswap=False)
        out[variant] = VariantPipeline(one, device="cpu", torch_threads=1).draw(_job(variant))
    assert len({image.tobytes() for image in out.values()}) == 4
    return out


@pytest.mark.parametrize("hotswap", [False, True], ids=["set_adapters", "hotswap"])
def test_fused_qkv_switches_draw_each_variants_unfused_images(
    served_run_dir, unfused_images, hotswap
):
    from selma_ray.serving.model import VariantPipeline

    spec = dataclasses.replace(
        served_run_dir["spec"], hotswap=hotswap, fuse_qkv=True, channels_last=True
    )
    engine = VariantPipeline(spec, device="cpu", torch_threads=1)
    assert engine.pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_qkv
    first: dict[str, np.ndarray] = {}
    for variant in ORDER:
        got = engine.draw(_job(variant))
        assert _max_diff(got, unfused_images[variant]) <= TOLERANCE, variant
        if variant != "base":  # the LoRA is applied: far from the base image
            assert _max_diff(got, unfused_images["base"]) > 10, variant
        # a variant's bytes do not drift with the switches in between
        assert np.array_equal(got, first.setdefault(variant, got)), variant


def test_serve_options_come_from_the_serve_section(served_run_dir):
    from selma_ray.config import load_config
    from selma_ray.serving.model import discover_variants

    path = served_run_dir["path"]
    assert (discover_variants(path).channels_last, discover_variants(path).fuse_qkv) == (
        False,
        False,
    )
    cfg = load_config(overrides=["serve.channels_last=true", "serve.fuse_qkv=true"])
    spec = discover_variants(path, cfg)
    assert (spec.channels_last, spec.fuse_qkv) == (True, True)
    # the images section's options are stage 2's and eval's, not the server's
    cfg = load_config(overrides=["images.channels_last=true", "images.fuse_qkv=true"])
    assert (discover_variants(path, cfg).channels_last, discover_variants(path, cfg).fuse_qkv) == (
        False,
        False,
    )


def test_serve_fuse_qkv_needs_sdpa_attention():
    from selma_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"serve\.fuse_qkv needs images\.attention: sdpa"):
        load_config(overrides=["serve.fuse_qkv=true", "images.attention=default"])


@pytest.mark.slow
def test_a_compiled_hotswapping_fused_unet_switches_without_recompiling(
    served_run_dir, monkeypatch
):
    """The fused weights are rebuilt in place, like the hot-swap slot's: dynamo (which raises
    on any recompile here) goes through every switch, drawing the eager fused images."""
    import functools

    import torch

    from selma_ray.serving.model import VariantPipeline

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    # set, not monkeypatched: undoing a monkeypatch deletes (hides) a dynamo config entry
    torch._dynamo.config.error_on_recompile = True
    try:
        spec = dataclasses.replace(served_run_dir["spec"], hotswap=True, fuse_qkv=True)
        eager = VariantPipeline(spec, device="cpu", torch_threads=1)
        compiled = VariantPipeline(
            dataclasses.replace(spec, compile=True), device="cpu", torch_threads=1
        )
        for variant in ORDER:
            got = compiled.draw(_job(variant))
            assert np.array_equal(got, eager.draw(_job(variant))), variant
    finally:
        torch._dynamo.config.error_on_recompile = False
        torch._dynamo.reset()
