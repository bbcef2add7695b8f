"""Diffusers-format LoRA state dicts: their modules, ranks, alphas, factors and updates.

A state dict is a ``dict[str, Tensor]`` as ``safetensors.torch.load`` reads it from a diffusers
LoRA file. A LoRA module ``m`` (e.g. ``unet.down_blocks.1.attentions.0.transformer_blocks.0.
attn1.to_q`` or ``text_encoder.encoder.layers.0.self_attn.q_proj``) has a down matrix ``A``
(``r x in``) and an up matrix ``B`` (``out x r``), under any of the key styles diffusers writes
and reads: ``m.lora_A.weight`` / ``m.lora_B.weight`` (PEFT), ``m.lora.down.weight`` /
``m.lora.up.weight`` (diffusers UNet) or ``m.lora_linear_layer.down.weight`` / ``.up.weight``
(diffusers text encoders). Conv LoRAs (4-D ``A``, ``B``) are handled by flattening. The update
of an expert is ``delta_W = scale * B @ A`` with ``scale = alpha / r``; ``alpha`` is a number
for the whole expert or a ``{module: alpha}`` mapping (:data:`Alpha`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeAlias

import torch
from torch import Tensor

__all__ = ["Alpha", "delta_weights", "factors", "lora_modules", "module_alphas", "module_ranks"]

#: Per-expert LoRA alpha: one number for every module, or ``{module: alpha}``.
Alpha: TypeAlias = "float | Mapping[str, float]"

# (A suffix, B suffix) per key style; the first matching style wins.
_KEY_STYLES: tuple[tuple[str, str], ...] = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
)


def _not_a_lora_key(name: str, key: str) -> ValueError:
    styles = ", ".join(f"{a}/{b}" for a, b in _KEY_STYLES)
    return ValueError(
        f"{name}: key {key!r} is not a LoRA down/up weight (expected one of {styles}); "
        "LoRA biases, DoRA and kohya-style alpha keys cannot be merged: export the "
        "expert with selma_ray.training.lora.save_lora"
    )


def lora_modules(state: Mapping[str, Tensor], name: str = "state") -> dict[str, tuple[str, str]]:
    """``{module: (A key, B key)}`` of a LoRA state dict, in sorted module order.

    Raises ValueError naming ``name`` and the key for anything that is not a LoRA down/up
    weight (biases, DoRA magnitudes, kohya ``.alpha`` keys) or an A without its B.
    """
    a_keys: dict[str, str] = {}
    b_keys: dict[str, str] = {}
    for key in state:
        for a_suffix, b_suffix in _KEY_STYLES:
            if key.endswith(a_suffix):
                a_keys[key[: -len(a_suffix)]] = key
                break
            if key.endswith(b_suffix):
                b_keys[key[: -len(b_suffix)]] = key
                break
        else:
            raise _not_a_lora_key(name, key)
    unpaired = sorted(set(a_keys) ^ set(b_keys))
    if unpaired:
        msg = f"{name}: LoRA module(s) without both down and up weights: {unpaired[:3]}"
        raise ValueError(msg)
    if not a_keys:
        msg = f"{name}: the state dict holds no LoRA weights"
        raise ValueError(msg)
    return {m: (a_keys[m], b_keys[m]) for m in sorted(a_keys)}


def module_ranks(state: Mapping[str, Tensor]) -> dict[str, int]:
    """``{module: rank}`` (rows of each A)."""
    return {m: int(state[a].shape[0]) for m, (a, _) in lora_modules(state).items()}


def module_alphas(alpha: Alpha, modules: Sequence[str], name: str = "alpha") -> dict[str, float]:
    """``{module: alpha}`` for a per-expert alpha given as a number or a mapping.

    Raises ValueError for a module without an alpha or an alpha that is not a positive number.
    """
    if isinstance(alpha, Mapping):
        missing = [m for m in modules if m not in alpha]
        if missing:
            msg = f"{name}: no alpha for module(s) {missing[:3]}; give one per LoRA module"
            raise ValueError(msg)
        out = {m: float(alpha[m]) for m in modules}
    else:
        out = dict.fromkeys(modules, float(alpha))
    bad = {m: a for m, a in out.items() if not math.isfinite(a) or a <= 0}
    if bad:
        first = next(iter(bad.items()))
        msg = f"{name}: LoRA alpha must be a positive number, got {first[1]} for {first[0]}"
        raise ValueError(msg)
    return out


def _as_2d(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def factors(
    state: Mapping[str, Tensor], keys: tuple[str, str], device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """``(A as r x in_flat, B as out x r)`` of one module, float32 on ``device``."""
    a, b = state[keys[0]], state[keys[1]]
    return (
        _as_2d(a).to(device=device, dtype=torch.float32),
        _as_2d(b).to(device=device, dtype=torch.float32),
    )


def delta_weights(state: Mapping[str, Tensor], alpha: Alpha) -> dict[str, Tensor]:
    """``{module: scale * B @ A}`` in the base weight's shape (float32), ``scale = alpha / r``."""
    modules = lora_modules(state)
    alphas = module_alphas(alpha, list(modules))
    out: dict[str, Tensor] = {}
    for m, keys in modules.items():
        a, b = factors(state, keys)
        scale = alphas[m] / a.shape[0]
        out[m] = (scale * (b @ a)).reshape(b.shape[0], *state[keys[0]].shape[1:])
    return out
