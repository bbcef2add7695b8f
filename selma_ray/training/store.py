"""Owns the on-disk input cache of a skill: its key, its files, reuse or rebuild.

A skill's encoded inputs (:class:`~selma_ray.training.inputs.EncodedInputs`) depend only on its
images, captions, the base model and the crop / flip settings, so they are encoded once and
kept in a cache directory (:func:`cache_uri`: the skill's :func:`selma_ray.layout.cache_dir`):

* :data:`selma_ray.layout.CACHE_FILE`: every usable pair of the skill (train and held-out; the
  split selects rows by file name, so a new ``validation_fraction`` re-uses the cache).
* :data:`selma_ray.layout.CACHE_KEY_FILE`: what it was built from (:func:`cache_key`: model,
  resolution, crop, flips, a hash of the file names + captions + image bytes, format). The same
  key is stored in the safetensors metadata, so a stale pair of files is never mixed.

:func:`load_or_build_cache` reuses a cache whose key matches and rebuilds it on any difference;
:func:`cache_is_current` checks a cache without reading its tensors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from selma_ray import layout
from selma_ray.training.components import Components
from selma_ray.training.data import files_hash
from selma_ray.training.inputs import EncodedInputs, encode_pairs, stored_key

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from selma_ray.storage import RunDir
    from selma_ray.training.data import Pair

__all__ = [
    "CACHE_FORMAT",
    "CacheInfo",
    "cache_is_current",
    "cache_key",
    "cache_uri",
    "load_or_build_cache",
]

#: Version of the cache's tensor layout; part of the key, so a new format rebuilds.
CACHE_FORMAT = 1


@dataclass
class CacheInfo:
    """How :func:`load_or_build_cache` got its inputs."""

    uri: str
    built: bool
    seconds: float
    key: dict[str, Any] = field(default_factory=dict)


def cache_uri(run_dir: RunDir, skill: str) -> str:
    """The URI of ``skill``'s cache directory in the run directory."""
    return run_dir.url(*layout.cache_dir(skill))


def cache_key(
    pairs: Sequence[Pair],
    *,
    model: str,
    resolution: int,
    center_crop: bool,
    random_flip: bool,
    seed: int,
) -> dict[str, Any]:
    """What a cache is built from; equal keys mean the cached tensors can be reused."""
    return {
        "format": CACHE_FORMAT,
        "model": model,
        "resolution": resolution,
        "center_crop": center_crop,
        "crop_seed": None if center_crop else seed,
        "random_flip": random_flip,
        "latents": "latent_dist.mean",
        "dtype": "float32",
        "count": len(pairs),
        "files_hash": files_hash(list(pairs)),
    }


def _read_current(
    store: RunDir, key: dict[str, Any], pairs: Sequence[Pair]
) -> EncodedInputs | None:
    """The cached inputs when both files match ``key`` and hold exactly ``pairs``, else None."""
    if not (store.exists(layout.CACHE_KEY_FILE) and store.exists(layout.CACHE_FILE)):
        return None
    try:
        if store.read_json(layout.CACHE_KEY_FILE) == key:
            inputs, stored = EncodedInputs.from_safetensors(store.read_bytes(layout.CACHE_FILE))
            if stored == key and inputs.keys == [p.file_name for p in pairs]:
                return inputs
    except (OSError, ValueError, KeyError, SafetensorError):
        pass  # unreadable, truncated or written by an older version: rebuild
    return None


def _write(store: RunDir, inputs: EncodedInputs, key: dict[str, Any]) -> None:
    """Write the tensors, then the key: a key file only ever names a complete tensors file."""
    store.write_bytes(inputs.to_safetensors(key), layout.CACHE_FILE)
    store.write_json(key, layout.CACHE_KEY_FILE)


def load_or_build_cache(
    cache_dir: str,
    pairs: Sequence[Pair],
    components: Components | Callable[[], Components],
    *,
    model: str,
    resolution: int,
    center_crop: bool = True,
    random_flip: bool = True,
    seed: int = 0,
    batch_size: int = 8,
    write: bool = True,
) -> tuple[EncodedInputs, CacheInfo]:
    """The encoded inputs of ``pairs``: read from ``cache_dir`` when its key matches, else built.

    ``cache_dir`` is any fsspec URI (normally :func:`cache_uri`). ``components`` may be a
    callable, called only when the cache must be built. ``write=False`` builds without storing
    (e.g. on non-zero ranks). Writes are atomic; concurrent builders write identical bytes.
    """
    from selma_ray.storage import RunDir

    start = time.perf_counter()
    store = RunDir(cache_dir)
    options = {
        "resolution": resolution,
        "center_crop": center_crop,
        "random_flip": random_flip,
        "seed": seed,
    }
    key = cache_key(pairs, model=model, **options)
    cached = _read_current(store, key, pairs)
    if cached is not None:
        return cached, CacheInfo(store.uri, False, time.perf_counter() - start, key)
    comps = components if isinstance(components, Components) else components()
    inputs = encode_pairs(comps, pairs, batch_size=batch_size, **options)
    if write:
        _write(store, inputs, key)
    return inputs, CacheInfo(store.uri, True, time.perf_counter() - start, key)


def cache_is_current(cache_dir: str, key: dict[str, Any]) -> bool:
    """Whether ``cache_dir`` holds a complete cache built for ``key``.

    Reads the key file and only the safetensors header (not the tensors).
    """
    from selma_ray.storage import RunDir

    store = RunDir(cache_dir)
    try:
        if not (store.exists(layout.CACHE_KEY_FILE) and store.exists(layout.CACHE_FILE)):
            return False
        if store.read_json(layout.CACHE_KEY_FILE) != key:
            return False
        with store.fs.open(store.path(layout.CACHE_FILE), "rb") as f:
            return stored_key(f) == key
    except (OSError, ValueError, KeyError):
        return False
