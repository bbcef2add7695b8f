"""Serving with LoRA hot-swap: one adapter slot whose weights each switch replaces, the same
images as a fresh pipeline holding that variant alone, and no recompile of a compiled UNet."""

from __future__ import annotations

import dataclasses

import pytest

from selma_ray import layout
from selma_ray.serving.api import GenerationJob
from selma_ray.storage import RunDir

#: A switch sequence that leaves and comes back to every variant, base included.
ORDER = ("merged", "countbench", "base", "whoops", "merged", "base", "countbench")


def _job(variant: str) -> GenerationJob:
    return GenerationJob(
        variant=variant, prompt="two red balls", n=1, width=64, height=64, seed=3,
        num_inference_steps=2, guidance_scale=5.0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def mixed_ranks(tiny_models, tmp_path_factory):
    """A run whose experts have rank 4 and whose merged LoRA has rank 8 (as a merge of
    several experts does), so the slot is padded for the smaller ones."""
    from selma_ray.serving.model import discover_variants, make_random_run_dir

    root = tmp_path_factory.mktemp("hotswap")
    spec = make_random_run_dir(str(root / "run"), skills=("countbench", "whoops"), seed=2)
    make_random_run_dir(str(root / "rank8"), skills=("countbench",), rank=8, seed=5)
    rd, other = RunDir(spec.run_dir), RunDir(str(root / "rank8"))
    rd.write_bytes(other.read_bytes(*layout.merged_lora()), *layout.merged_lora())
    return discover_variants(rd)


def _fresh(spec, variant: str):
    """A pipeline holding ``variant``'s LoRA alone (or none, for base), loaded the usual way."""
    from selma_ray.serving.model import BASE, VariantPipeline

    adapters = {} if variant == BASE else {variant: spec.adapters[variant]}
    kinds = {BASE: "base", **dict.fromkeys(adapters, spec.kinds.get(variant, "expert"))}
    one = dataclasses.replace(spec, adapters=adapters, kinds=kinds, hotswap=False, compile=False)
    return VariantPipeline(one, device="cpu", torch_threads=1)


def test_hotswapped_variants_draw_what_a_fresh_pipeline_with_that_lora_draws(mixed_ranks):
    import numpy as np

    from selma_ray.serving.model import HOTSWAP_SLOT, VariantPipeline

    swapping = VariantPipeline(
        dataclasses.replace(mixed_ranks, hotswap=True), device="cpu", torch_threads=1
    )
    # one adapter in the pipeline, however many variants it serves
    assert set(swapping.pipe.get_list_adapters()["unet"]) == {HOTSWAP_SLOT}
    expected = {v: _fresh(mixed_ranks, v).draw(_job(v)) for v in set(ORDER)}
    assert len({e.tobytes() for e in expected.values()}) == 4  # every variant draws its own
    for variant in ORDER:
        got = swapping.draw(_job(variant))
        assert np.array_equal(got, expected[variant]), variant
    assert swapping.stats["switches"] == len(ORDER) + 1  # base first, at load


@pytest.mark.slow
def test_a_compiled_unet_switches_variants_without_recompiling(mixed_ranks, monkeypatch):
    """``torch._dynamo`` raises on any recompile here. With hot-swap a compiled replica goes
    through every switch and draws the eager images; the non-hot-swap switch
    (``set_adapters``) does recompile, which shows the check can fail."""
    import functools

    import numpy as np
    import torch

    from selma_ray.serving.model import VariantPipeline

    # dynamo's tracing and guards are what recompile; the eager backend keeps the numerics
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    eager = VariantPipeline(
        dataclasses.replace(mixed_ranks, hotswap=True), device="cpu", torch_threads=1
    )
    compiled = VariantPipeline(
        dataclasses.replace(mixed_ranks, hotswap=True, compile=True), device="cpu",
        torch_threads=1,
    )  # fmt: skip
    for variant in ORDER:
        assert np.array_equal(compiled.draw(_job(variant)), eager.draw(_job(variant))), variant

    torch._dynamo.reset()
    switching = VariantPipeline(
        dataclasses.replace(mixed_ranks, hotswap=False, compile=True), device="cpu",
        torch_threads=1,
    )  # fmt: skip
    switching.draw(_job("merged"))
    with pytest.raises(Exception, match="[Rr]ecompil"):
        switching.draw(_job("countbench"))
    torch._dynamo.reset()


def test_hotswap_defaults_on_with_compile(tmp_path):
    from selma_ray.config import load_config
    from selma_ray.serving.model import discover_variants, make_random_run_dir

    spec = make_random_run_dir(str(tmp_path / "run"), skills=("whoops",), merged=False)
    assert (spec.compile, spec.hotswap) == (False, False)
    rd = RunDir(spec.run_dir)
    on = discover_variants(rd, load_config(overrides=["serve.compile=true"]))
    assert (on.compile, on.hotswap) == (True, True)
    off = discover_variants(
        rd, load_config(overrides=["serve.compile=true", "serve.lora_hotswap=false"])
    )
    assert (off.compile, off.hotswap) == (True, False)
