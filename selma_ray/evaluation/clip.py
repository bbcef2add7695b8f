"""Stage-5 CLIPScore with a transformers ``CLIPModel`` (Ray Data callable class).

:class:`ClipScorer` loads ``CLIPModel`` + ``CLIPProcessor`` by reference
(``openai/clip-vit-large-patch14``, a local path, ``tiny:clip``, or ``tiny:clip-vit-l``, the
ViT-L/14 stand-in) and maps a batch of ``{"image_uri", "text"}`` rows to ``clip_score``
(``2.5 * max(cos, 0)``, see :func:`selma_ray.evaluation.scoring.clip_score`) from the projected
image and text embeddings, the text read as Hessel et al.'s reference ``clipscore.py`` reads a
caption: after :data:`CLIPSCORE_PREFIX`. The scale is theirs, 0 to 2.5 (not torchmetrics' 0 to
100, which drops the prefix); their numbers were measured with ViT-B/32.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from selma_ray.evaluation.scoring import clip_score
from selma_ray.evaluation.vqa import read_image


class ImageTextScorer:
    """Ray Data callable class: one score per row, its image against its text, in the column
    :attr:`column`. Subclasses load their model in :meth:`load` and score in :meth:`score`
    (CLIPScore here; the preference scorers in :mod:`selma_ray.evaluation.preference`)."""

    #: the output column
    column: str = ""

    def __init__(
        self,
        model_ref: str,
        cache_dir: str | None = None,
        num_threads: int | None = None,
        device: str | None = None,
    ) -> None:
        import torch

        from selma_ray.images.generate import default_device

        t0 = time.perf_counter()
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = device or default_device()
        self.model_ref = model_ref
        self.load(model_ref, cache_dir)
        self.load_seconds = time.perf_counter() - t0

    def load(self, model_ref: str, cache_dir: str | None) -> None:
        raise NotImplementedError

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        """One float per (image, text) pair, row by row."""
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        uris = [str(u) for u in batch["image_uri"]]
        texts = [str(t) for t in batch["text"]]
        out = dict(batch)
        if not texts:
            out[self.column] = np.zeros(0)
            return out
        scores = self.score([read_image(u) for u in uris], texts)
        out[self.column] = np.asarray(scores, dtype=np.float64).reshape(len(texts))
        return out


#: What CLIPScore's reference implementation puts before every caption.
CLIPSCORE_PREFIX = "A photo depicts "


class ClipScorer(ImageTextScorer):
    """CLIPScore of each row's image against its text."""

    column = "clip_score"

    def load(self, model_ref: str, cache_dir: str | None) -> None:
        from transformers import CLIPModel, CLIPProcessor

        from selma_ray.models import resolve_model

        path = resolve_model(model_ref, cache_dir)
        self.processor = CLIPProcessor.from_pretrained(path)
        self.model = CLIPModel.from_pretrained(path).to(self.device).eval()

    def embeddings(self, images: Sequence[Any], texts: Sequence[str]) -> tuple[Any, Any]:
        """(image_embeds, text_embeds), row-paired, as float32 numpy arrays."""
        import torch

        inputs = self.processor(
            images=list(images),
            text=list(texts),
            return_tensors="pt",
            padding=True,
            truncation=True,
        ).to(self.device)
        with torch.inference_mode():
            out = self.model(**inputs)
        return (
            out.image_embeds.float().cpu().numpy(),
            out.text_embeds.float().cpu().numpy(),
        )

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        img, txt = self.embeddings(images, [CLIPSCORE_PREFIX + t for t in texts])
        return np.atleast_1d(clip_score(img, txt))
