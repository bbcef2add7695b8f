"""Diffusers-format LoRA files as bytes: read a state dict and its alpha, write one with the
adapter metadata that makes ``pipe.load_lora_weights`` apply it at the right scale.

No file I/O: these functions take and return a file's bytes; where the bytes live is the
caller's business (the merge stage reads and writes them through a
:class:`~selma_ray.storage.RunDir`).
"""

from __future__ import annotations

import collections
import json
import math
import struct
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from selma_ray.merging.state import Alpha, module_alphas, module_ranks

__all__ = ["alpha_from_metadata", "lora_file_bytes", "lora_metadata", "read_lora_bytes"]

_COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "transformer")
_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY


def _split_component(module: str) -> tuple[str | None, str]:
    head, _, rest = module.partition(".")
    if head in _COMPONENTS and rest:
        return head, rest
    return None, module


def read_lora_bytes(
    data: bytes, name: str = "LoRA file"
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(state dict, safetensors __metadata__)`` of the bytes of a ``.safetensors`` file."""
    from safetensors.torch import load

    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        state = load(data)
    except Exception as e:  # any parse failure means: not a safetensors file
        msg = f"{name} is not a readable .safetensors file ({type(e).__name__}: {e})"
        raise ValueError(msg) from e
    metadata = header.get("__metadata__") or {}
    return state, {str(k): str(v) for k, v in metadata.items()}


def _component_configs(raw: str, name: str) -> dict[str | None, dict[str, Any]]:
    """``{component: {config key: value}}`` of the flat ``<component>.<key>`` metadata JSON."""
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError as e:
        msg = f"{name}: its {_METADATA_KEY} metadata is not valid JSON ({e})"
        raise ValueError(msg) from e
    per_component: dict[str | None, dict[str, Any]] = collections.defaultdict(dict)
    for key, value in flat.items():
        comp, rest = _split_component(key)
        per_component[comp][rest] = value
    return per_component


def alpha_from_metadata(
    state: Mapping[str, Tensor], metadata: Mapping[str, str], name: str = "LoRA file"
) -> Alpha | None:
    """The per-module alpha diffusers will use when loading this file, or None without metadata.

    Reads the ``lora_adapter_metadata`` that ``save_lora_weights(..., *_lora_adapter_metadata=)``
    writes (``<component>.lora_alpha``, ``.alpha_pattern``, ``.use_rslora``...). A number when
    every module has the same alpha. rsLoRA's ``alpha / sqrt(r)`` is folded into the alpha.
    """
    from peft.utils.other import get_pattern_key

    raw = metadata.get(_METADATA_KEY)
    if not raw:
        return None
    per_component = _component_configs(raw, name)
    out: dict[str, float] = {}
    for m, r in module_ranks(state).items():
        comp, local = _split_component(m)
        cfg = per_component.get(comp)
        if not cfg:
            out[m] = float(r)  # diffusers' convention without metadata: scale 1
            continue
        if cfg.get("use_dora"):
            msg = f"{name}: DoRA adapters ({comp}.use_dora) cannot be merged"
            raise ValueError(msg)
        pattern = cfg.get("alpha_pattern") or {}
        key = get_pattern_key(list(pattern), local)
        alpha = float(pattern.get(key, cfg.get("lora_alpha", 8)))
        if cfg.get("use_rslora"):
            alpha = alpha * r / math.sqrt(r)
        out[m] = alpha
    values = set(out.values())
    return values.pop() if len(values) == 1 else out


def _lora_config(mods: Mapping[str, tuple[int, float]]) -> dict[str, Any]:
    """One component's PEFT ``LoraConfig`` fields from ``{local module: (rank, alpha)}``."""
    r = collections.Counter(v[0] for v in mods.values()).most_common(1)[0][0]
    a = collections.Counter(v[1] for v in mods.values()).most_common(1)[0][0]
    return {
        "r": r,
        "lora_alpha": a,
        "rank_pattern": {k: v[0] for k, v in mods.items() if v[0] != r},
        "alpha_pattern": {k: v[1] for k, v in mods.items() if v[1] != a},
        "target_modules": sorted(mods),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "peft_type": "LORA",
    }


def lora_metadata(
    state: Mapping[str, Tensor], alpha: Alpha, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """safetensors ``__metadata__`` so that ``pipe.load_lora_weights`` uses ``alpha`` exactly.

    One PEFT ``LoraConfig`` per component (``unet``, ``text_encoder``...): the most common rank
    and alpha, with ``rank_pattern`` / ``alpha_pattern`` for the modules that differ, and the
    exact module paths as ``target_modules``. ``extra`` entries are added as they are.
    """
    ranks = module_ranks(state)
    alphas = module_alphas(alpha, list(ranks))
    groups: dict[str | None, dict[str, tuple[int, float]]] = collections.defaultdict(dict)
    for m, r in ranks.items():
        comp, local = _split_component(m)
        groups[comp][local] = (r, alphas[m])
    flat: dict[str, Any] = {}
    for comp, mods in groups.items():
        if comp is None:
            continue  # keys without a component prefix: diffusers cannot place them anyway
        flat.update({f"{comp}.{k}": v for k, v in _lora_config(mods).items()})
    out = {"format": "pt"}
    if flat:
        out[_METADATA_KEY] = json.dumps(flat, indent=2, sort_keys=True)
    out.update({str(k): str(v) for k, v in (extra or {}).items()})
    return out


def lora_file_bytes(
    state: Mapping[str, Tensor], alpha: Alpha, extra: Mapping[str, str] | None = None
) -> bytes:
    """The bytes of a diffusers LoRA file (``layout.LORA_FILE``) with :func:`lora_metadata`."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return save(tensors, metadata=lora_metadata(state, alpha, extra))
