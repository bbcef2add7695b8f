"""Encoded training inputs: base-model components, one-time VAE/text encoding, the on-disk cache.

A skill expert trains on the frozen VAE's latents and the frozen text encoder's hidden states.
Both are fixed for a given image, caption and base model, so they are computed once per skill
(:func:`encode_pairs`, pure) and stored in the run directory (:func:`load_or_build_cache`):

* ``<cache_dir>/inputs.safetensors``: every usable pair of the skill (train and held-out; the
  split selects rows by file name, so a new ``validation_fraction`` re-uses the cache). Tensors:
  ``latents`` [N,C,h,w] and, with ``random_flip``, ``latents_flipped`` (the latents of the
  horizontally flipped crop); ``text_index`` [N] into the per-caption tables ``prompt_embeds``
  [T,L,D] and ``input_ids`` [T,L]; SDXL adds ``input_ids_2``, ``pooled_embeds`` [T,D'] and
  ``time_ids`` / ``time_ids_flipped`` [N,6]. All float tensors are float32.
* ``<cache_dir>/cache.json``: what it was built from (model, resolution, crop, flips, a hash of
  the file names + captions + image bytes, format). The same key is stored in the safetensors
  metadata, so a stale pair of files is never mixed. A cache whose key matches is reused; any
  difference rebuilds it.

Latents are ``latent_dist.mean`` (the posterior mode), not a sample: deterministic, independent
of batch composition, and for Stable Diffusion's VAEs the posterior std is small next to the
diffusion noise. They are scaled like diffusers' pipelines: ``(mean - shift_factor) *
scaling_factor`` (``shift_factor`` only where the VAE config has one).

:class:`CacheEncoder` builds the caches of many skills up front (stage 3 maps it over the
skills on a Ray Data actor pool, on the GPUs, before the experts train); a training worker that
finds no current cache builds its own with the same function.

Random crops (``center_crop=False``) are drawn once per image from ``(seed, file_name)`` and are
part of the cache key. :class:`OnTheFlyInputs` is the same data without a cache (encodes every
batch); it produces the same batches, and is what ``train.cache_inputs=false`` uses.

Supported base models: Stable Diffusion 1.x / 2.x (one CLIP text encoder; the last hidden
state) and SDXL (two text encoders: penultimate hidden states concatenated, pooled embeddings of
the second, time ids ``(orig_h, orig_w, crop_top, crop_left, res, res)`` via
``added_cond_kwargs``). Other pipelines raise :class:`NotImplementedError`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError

from selma_ray.training.data import (
    CropInfo,
    Pair,
    files_hash,
    resize_and_crop,
    subseed,
    to_tensor,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from torch import nn

__all__ = [
    "CACHE_FILE",
    "CACHE_FORMAT",
    "CACHE_KEY_FILE",
    "Batch",
    "CacheEncoder",
    "CacheInfo",
    "Components",
    "EncodedInputs",
    "OnTheFlyInputs",
    "cache_is_current",
    "cache_key",
    "encode_images",
    "encode_pairs",
    "encode_text",
    "load_components",
    "load_or_build_cache",
    "model_kind",
    "tokenize",
]

CACHE_FORMAT = 1
CACHE_FILE = "inputs.safetensors"
CACHE_KEY_FILE = "cache.json"
_KEY_META = "selma_cache_key"


# --------------------------------------------------------------------------- components


@dataclass
class Components:
    """The parts of a Stable Diffusion (XL) pipeline that training uses."""

    kind: str  # "sd" or "sdxl"
    unet: nn.Module | None  # None when loaded with ``unet=False`` (encoding only)
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler: Any  # a DDPMScheduler built from the base model's scheduler config
    text_encoder_2: nn.Module | None = None
    tokenizer_2: Any = None
    model_path: str = ""

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]


def model_kind(model_path: str) -> str:
    """``"sd"`` or ``"sdxl"`` from a diffusers model directory's ``model_index.json``."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(model_path)
    except (OSError, ValueError) as e:
        msg = (
            f"base model {model_path!r} has no readable model_index.json; give a diffusers "
            f"Stable Diffusion 1.x/2.x/XL directory or hub id (train.base_model) ({e})"
        )
        raise ValueError(msg) from e
    name = str(index.get("_class_name", ""))
    has = {k for k, v in index.items() if isinstance(v, (list, tuple)) and v and v[0]}
    if {"unet", "vae", "text_encoder", "text_encoder_2"} <= has:
        return "sdxl"
    if {"unet", "vae", "text_encoder"} <= has and "text_encoder_2" not in has:
        return "sd"
    msg = (
        f"base model {model_path!r} is a {name or 'pipeline'} with components {sorted(has)}; "
        "expert training supports Stable Diffusion 1.x/2.x (unet, vae, text_encoder) and SDXL "
        "(+ text_encoder_2). Pick such a model for train.base_model"
    )
    raise NotImplementedError(msg)


def load_components(
    model_path: str,
    *,
    device: str | torch.device = "cpu",
    unet_dtype: torch.dtype = torch.float32,
    unet: bool = True,
) -> Components:
    """Load the frozen UNet, VAE, text encoder(s), tokenizer(s) and a training scheduler.

    The VAE and text encoders stay float32 (they only encode, under ``no_grad``, unless the
    text encoders get LoRA); ``unet_dtype`` is the UNet's base weight dtype. ``unet=False``
    skips the UNet (``Components.unet`` is None): enough to encode inputs.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    kind = model_kind(model_path)
    unet_model = (
        UNet2DConditionModel.from_pretrained(model_path, subfolder="unet", torch_dtype=unet_dtype)
        if unet
        else None
    )
    vae = AutoencoderKL.from_pretrained(model_path, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(model_path, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(model_path, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(model_path, subfolder="scheduler")
    text_encoder_2 = tokenizer_2 = None
    if kind == "sdxl":
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            model_path, subfolder="text_encoder_2"
        )
        tokenizer_2 = CLIPTokenizer.from_pretrained(model_path, subfolder="tokenizer_2")
    for module in (unet_model, vae, text_encoder, text_encoder_2):
        if module is not None:
            module.requires_grad_(False)
            module.eval()
            module.to(device)
    return Components(
        kind=kind,
        unet=unet_model,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        model_path=model_path,
    )


# --------------------------------------------------------------------------- encoders


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
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.latents.device)
        flip = torch.as_tensor(list(flips), dtype=torch.bool, device=self.latents.device)
        latents = self.latents[idx]
        if self.latents_flipped is not None and bool(flip.any()):
            latents = torch.where(flip[:, None, None, None], self.latents_flipped[idx], latents)
        text = self.text_index[idx]
        time_ids = None
        if self.time_ids is not None:
            time_ids = self.time_ids[idx]
            if self.time_ids_flipped is not None and bool(flip.any()):
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
        from safetensors.torch import save

        tensors = {
            name: t.detach().to("cpu").contiguous()
            for name in self._TENSORS
            for t in [getattr(self, name)]
            if t is not None
        }
        meta = {"keys": json.dumps(self.keys), _KEY_META: json.dumps(key, sort_keys=True)}
        return save(tensors, metadata=meta)

    @classmethod
    def from_safetensors(cls, data: bytes) -> tuple[EncodedInputs, dict[str, Any]]:
        from safetensors.torch import load

        tensors = load(data)
        # metadata is in the header: 8-byte little-endian length + JSON
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        meta = header.get("__metadata__", {})
        keys = json.loads(meta["keys"])
        key = json.loads(meta.get(_KEY_META, "{}"))
        known = {f.name for f in fields(cls)}
        return cls(keys=keys, **{k: v for k, v in tensors.items() if k in known}), key


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
    several images are encoded once.
    """
    if not pairs:
        msg = "encode_pairs: no pairs to encode"
        raise ValueError(msg)
    sdxl = components.kind == "sdxl"
    texts = sorted({p.text for p in pairs})
    text_row = {t: i for i, t in enumerate(texts)}
    latents: list[torch.Tensor] = []
    flipped: list[torch.Tensor] = []
    time_ids: list[list[float]] = []
    time_ids_flipped: list[list[float]] = []
    embeds: list[torch.Tensor] = []
    pooled: list[torch.Tensor] = []
    with torch.no_grad():
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
        ids, ids_2 = tokenize(components, texts)
        for start in range(0, len(texts), batch_size):
            part_2 = ids_2[start : start + batch_size] if ids_2 is not None else None
            e, p = encode_text(components, ids[start : start + batch_size], part_2)
            embeds.append(e.float().cpu())
            if p is not None:
                pooled.append(p.float().cpu())
    return EncodedInputs(
        keys=[p.file_name for p in pairs],
        latents=torch.cat(latents),
        latents_flipped=torch.cat(flipped) if random_flip else None,
        text_index=torch.tensor([text_row[p.text] for p in pairs], dtype=torch.long),
        prompt_embeds=torch.cat(embeds),
        input_ids=ids,
        input_ids_2=ids_2,
        pooled_embeds=torch.cat(pooled) if pooled else None,
        time_ids=torch.tensor(time_ids) if sdxl else None,
        time_ids_flipped=torch.tensor(time_ids_flipped) if sdxl and random_flip else None,
    )


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


# --------------------------------------------------------------------------- on-disk cache


@dataclass
class CacheInfo:
    """How :func:`load_or_build_cache` got its inputs."""

    uri: str
    built: bool
    seconds: float
    key: dict[str, Any] = field(default_factory=dict)


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

    ``cache_dir`` is any fsspec URI (normally ``<run_dir>/cache/<skill>``). ``components`` may
    be a callable, called only when the cache must be built. ``write=False`` builds without
    storing (e.g. on non-zero ranks). Writes are atomic; concurrent builders write identical
    bytes.
    """
    from selma_ray.storage import RunDir

    start = time.perf_counter()
    store = RunDir(cache_dir)
    comps: Components | None = components if isinstance(components, Components) else None
    key = cache_key(
        pairs,
        model=model,
        resolution=resolution,
        center_crop=center_crop,
        random_flip=random_flip,
        seed=seed,
    )
    if store.exists(CACHE_KEY_FILE) and store.exists(CACHE_FILE):
        try:
            if store.read_json(CACHE_KEY_FILE) == key:
                inputs, stored = EncodedInputs.from_safetensors(store.read_bytes(CACHE_FILE))
                if stored == key and inputs.keys == [p.file_name for p in pairs]:
                    info = CacheInfo(store.uri, False, time.perf_counter() - start, key)
                    return inputs, info
        except (OSError, ValueError, KeyError, SafetensorError):
            pass  # unreadable, truncated or written by an older version: rebuild
    if comps is None:
        comps = components()  # type: ignore[operator]
    inputs = encode_pairs(
        comps,
        pairs,
        resolution=resolution,
        center_crop=center_crop,
        random_flip=random_flip,
        seed=seed,
        batch_size=batch_size,
    )
    if write:
        store.write_bytes(inputs.to_safetensors(key), CACHE_FILE)
        store.write_json(key, CACHE_KEY_FILE)
    return inputs, CacheInfo(store.uri, True, time.perf_counter() - start, key)


def cache_is_current(cache_dir: str, key: dict[str, Any]) -> bool:
    """Whether ``cache_dir`` holds a complete cache built for ``key``.

    Reads ``cache.json`` and only the safetensors header (not the tensors), so checking a
    finished skill costs a few kilobytes of I/O.
    """
    from selma_ray.storage import RunDir

    store = RunDir(cache_dir)
    try:
        if not (store.exists(CACHE_KEY_FILE) and store.exists(CACHE_FILE)):
            return False
        if store.read_json(CACHE_KEY_FILE) != key:
            return False
        with store.fs.open(store.path(CACHE_FILE), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        meta = header.get("__metadata__", {})
        return json.loads(meta.get(_KEY_META, "{}")) == key
    except (OSError, ValueError, KeyError):
        return False


#: Columns :class:`CacheEncoder` returns, one row per skill.
ENCODE_COLUMNS: tuple[str, ...] = ("skill", "built", "seconds", "pairs", "skipped", "error")


class CacheEncoder:
    """Stage 3's encoding pass: build each skill's input cache before its expert trains.

    A callable class in the Ray Data style (the distributed layer maps it over one row per skill
    on an actor pool, on the GPUs when training uses them; it runs just as well on its own). The
    frozen VAE and text encoder(s) are loaded once per instance, on first need, without the
    UNet. For each skill it reads the imagefolder (:func:`~selma_ray.training.data.load_pairs`),
    skips the skill when :func:`cache_is_current`, else encodes and writes
    ``<run_dir>/cache/<skill>/``, which the expert's training workers then read instead of
    encoding. The cache key is the one training computes, so a cache built here is always
    reused there.

    A skill whose data is unusable (e.g. no usable image) is not fatal here: its row carries
    the error, and training that skill raises it, naming the skill.

    Args (picklable primitives, as Ray Data ships them to each actor):
        train: ``TrainConfig.model_dump()`` (resolution, crop, flip).
        base_model: the model the experts adapt, as configured (``tiny:sd``, a hub id, a path).
        run_dir_uri: the run directory (images in, caches out).
        model_cache_dir: where ``tiny:`` models are built (None = default cache).
        seed: the run seed (random crops derive from it).
        device: torch device (None = cuda if available, else cpu).
        batch_size: images per VAE call (each is encoded with its flip when random_flip is on).
    """

    def __init__(
        self,
        train: dict[str, Any],
        base_model: str,
        run_dir_uri: str,
        model_cache_dir: str | None = None,
        seed: int = 0,
        device: str | None = None,
        batch_size: int = 8,
    ) -> None:
        from selma_ray.storage import RunDir

        self.train = dict(train)
        self.base_model = base_model
        self.run_dir = RunDir(run_dir_uri)
        self.model_cache_dir = model_cache_dir
        self.seed = seed
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self._components: Components | None = None

    @property
    def components(self) -> Components:
        if self._components is None:
            from selma_ray.models import resolve_model

            path = resolve_model(self.base_model, self.model_cache_dir)
            self._components = load_components(path, device=self.device, unet=False)
        return self._components

    def encode_skill(self, skill: str) -> dict[str, Any]:
        """Build (or confirm) one skill's cache; returns its :data:`ENCODE_COLUMNS` row."""
        from selma_ray.training.data import load_pairs

        start = time.perf_counter()
        row: dict[str, Any] = dict.fromkeys(ENCODE_COLUMNS)
        row.update(skill=skill, built=False, pairs=0, skipped=0, error="")
        try:
            pairs, skipped = load_pairs(self.run_dir, skill)
        except ValueError as e:
            row.update(error=str(e), seconds=time.perf_counter() - start)
            return row
        row.update(pairs=len(pairs), skipped=sum(skipped.values()))
        t = self.train
        options = {
            "resolution": int(t["resolution"]),
            "center_crop": bool(t["center_crop"]),
            "random_flip": bool(t["random_flip"]),
            "seed": self.seed,
        }
        uri = self.run_dir.url("cache", skill)
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
        import numpy as np

        rows = [self.encode_skill(str(skill)) for skill in batch["skill"]]
        return {c: np.array([r[c] for r in rows]) for c in ENCODE_COLUMNS}
