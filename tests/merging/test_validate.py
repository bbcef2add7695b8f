"""Validation: every error names the expert or option at fault (selma_ray.merging.validate)."""

from __future__ import annotations

import pytest
import torch

from selma_ray.merging import (
    METHODS,
    lora_modules,
    merge_loras,
    resolve_weights,
    validate_experts,
)

# --------------------------------------------------------------------------- (e) validation


def test_validation_errors_name_the_problem(loaded, spec):
    states, alphas = loaded
    names = ["expert 'coco'", "expert 'countbench'", "expert 'whoops'"]
    with pytest.raises(ValueError, match="different base models.*'tiny:sd@1'.*train.base_model"):
        validate_experts(states, names=names, base_models=["tiny:sd", "tiny:sd", "tiny:sd@1"])
    fewer = dict(states[1])
    a, b = next(iter(lora_modules(fewer).values()))
    del fewer[a], fewer[b]
    with pytest.raises(ValueError, match="different modules.*countbench.*lacks 1 module"):
        validate_experts([states[0], fewer, states[2]], names=names)
    with pytest.raises(
        ValueError, match=r"merge.weights has 2 value.*\(in order: coco, countbench"
    ):
        resolve_weights([1, 2], 3, spec.skills, field_name="merge.weights")
    with pytest.raises(ValueError, match="weights has 4 value"):
        merge_loras(states, alphas, "linear", [1, 2, 3, 4])
    with pytest.raises(ValueError, match="unknown; choose one of"):
        merge_loras(states, alphas, "average")
    with pytest.raises(ValueError, match="alpha must be a positive"):
        merge_loras(states, [1.0, 0.0, 2.0])
    bad = {**states[0], "unet.x.to_q.lora_B.bias": torch.zeros(3)}
    with pytest.raises(ValueError, match="not a LoRA down/up weight"):
        lora_modules(bad)
    wide = {
        k: (torch.zeros(v.shape[0], v.shape[1] + 1) if "down" in k else v)
        for k, v in states[1].items()
    }
    with pytest.raises(ValueError, match="different shapes"):
        validate_experts([states[0], wide])
    assert set(METHODS) == {"linear", "cat", "ties", "dare_linear", "dare_ties", "svd"}
