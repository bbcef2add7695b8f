"""Owns a skill's encoded training inputs: the encoders and the batches they make.

An expert trains on the frozen VAE's latents and the frozen text encoder's hidden states.

* :func:`tokenize`, :func:`encode_text`, :func:`encode_images`: the frozen encoders of
  :class:`~selma_ray.training.components.Components`. SD 1.x / 2.x use the CLIP text encoder's
  last hidden state; SDXL concatenates both encoders' penultimate hidden states, adds the
  second's pooled embeddings and the time ids ``(orig_h, orig_w, crop_top, crop_left, res,
  res)`` via ``added_cond_kwargs``.
* :func:`encode_pairs` (pure) encodes every pair once into :class:`EncodedInputs`: per-image
  ``latents`` [N,C,h,w] (and, with ``random_flip``, ``latents_flipped``, the latents of the
  horizontally flipped crop); ``text_index`` [N] into the per-caption tables ``prompt_embeds``
  [T,L,D] and ``input_ids`` [T,L]; SDXL adds ``input_ids_2``, ``pooled_embeds`` [T,D'] and
  ``time_ids`` / ``time_ids_flipped`` [N,6]. All float tensors are float32.
  :meth:`EncodedInputs.to_safetensors` serialises them with the cache key in the metadata;
  :mod:`selma_ray.training.store` decides where that goes.
* :class:`OnTheFlyInputs` is the same data without a cache (encodes every batch); it produces
  the same batches, and is what ``train.cache_inputs=false`` uses.

Latents are ``latent_dist.mean`` (the posterior mode), not a sample: deterministic, independent
of batch composition, and for Stable Diffusion's VAEs the posterior std is small next to the
diffusion noise. They are scaled like diffusers' pipelines: ``(mean - shift_factor) *
scaling_factor`` (``shift_factor`` only where the VAE config has one). Random crops
(``center_crop=False``) are drawn once per image from ``(seed, file_name)``.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, BinaryIO

import torch

from selma_ray.training.components import Components
from selma_ray.training.data import CropInfo, Pair, resize_and_crop, subseed, to_tensor

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from torch import nn

__all__ = [
    "KEY_METADATA",
    "Batch",
    "EncodedInputs",
    "OnTheFlyInputs",
    "encode_images",
    "encode_pairs",
    "encode_text",
    "stored_key",
    "to_device",
    "tokenize",
]

#: The safetensors metadata entry that records the cache key the tensors were built for.
KEY_METADATA = "selma_cache_key"


# --------------------------------------------------------------------------- encoders


def to_device(t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``t`` on ``device``; onto a GPU from pinned memory without blocking the host (a
    blocking copy waits for every kernel queued before it, so the GPU idles while the host
    prepares the next micro-batch). torch's pinned-memory pool keeps the buffer until the copy
    is done."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def tokenize(
    components: Components, texts: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids padded/truncated to each tokenizer's ``model_max_length`` (CPU tensors)."""

    def ids(tokenizer: Any) -> torch.Tensor:
        return tokenizer(
            list(texts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    second = ids(components.tokenizer_2) if components.tokenizer_2 is not None else None
    return ids(components.tokenizer), second


def encode_text(
    components: Components,
    input_ids: torch.Tensor,
    input_ids_2: torch.Tensor | None = None,
    text_encoder: nn.Module | None = None,
    text_encoder_2: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(prompt_embeds, pooled_embeds)`` for token ids; pooled is None for SD 1.x/2.x.

    ``text_encoder(_2)`` override the components' encoders (e.g. DDP-wrapped LoRA encoders).
    Runs with whatever grad mode the caller has.
    """
    te = text_encoder if text_encoder is not None else components.text_encoder
    device = _module_device(components.text_encoder)
    if components.kind == "sd":
        return te(input_ids.to(device), return_dict=True).last_hidden_state, None
    te2 = text_encoder_2 if text_encoder_2 is not None else components.text_encoder_2
    if te2 is None or input_ids_2 is None:
        msg = "SDXL text encoding needs text_encoder_2 and input_ids_2"
        raise ValueError(msg)
    out1 = te(input_ids.to(device), output_hidden_states=True, return_dict=True)
    out2 = te2(input_ids_2.to(device), output_hidden_states=True, return_dict=True)
    embeds = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    return embeds, out2.text_embeds


def encode_images(components: Components, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in ``[-1, 1]`` (Bx3xHxW) -> scaled VAE latents (posterior mean), float32."""
    vae = components.vae
    param = next(vae.parameters())
    dist = vae.encode(pixels.to(param.device, param.dtype)).latent_dist
    latents = dist.mean.float()
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        latents = latents - shift
    # contiguous: the VAE may return channels-last strides, and the UNet's convolutions take
    # another (numerically different) path for those, so cached and fresh batches would differ
    return (latents * vae.config.scaling_factor).contiguous()


def _time_ids(info: CropInfo, resolution: int, flipped: bool) -> list[float]:
    left = info.flipped_left(resolution) if flipped else info.left
    return [
        float(info.original_height),
        float(info.original_width),
        float(info.top),
        float(left),
        float(resolution),
        float(resolution),
    ]


def _crop(pair: Pair, resolution: int, center_crop: bool, seed: int) -> tuple[Any, CropInfo]:
    rng = None if center_crop else random.Random(subseed(seed, "crop", pair.file_name))
    return resize_and_crop(pair.image(), resolution, center_crop, rng)


# --------------------------------------------------------------------------- encoded inputs


@dataclass
class Batch:
    """One (micro-)batch on the training device."""

    latents: torch.Tensor
    encoder_hidden_states: torch.Tensor | None  # None: encode input_ids (text-encoder LoRA)
    input_ids: torch.Tensor
    input_ids_2: torch.Tensor | None = None
    pooled_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def added_cond_kwargs(
        self, pooled: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor] | None:
        """SDXL's ``added_cond_kwargs`` (None for SD 1.x/2.x)."""
        pooled = pooled if pooled is not None else self.pooled_embeds
        if self.time_ids is None or pooled is None:
            return None
        return {"text_embeds": pooled, "time_ids": self.time_ids}


def _metadata(f: BinaryIO) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors stream, read from its header only.

    The header is an 8-byte little-endian length followed by that much JSON.
    """
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
    return header.get("__metadata__", {})


def stored_key(f: BinaryIO) -> dict[str, Any]:
    """The cache key recorded in :meth:`EncodedInputs.to_safetensors` output (a binary stream).

    Reads only the header, not the tensors; ``{}`` when the file records no key.
    """
    return json.loads(_metadata(f).get(KEY_METADATA, "{}"))


@dataclass
class EncodedInputs:
    """Encoded pairs: per-image latents (+ flips, time ids) and per-caption text tables."""

    keys: list[str]
    latents: torch.Tensor
    text_index: torch.Tensor
    prompt_embeds: torch.Tensor
    input_ids: torch.Tensor
    latents_flipped: torch.Tensor | None = None
    input_ids_2: torch.Tensor | None = None
    pooled_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    time_ids_flipped: torch.Tensor | None = None

    _TENSORS = (
        "latents", "text_index", "prompt_embeds", "input_ids", "latents_flipped",
        "input_ids_2", "pooled_embeds", "time_ids", "time_ids_flipped",
    )  # fmt: skip

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def has_flips(self) -> bool:
        return self.latents_flipped is not None

    def rows_of(self, keys: Sequence[str]) -> list[int]:
        """Row numbers of the given file names (raises naming the first one not cached)."""
        where = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in where]
        if missing:
            msg = f"{len(missing)} file(s) are not in the input cache, e.g. {missing[0]!r}"
            raise KeyError(msg)
        return [where[k] for k in keys]

    def to(self, device: str | torch.device) -> EncodedInputs:
        """A copy with every tensor on ``device``."""
        moved = {
            name: (t.to(device) if isinstance(t, torch.Tensor) else t)
            for name in self._TENSORS
            for t in [getattr(self, name)]
        }
        return EncodedInputs(keys=list(self.keys), **moved)

    def batch(
        self,
        rows: Sequence[int],
        flips: Sequence[bool],
        device: str | torch.device,
        *,
        with_text_states: bool = True,
    ) -> Batch:
        """Gather rows; a True flip picks the flipped latents (and time ids)."""
        if any(flips) and self.latents_flipped is None:
            msg = "the input cache has no flipped latents (it was built with random_flip off)"
            raise ValueError(msg)
        # index tensors copied without blocking, no host read of a device tensor: on a GPU
        # cache the gather is queued behind the running step instead of waiting for it
        where = self.latents.device
        idx = to_device(torch.as_tensor(list(rows), dtype=torch.long), where)
        flip = to_device(torch.as_tensor(list(flips), dtype=torch.bool), where)
        any_flip = any(flips)
        latents = self.latents[idx]
        if self.latents_flipped is not None and any_flip:
            latents = torch.where(flip[:, None, None, None], self.latents_flipped[idx], latents)
        text = self.text_index[idx]
        time_ids = None
        if self.time_ids is not None:
            time_ids = self.time_ids[idx]
            if self.time_ids_flipped is not None and any_flip:
                time_ids = torch.where(flip[:, None], self.time_ids_flipped[idx], time_ids)
        return Batch(
            latents=latents.to(device),
            encoder_hidden_states=self.prompt_embeds[text].to(device) if with_text_states else None,
            input_ids=self.input_ids[text].to(device),
            input_ids_2=self.input_ids_2[text].to(device) if self.input_ids_2 is not None else None,
            pooled_embeds=(
                self.pooled_embeds[text].to(device) if self.pooled_embeds is not None else None
            ),
            time_ids=time_ids.to(device) if time_ids is not None else None,
        )

    # serialisation
    def to_safetensors(self, key: dict[str, Any]) -> bytes:
        """The tensors as safetensors bytes; the row keys and ``key`` go into the metadata."""
        from safetensors.torch import save

        tensors = {
            name: t.detach().to("cpu").contiguous()
            for name in self._TENSORS
            for t in [getattr(self, name)]
            if t is not None
        }
        meta = {"keys": json.dumps(self.keys), KEY_METADATA: json.dumps(key, sort_keys=True)}
        return save(tensors, metadata=meta)

    @classmethod
    def from_safetensors(cls, data: bytes) -> tuple[EncodedInputs, dict[str, Any]]:
        """Read :meth:`to_safetensors` bytes back: ``(inputs, the key they were built for)``."""
        from safetensors.torch import load

        tensors = load(data)
        meta = _metadata(io.BytesIO(data))
        keys = json.loads(meta["keys"])
        key = json.loads(meta.get(KEY_METADATA, "{}"))
        known = {f.name for f in fields(cls)}
        return cls(keys=keys, **{k: v for k, v in tensors.items() if k in known}), key


# --------------------------------------------------------------------------- encode_pairs


def _encode_image_tables(
    components: Components,
    pairs: Sequence[Pair],
    *,
    resolution: int,
    center_crop: bool,
    random_flip: bool,
    seed: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, torch.Tensor | None]:
    """Per-image tables: ``latents``, ``latents_flipped``, ``time_ids``, ``time_ids_flipped``."""
    sdxl = components.kind == "sdxl"
    latents: list[torch.Tensor] = []
    flipped: list[torch.Tensor] = []
    time_ids: list[list[float]] = []
    time_ids_flipped: list[list[float]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        crops = [_crop(p, resolution, center_crop, seed) for p in chunk]
        pixels = torch.stack([to_tensor(img) for img, _ in crops])
        if random_flip:
            both = encode_images(components, torch.cat([pixels, pixels.flip(-1)]))
            latents.append(both[: len(chunk)].cpu())
            flipped.append(both[len(chunk) :].cpu())
        else:
            latents.append(encode_images(components, pixels).cpu())
        if sdxl:
            time_ids.extend(_time_ids(info, resolution, False) for _, info in crops)
            time_ids_flipped.extend(_time_ids(info, resolution, True) for _, info in crops)
        if progress is not None:
            progress(min(start + batch_size, len(pairs)), len(pairs))
    return {
        "latents": torch.cat(latents),
        "latents_flipped": torch.cat(flipped) if random_flip else None,
        "time_ids": torch.tensor(time_ids) if sdxl else None,
        "time_ids_flipped": torch.tensor(time_ids_flipped) if sdxl and random_flip else None,
    }


def _encode_caption_tables(
    components: Components, texts: Sequence[str], batch_size: int
) -> dict[str, torch.Tensor | None]:
    """Per-caption tables: ``input_ids(_2)``, ``prompt_embeds``, ``pooled_embeds``."""
    embeds: list[torch.Tensor] = []
    pooled: list[torch.Tensor] = []
    ids, ids_2 = tokenize(components, texts)
    for start in range(0, len(texts), batch_size):
        part_2 = ids_2[start : start + batch_size] if ids_2 is not None else None
        e, p = encode_text(components, ids[start : start + batch_size], part_2)
        embeds.append(e.float().cpu())
        if p is not None:
            pooled.append(p.float().cpu())
    return {
        "input_ids": ids,
        "input_ids_2": ids_2,
        "prompt_embeds": torch.cat(embeds),
        "pooled_embeds": torch.cat(pooled) if pooled else None,
    }


def encode_pairs(
    components: Components,
    pairs: Sequence[Pair],
    *,
    resolution: int,
    center_crop: bool = True,
    random_flip: bool = True,
    seed: int = 0,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> EncodedInputs:
    """Encode images (and their flips) with the VAE and captions with the text encoder(s).

    Pure: reads only ``pairs`` and the frozen components, writes nothing. Captions shared by
    several images are encoded once. ``progress(done, total)`` is called after each image batch.
    """
    if not pairs:
        msg = "encode_pairs: no pairs to encode"
        raise ValueError(msg)
    texts = sorted({p.text for p in pairs})
    text_row = {t: i for i, t in enumerate(texts)}
    with torch.no_grad():
        images = _encode_image_tables(
            components,
            pairs,
            resolution=resolution,
            center_crop=center_crop,
            random_flip=random_flip,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
        )
        captions = _encode_caption_tables(components, texts, batch_size)
    return EncodedInputs(
        keys=[p.file_name for p in pairs],
        text_index=torch.tensor([text_row[p.text] for p in pairs], dtype=torch.long),
        **images,  # type: ignore[arg-type]
        **captions,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- without a cache


class OnTheFlyInputs:
    """The same batches as a cache, encoded from the pairs every time (no cache)."""

    def __init__(
        self,
        components: Components,
        pairs: Sequence[Pair],
        *,
        resolution: int,
        center_crop: bool = True,
        random_flip: bool = True,
        seed: int = 0,
    ) -> None:
        self.components = components
        self.pairs = list(pairs)
        self.keys = [p.file_name for p in self.pairs]
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def has_flips(self) -> bool:
        return self.random_flip

    def rows_of(self, keys: Sequence[str]) -> list[int]:
        where = {k: i for i, k in enumerate(self.keys)}
        return [where[k] for k in keys]

    def batch(
        self,
        rows: Sequence[int],
        flips: Sequence[bool],
        device: str | torch.device,
        *,
        with_text_states: bool = True,
    ) -> Batch:
        """Crop, flip and encode the chosen pairs now (the same batch a cache gathers)."""
        comps = self.components
        chosen = [self.pairs[i] for i in rows]
        crops = [_crop(p, self.resolution, self.center_crop, self.seed) for p in chosen]
        pixels = torch.stack(
            [
                to_tensor(img).flip(-1) if flip else to_tensor(img)
                for (img, _), flip in zip(crops, flips, strict=True)
            ]
        )
        with torch.no_grad():
            latents = encode_images(comps, pixels)
            ids, ids_2 = tokenize(comps, [p.text for p in chosen])
            embeds = pooled = None
            if with_text_states or comps.kind == "sdxl":
                embeds, pooled = encode_text(comps, ids, ids_2)
        time_ids = None
        if comps.kind == "sdxl":
            time_ids = torch.tensor(
                [
                    _time_ids(info, self.resolution, bool(flip))
                    for (_, info), flip in zip(crops, flips, strict=True)
                ]
            ).to(device)
        return Batch(
            latents=latents.to(device),
            encoder_hidden_states=(
                embeds.float().to(device) if with_text_states and embeds is not None else None
            ),
            input_ids=ids.to(device),
            input_ids_2=ids_2.to(device) if ids_2 is not None else None,
            pooled_embeds=pooled.float().to(device) if pooled is not None else None,
            time_ids=time_ids,
        )
