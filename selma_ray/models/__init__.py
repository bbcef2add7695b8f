"""Model references and tiny offline models: ``resolve_model`` and the ``tiny:*`` builders.

``resolve_model(ref)`` turns a model reference into something ``from_pretrained`` loads: real
hub ids and local paths pass through; ``tiny:sd`` / ``tiny:llm`` (``tiny:sd@SEED``) build a tiny,
randomly initialised Stable Diffusion pipeline or chat LLM once into a cache directory, so the
whole pipeline runs on a laptop through the same loading code as a real model.
``stand_in_for(real_id)`` names the ``tiny:`` stand-in of the same architecture as a real model
(``STAND_INS``, :mod:`selma_ray.models.standins`).
"""

from selma_ray.models.registry import (
    CACHE_ENV,
    MOVED_HUB_IDS,
    TINY_KINDS,
    default_cache_dir,
    is_tiny_ref,
    resolve_model,
    tiny_model_dir,
)
from selma_ray.models.standins import STAND_INS, stand_in_for
from selma_ray.models.tiny import FORMAT_VERSION, make_tiny, make_tiny_llm, make_tiny_sd

__all__ = [
    "CACHE_ENV",
    "FORMAT_VERSION",
    "MOVED_HUB_IDS",
    "STAND_INS",
    "TINY_KINDS",
    "default_cache_dir",
    "is_tiny_ref",
    "make_tiny",
    "make_tiny_llm",
    "make_tiny_sd",
    "resolve_model",
    "stand_in_for",
    "tiny_model_dir",
]
