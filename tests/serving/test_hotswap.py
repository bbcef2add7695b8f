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


def test_a_merge_with_per_module_ranks_hotswaps_with_its_experts(tiny_models, tmp_path):
    """A TIES merge whose rank is capped per module (min(out, in)): its file used to carry a
    per-module alpha pattern, which PEFT refuses to hot-swap with the experts' (none), so the
    first switch failed and took the slot with it; and preparing the slot rewrote its stored
    rank pattern, so its capped modules were drawn at the wrong scale."""
    import numpy as np

    from selma_ray.merging import alpha_from_metadata, lora_file_bytes, merge_loras
    from selma_ray.merging import read_lora_bytes as read
    from selma_ray.merging.state import module_ranks
    from selma_ray.serving.model import VariantPipeline, discover_variants, make_random_run_dir

    spec = make_random_run_dir(str(tmp_path / "run"), rank=24, seed=4)
    rd = RunDir(spec.run_dir)
    experts = [read(rd.read_bytes(*layout.expert_lora(s))) for s in ("countbench", "whoops")]
    merged, alpha = merge_loras(
        [st for st, _ in experts], [alpha_from_metadata(st, md) for st, md in experts], "ties",
        svd_rank=48,
    )  # fmt: skip
    assert len(set(module_ranks(merged).values())) > 1  # capped in the narrower modules
    rd.write_bytes(lora_file_bytes(merged, alpha), *layout.merged_lora())
    spec = dataclasses.replace(discover_variants(rd), hotswap=True)
    swapping = VariantPipeline(spec, device="cpu", torch_threads=1)
    for variant in ORDER:
        expected = _fresh(spec, variant).draw(_job(variant))
        diff = np.abs(swapping.draw(_job(variant)).astype(int) - expected.astype(int))
        assert diff.max() <= 1, variant  # the padded slot may round a last bit otherwise


def test_a_variant_that_cannot_hotswap_stops_the_replica_at_start(mixed_ranks, tmp_path):
    """A merged LoRA adapting fewer modules than the slot was built for: refused when the
    replica starts, naming the variant, not on its first request."""
    import shutil

    from selma_ray.merging import lora_file_bytes, read_lora_bytes
    from selma_ray.serving.model import VariantPipeline, discover_variants

    root = tmp_path / "run"
    shutil.copytree(mixed_ranks.run_dir, root)
    rd = RunDir(str(root))
    state, _ = read_lora_bytes(rd.read_bytes(*layout.merged_lora()))
    fewer = {k: v for k, v in state.items() if "attn2" not in k}
    assert len(fewer) < len(state)
    rd.write_bytes(lora_file_bytes(fewer, 8.0), *layout.merged_lora())
    spec = dataclasses.replace(discover_variants(rd), hotswap=True)
    with pytest.raises(ValueError, match="hot-swap variant 'countbench'.*unexpected keys"):
        VariantPipeline(spec, device="cpu", torch_threads=1)


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
