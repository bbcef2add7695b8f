"""Owns stage 3's encoding pass: :class:`CacheEncoder`, a Ray-Data-style callable over skills.

It builds the input caches of many skills up front, before the experts train (the distributed
layer maps it over one row per skill on an actor pool, on the GPUs when training uses them; it
runs just as well on its own). A training worker that finds no current cache builds its own
with the same :func:`~selma_ray.training.store.load_or_build_cache`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from selma_ray.config import TrainConfig
from selma_ray.training.components import Components, load_components
from selma_ray.training.store import cache_is_current, cache_key, cache_uri, load_or_build_cache

__all__ = ["ENCODE_COLUMNS", "CacheEncoder"]

#: Columns :class:`CacheEncoder` returns, one row per skill.
ENCODE_COLUMNS: tuple[str, ...] = ("skill", "built", "seconds", "pairs", "skipped", "error")


def _validated(train: TrainConfig | Mapping[str, Any]) -> TrainConfig:
    """``train`` validated here, whether it arrives typed (e.g. unpickled) or as a dump."""
    data = train.model_dump() if isinstance(train, TrainConfig) else dict(train)
    return TrainConfig.model_validate(data)


class CacheEncoder:
    """Build each skill's input cache before its expert trains (one row per skill).

    The frozen VAE and text encoder(s) are loaded once per instance, on first need, without the
    UNet. For each skill it reads the imagefolder (:func:`~selma_ray.training.data.load_pairs`),
    skips the skill when :func:`~selma_ray.training.store.cache_is_current`, else encodes and
    writes the skill's cache (:func:`~selma_ray.training.store.cache_uri`), which the expert's
    training workers then read instead of encoding. The cache key is the one training
    computes, so a cache built here is always reused there.

    A skill whose data is unusable (e.g. no usable image) is not fatal here: its row carries
    the error, and training that skill raises it, naming the skill.

    Args:
        train: the :class:`~selma_ray.config.TrainConfig` (resolution, crop, flip), or its
            ``model_dump()``; validated with ``TrainConfig.model_validate`` either way, since
            it crosses into the actor.
        base_model: the model the experts adapt, as configured (``tiny:sd``, a hub id, a path).
        run_dir_uri: the run directory (images in, caches out).
        model_cache_dir: where ``tiny:`` models are built (None = default cache).
        seed: the run seed (random crops derive from it).
        device: torch device (None = cuda if available, else cpu).
        batch_size: images per VAE call (each is encoded with its flip when random_flip is on).
    """

    def __init__(
        self,
        train: TrainConfig | Mapping[str, Any],
        base_model: str,
        run_dir_uri: str,
        model_cache_dir: str | None = None,
        seed: int = 0,
        device: str | None = None,
        batch_size: int = 8,
    ) -> None:
        from selma_ray.storage import RunDir

        self.train = _validated(train)
        self.base_model = base_model
        self.run_dir = RunDir(run_dir_uri)
        self.model_cache_dir = model_cache_dir
        self.seed = seed
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self._components: Components | None = None

    @property
    def components(self) -> Components:
        """The frozen encoders (no UNet), loaded on first use."""
        if self._components is None:
            from selma_ray.models import resolve_model

            path = resolve_model(self.base_model, self.model_cache_dir)
            self._components = load_components(path, device=self.device, unet=False)
        return self._components

    def encode_skill(self, skill: str, sources: Sequence[str] = ()) -> dict[str, Any]:
        """Build (or confirm) one skill's cache (with ``sources``: the joint baseline's, over
        those skills' pairs); returns its :data:`ENCODE_COLUMNS` row."""
        from selma_ray.training.data import load_job_pairs

        start = time.perf_counter()
        row: dict[str, Any] = dict.fromkeys(ENCODE_COLUMNS)
        row.update(skill=skill, built=False, pairs=0, skipped=0, error="")
        try:
            pairs, skipped = load_job_pairs(self.run_dir, skill, sources)
        except ValueError as e:
            row.update(error=str(e), seconds=time.perf_counter() - start)
            return row
        row.update(pairs=len(pairs), skipped=sum(skipped.values()))
        t = self.train
        options = {
            "resolution": t.resolution,
            "center_crop": t.center_crop,
            "random_flip": t.random_flip,
            "seed": self.seed,
        }
        uri = cache_uri(self.run_dir, skill)
        if not cache_is_current(uri, cache_key(pairs, model=self.base_model, **options)):
            _, info = load_or_build_cache(
                uri,
                pairs,
                lambda: self.components,
                model=self.base_model,
                batch_size=self.batch_size,
                **options,
            )
            row["built"] = info.built
        row["seconds"] = time.perf_counter() - start
        return row

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A Ray Data batch with a ``skill`` column (and optionally ``sources``: comma-joined
        skill names) -> the :data:`ENCODE_COLUMNS` of each."""
        import numpy as np

        sources = batch.get("sources")
        if sources is None:
            sources = [""] * len(batch["skill"])
        rows = [
            self.encode_skill(str(skill), tuple(filter(None, str(src).split(","))))
            for skill, src in zip(batch["skill"], sources, strict=True)
        ]
        return {c: np.array([r[c] for r in rows]) for c in ENCODE_COLUMNS}
