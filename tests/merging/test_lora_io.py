"""LoRA files: the merged file loads in diffusers at the right scale (selma_ray.merging.lora_io)."""

from __future__ import annotations

import torch

from selma_ray import layout
from selma_ray.merging import (
    alpha_from_metadata,
    delta_weights,
    lora_file_bytes,
    merge_loras,
    read_lora_bytes,
)
from selma_ray.merging.state import module_ranks

# --------------------------------------------------------------------------- (b) diffusers


def test_merged_file_matches_set_adapters_in_diffusers(
    sd_path, experts, loaded, spec, make_pipe, draw, tmp_path
):
    states, alphas = loaded
    weights = [0.6, 0.3, -0.4]
    pipe = make_pipe(sd_path)
    base = draw(pipe)
    names = [f"skill_{s}" for s in spec.skills]
    for s, name in zip(spec.skills, names, strict=True):
        pipe.load_lora_weights(str(experts[s]), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=weights)
    mixed = draw(pipe)
    pipe.unload_lora_weights()
    assert abs(draw(pipe) - base).max() == 0

    merged, alpha = merge_loras(states, alphas, "linear", weights)
    (tmp_path / layout.LORA_FILE).write_bytes(lora_file_bytes(merged, alpha))
    pipe.load_lora_weights(str(tmp_path), adapter_name="merged")
    out = draw(pipe)
    assert abs(mixed - base).mean() > 1e-3  # the LoRAs do change the image
    assert abs(out - mixed).max() < 1e-5


def test_per_module_alpha_file_loads_in_diffusers(sd_path, loaded, make_pipe, tmp_path):
    """rank_pattern / alpha_pattern metadata: diffusers applies each module's delta exactly."""
    states, alphas = loaded
    merged, _ = merge_loras(states, alphas, "ties", svd_rank=40)  # ranks 32 and 40
    alpha = {m: 0.5 * r + i for i, (m, r) in enumerate(module_ranks(merged).items())}
    (tmp_path / layout.LORA_FILE).write_bytes(lora_file_bytes(merged, alpha))
    state, md = read_lora_bytes((tmp_path / layout.LORA_FILE).read_bytes())
    assert alpha_from_metadata(state, md) == alpha
    pipe = make_pipe(sd_path)
    pipe.load_lora_weights(str(tmp_path), adapter_name="merged")
    want = delta_weights(merged, alpha)
    for m, d in want.items():
        comp, _, local = m.partition(".")
        layer = getattr(pipe, comp).get_submodule(local)
        assert torch.allclose(layer.get_delta_weight("merged"), d, atol=1e-6), m
