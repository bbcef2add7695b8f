"""SELMA stage 3 core: train one LoRA expert per skill from its imagefolder, without Ray.

* :mod:`selma_ray.training.data`: imagefolder -> (image, caption) pairs, held-out split, pixels.
* :mod:`selma_ray.training.components`: loading a base model's frozen parts.
* :mod:`selma_ray.training.inputs`: VAE / text encoding, :class:`EncodedInputs`, batches.
* :mod:`selma_ray.training.store`: the on-disk input cache (key, files, reuse or rebuild).
* :mod:`selma_ray.training.encoder`: :class:`CacheEncoder`, the encoding pass over skills.
* :mod:`selma_ray.training.lora`: LoRA adapters, the denoising loss, state copies, export.
* :mod:`selma_ray.training.loop`: :func:`train_expert`, the :class:`Reporter` protocol,
  :class:`LocalReporter`, :class:`ExpertCheckpoint`, :class:`ExpertResult`.

Names are re-exported lazily so that importing this package does not import torch.
"""

from __future__ import annotations

from selma_ray._lazy import lazy_exports

_EXPORTS = {
    "Pair": "data",
    "load_pairs": "data",
    "preprocess": "data",
    "split_holdout": "data",
    "write_synthetic_skill": "data",
    "Components": "components",
    "load_components": "components",
    "EncodedInputs": "inputs",
    "OnTheFlyInputs": "inputs",
    "encode_pairs": "inputs",
    "CacheInfo": "store",
    "cache_is_current": "store",
    "cache_key": "store",
    "cache_uri": "store",
    "load_or_build_cache": "store",
    "CacheEncoder": "encoder",
    "add_lora": "lora",
    "load_lora_state": "lora",
    "lora_state": "lora",
    "noise_pred_loss": "lora",
    "save_lora": "lora",
    "ExpertCheckpoint": "loop",
    "ExpertResult": "loop",
    "LocalReporter": "loop",
    "Reporter": "loop",
    "train_expert": "loop",
}

__all__ = [
    "CacheEncoder",
    "CacheInfo",
    "Components",
    "EncodedInputs",
    "ExpertCheckpoint",
    "ExpertResult",
    "LocalReporter",
    "OnTheFlyInputs",
    "Pair",
    "Reporter",
    "add_lora",
    "cache_is_current",
    "cache_key",
    "cache_uri",
    "encode_pairs",
    "load_components",
    "load_lora_state",
    "load_or_build_cache",
    "load_pairs",
    "lora_state",
    "noise_pred_loss",
    "preprocess",
    "save_lora",
    "split_holdout",
    "train_expert",
    "write_synthetic_skill",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
