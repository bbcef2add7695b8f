"""Owns loading a base model's frozen parts for expert training: :func:`load_components`.

:class:`Components` holds the UNet, VAE, text encoder(s), tokenizer(s) and a training
scheduler of one base model, all frozen (``requires_grad_(False)``, eval mode).

Supported base models: Stable Diffusion 1.x / 2.x (``unet``, ``vae``, ``text_encoder``) and
SDXL (adds ``text_encoder_2`` / ``tokenizer_2``). :func:`model_kind` tells them apart from the
model's ``model_index.json``; other pipelines raise :class:`NotImplementedError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Components", "load_components", "model_kind"]


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
