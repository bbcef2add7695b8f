"""LoRA adapters for a skill expert: add, loss, checkpoint state, diffusers-format export.

* :func:`add_lora` puts PEFT LoRA layers (``init_lora_weights="gaussian"``) on the UNet's
  attention projections (and optionally the CLIP text encoders) and freezes everything else.
* :func:`noise_pred_loss` is the denoising loss for ``scheduler.config.prediction_type``
  (``epsilon`` -> the noise, ``v_prediction`` -> ``scheduler.get_velocity``, ``sample`` -> the
  clean latents).
* :func:`lora_state` / :func:`load_lora_state` copy the trainable LoRA tensors out of / into a
  model exactly (PEFT key names without the adapter name), for checkpoints and best-step
  selection.
* :func:`save_lora` writes :data:`LORA_WEIGHTS` in diffusers' format, with the
  adapter config (rank, alpha) as metadata, so ``pipe.load_lora_weights(dir)`` reproduces the
  trained scaling.

Every function accepts a model wrapped for data-parallel training (``.module``) as well.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from selma_ray import layout

if TYPE_CHECKING:
    from collections.abc import Iterable

    from torch import nn

__all__ = [
    "ADAPTER_NAME",
    "LORA_WEIGHTS",
    "TEXT_TARGET_MODULES",
    "UNET_TARGET_MODULES",
    "add_lora",
    "is_sdxl_unet",
    "load_lora_state",
    "lora_state",
    "noise_pred_loss",
    "prediction_target",
    "save_lora",
    "trainable_parameters",
    "unwrap",
]

ADAPTER_NAME = "default"
#: The diffusers LoRA file name :func:`save_lora` writes (the run directory's, too).
LORA_WEIGHTS = layout.LORA_FILE
UNET_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]
# Prefixes of lora_state keys; the UNet's keys have none.
_TEXT_PREFIXES = ("text_encoder.", "text_encoder_2.")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / ``prepare_model`` / ``torch.compile`` wrapper, or ``model``."""
    while True:
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if inner is None or inner is model:
            return model
        model = inner


def is_sdxl_unet(unet: nn.Module) -> bool:
    """Whether the UNet takes SDXL's pooled text embeddings + time ids (``text_time``)."""
    return getattr(unwrap(unet).config, "addition_embed_type", None) == "text_time"


def _lora_config(
    rank: int, alpha: float, targets: list[str], layers: list[int] | None = None
) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights="gaussian",
        target_modules=list(targets),
        layers_to_transform=layers,
        layers_pattern="layers" if layers is not None else None,
    )


def add_lora(
    unet: nn.Module,
    rank: int,
    alpha: float,
    text_encoder: nn.Module | None = None,
    text_encoder_2: nn.Module | None = None,
) -> list[torch.nn.Parameter]:
    """Freeze the models, add LoRA layers and return the trainable (LoRA) parameters.

    The UNet gets LoRA on ``to_q/to_k/to_v/to_out.0``; each given text encoder on its
    attention projections. With two text encoders (SDXL) the first one's last layer gets none:
    SDXL reads that encoder's penultimate hidden states, so a LoRA there would never train, and
    DDP (which expects a gradient for every parameter) would fail on the second step. The LoRA
    parameters are float32 whatever the base dtype is. Seed torch beforehand
    (``init_lora_weights="gaussian"`` draws ``lora_A`` from it).
    """
    if rank < 1:
        msg = f"LoRA rank must be >= 1, got {rank} (set train.rank)"
        raise ValueError(msg)
    if alpha <= 0:
        msg = f"LoRA alpha must be > 0, got {alpha} (set train.alpha)"
        raise ValueError(msg)
    params: list[torch.nn.Parameter] = []
    penultimate: list[int] | None = None
    if text_encoder is not None and text_encoder_2 is not None:
        penultimate = list(range(unwrap(text_encoder).config.num_hidden_layers - 1))
    for model, targets, layers in (
        (unet, UNET_TARGET_MODULES, None),
        (text_encoder, TEXT_TARGET_MODULES, penultimate),
        (text_encoder_2, TEXT_TARGET_MODULES, None),
    ):
        if model is None:
            continue
        model = unwrap(model)
        model.requires_grad_(False)
        model.add_adapter(_lora_config(rank, alpha, targets, layers))
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
                params.append(p)
    return params


def trainable_parameters(*models: nn.Module | None) -> list[torch.nn.Parameter]:
    """The parameters that require grad, over the given (possibly wrapped) models."""
    out: list[torch.nn.Parameter] = []
    for model in models:
        if model is not None:
            out.extend(p for p in unwrap(model).parameters() if p.requires_grad)
    return out


# --------------------------------------------------------------------------- loss


def prediction_target(
    scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict for ``scheduler.config.prediction_type``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    msg = (
        f"scheduler prediction_type {kind!r} is not supported; expected epsilon, v_prediction "
        "or sample (check the base model's scheduler/scheduler_config.json)"
    )
    raise ValueError(msg)


def noise_pred_loss(
    unet: nn.Module,
    scheduler: Any,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """MSE between the UNet's prediction on the noised latents and the scheduler's target.

    ``reduction="none"`` returns one loss per sample (mean over C, H, W). The loss is float32.
    """
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = prediction_target(scheduler, latents, noise, timesteps)
    kwargs: dict[str, Any] = {}
    if added_cond_kwargs is not None:
        kwargs["added_cond_kwargs"] = added_cond_kwargs
    pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False, **kwargs)[0]
    per_elem = F.mse_loss(pred.float(), target.float(), reduction="none")
    per_sample = per_elem.flatten(1).mean(dim=1)
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    msg = f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}"
    raise ValueError(msg)


# --------------------------------------------------------------------------- state


def _adapter_key(name: str) -> str:
    """PEFT parameter name -> state key: ``lora_A.default.w`` -> ``lora_A.w``."""
    return re.sub(rf"\.{re.escape(ADAPTER_NAME)}(?=\.)", "", name, count=1)


def _named_lora(model: nn.Module) -> Iterable[tuple[str, torch.nn.Parameter]]:
    for name, p in unwrap(model).named_parameters():
        if "lora_" in name and f".{ADAPTER_NAME}." in name:
            yield _adapter_key(name), p


def lora_state(
    unet: nn.Module,
    text_encoder: nn.Module | None = None,
    text_encoder_2: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """An exact CPU copy of the LoRA tensors; text encoder keys are prefixed by their name."""
    out = {k: p.detach().to("cpu", copy=True) for k, p in _named_lora(unet)}
    for prefix, model in zip(_TEXT_PREFIXES, (text_encoder, text_encoder_2), strict=True):
        if model is not None:
            out.update({prefix + k: p.detach().to("cpu", copy=True) for k, p in _named_lora(model)})
    if not out:
        msg = "the model has no LoRA layers: call add_lora(...) before lora_state(...)"
        raise ValueError(msg)
    return out


def load_lora_state(
    unet: nn.Module,
    state: dict[str, torch.Tensor],
    text_encoder: nn.Module | None = None,
    text_encoder_2: nn.Module | None = None,
) -> None:
    """Copy a :func:`lora_state` back into the models; every key must match exactly."""
    targets: dict[str, torch.nn.Parameter] = dict(_named_lora(unet))
    for prefix, model in zip(_TEXT_PREFIXES, (text_encoder, text_encoder_2), strict=True):
        if model is not None:
            targets.update({prefix + k: p for k, p in _named_lora(model)})
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    if missing or unexpected:
        msg = (
            f"LoRA state does not fit the model: {len(missing)} missing key(s) "
            f"{missing[:3]}, {len(unexpected)} unexpected key(s) {unexpected[:3]}; "
            "the checkpoint was made with another rank, base model or text-encoder setting"
        )
        raise ValueError(msg)
    with torch.no_grad():
        for key, p in targets.items():
            value = state[key]
            if value.shape != p.shape:
                msg = f"LoRA state {key}: shape {tuple(value.shape)} != model {tuple(p.shape)}"
                raise ValueError(msg)
            p.copy_(value.to(device=p.device, dtype=p.dtype))


def _adapter_metadata(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(unwrap(model), "peft_config", {}).get(ADAPTER_NAME)
    return config.to_dict() if config is not None else None


def save_lora(
    unet: nn.Module,
    out_dir: str,
    text_encoder: nn.Module | None = None,
    text_encoder_2: nn.Module | None = None,
) -> str:
    """Write the current LoRA weights into ``out_dir`` as :data:`LORA_WEIGHTS`.

    Diffusers format (``convert_state_dict_to_diffusers(get_peft_model_state_dict(...))``),
    loadable with ``pipe.load_lora_weights(out_dir)``; SDXL UNets are saved through
    ``StableDiffusionXLPipeline``. ``out_dir`` is a local directory. Returns the file path.
    """
    import os

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def layers(model: nn.Module | None) -> dict[str, torch.Tensor] | None:
        if model is None:
            return None
        state = get_peft_model_state_dict(
            unwrap(model), adapter_name=ADAPTER_NAME, save_embedding_layers=False
        )
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
        return convert_state_dict_to_diffusers(state)

    os.makedirs(out_dir, exist_ok=True)
    kwargs: dict[str, Any] = {
        "unet_lora_layers": layers(unet),
        "text_encoder_lora_layers": layers(text_encoder),
        "safe_serialization": True,
        "unet_lora_adapter_metadata": _adapter_metadata(unet),
    }
    if text_encoder is not None:
        kwargs["text_encoder_lora_adapter_metadata"] = _adapter_metadata(text_encoder)
    if is_sdxl_unet(unet):
        kwargs["text_encoder_2_lora_layers"] = layers(text_encoder_2)
        if text_encoder_2 is not None:
            kwargs["text_encoder_2_lora_adapter_metadata"] = _adapter_metadata(text_encoder_2)
        StableDiffusionXLPipeline.save_lora_weights(out_dir, **kwargs)
    else:
        if text_encoder_2 is not None:
            msg = "text_encoder_2 LoRA is only valid for SDXL UNets (addition_embed_type text_time)"
            raise ValueError(msg)
        StableDiffusionPipeline.save_lora_weights(out_dir, **kwargs)
    return os.path.join(out_dir, LORA_WEIGHTS)
