"""Stage-5 human-preference scorers: PickScore, ImageReward and HPS v2 (Ray Data callable classes).

Each class loads its model once in ``__init__`` (``model_ref``, ``cache_dir``, ``num_threads``,
``device``, like :class:`~selma_ray.evaluation.clip.ClipScorer`) and maps a batch of
``{"image_uri", "text", ...}`` rows to the same rows plus one float column named after the
scorer (:attr:`PreferenceScorer.column`); :func:`preference_scorer` looks a class up by kind.

* :class:`PickScorer` (``pickscore``, ``yuvalkirstain/PickScore_v1``): a transformers
  ``CLIPModel``; score = ``logit_scale.exp() * cos(image_embeds, text_embeds)`` of each row's
  own image and prompt, as the PickScore model card computes it (its processor is
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``'s; a local or ``tiny:`` model ships its own).
* :class:`ImageRewardScorer` (``imagereward``, ``THUDM/ImageReward``): the authors' model rebuilt
  from transformers' BLIP classes, :class:`ImageRewardModel`: a ``BlipVisionModel`` (ViT-L/16,
  224 px, LayerNorm eps 1e-6), a ``BlipTextModel`` (BERT with cross-attention to every image
  token) and the MLP head 768-1024-128-64-16-1 on the text encoder's first token (``[CLS]``:
  ImageReward does not swap in BLIP's ``[ENC]``); the reward is ``(mlp - mean) / std`` with the
  published mean and std. Prompts: ``bert-base-uncased`` with ``[DEC]`` / ``[ENC]`` added, padded
  and truncated to 35 tokens; images: resized (shorter side, PIL bicubic), centre-cropped to
  224, CLIP-normalised (``ImageReward/ImageReward.py``). Weights are read from the authors'
  checkpoint, ``ImageReward.pt`` + ``med_config.json``, renamed by
  :func:`imagereward_to_transformers`.
* :class:`HPSScorer` (``hps``, ``xswu/HPSv2/HPS_v2_compressed.pt``): HPS v2 is OpenCLIP ViT-H-14
  fine-tuned; score = ``image_features . text_features`` (both L2-normalised, no logit scale),
  as ``hpsv2.score`` computes it. Prompts: the OpenCLIP BPE (``laion/CLIP-ViT-H-14-...``'s
  tokenizer), 77 tokens; images: to a tensor, resized (shorter side, torch bicubic with
  antialias), centre-cropped to 224, CLIP-normalised (``hpsv2``'s ``image_transform``).

HPS runs on transformers' ``CLIPModel``, not on ``open_clip_torch``: open_clip (and ``hpsv2``,
which vendors it) imports torchvision at import time, and PyPI's torchvision for this project's
torch is a CUDA build that does not import beside the CPU torch the tests run on ("operator
torchvision::nms does not exist"; the Makefile uninstalls it), so an open_clip scorer could not
be tested on CPU machines. ``CLIPModel`` is the same network as OpenCLIP's ViT-H-14 (pre-LN
blocks, gelu, causal text mask, pooling at the end-of-text token, bias-free projections; LAION
publishes the base model in this form, and PickScore ships in it), so the checkpoint converts
by renaming, splitting ``in_proj`` into q/k/v and transposing the two projections
(:func:`openclip_to_transformers`); the tests check the result against OpenCLIP's forward
written out on the checkpoint's own keys.

Model references: a ``tiny:`` stand-in or a local directory holding the checkpoint (and what the
authors' code hard-codes: ``vision_config.json`` for ImageReward's ViT, ``open_clip_config.json``
for HPS's OpenCLIP config, and the tokenizer files), a checkpoint file, or a hub repo id with an
optional file name after it (``owner/repo[/file]``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selma_ray.evaluation.clip import ImageTextScorer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "HPSScorer",
    "ImageRewardModel",
    "ImageRewardScorer",
    "PickScorer",
    "PreferenceScorer",
    "imagereward_from_transformers",
    "imagereward_to_transformers",
    "openclip_to_transformers",
    "preference_scorer",
    "transformers_to_openclip",
]

#: The preference scorers, in report order.
KINDS: tuple[str, ...] = ("pickscore", "imagereward", "hps")

#: OpenAI CLIP's image normalisation (ImageReward's and OpenCLIP ViT-H-14's preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: PickScore checkpoints without a processor of their own -> the processor their card loads.
PICKSCORE_PROCESSORS = {
    "yuvalkirstain/PickScore_v1": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
}

#: ImageReward's published normalisation of the MLP output (ImageReward/ImageReward.py).
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
#: ImageReward's prompt length (tokens, padded and truncated to it).
IMAGEREWARD_MAX_LENGTH = 35
IMAGEREWARD_CHECKPOINT = "ImageReward.pt"
IMAGEREWARD_MED_CONFIG = "med_config.json"
#: Our file for the ViT the authors' code hard-codes (``create_vit('large', 224)`` when absent).
IMAGEREWARD_VISION_CONFIG = "vision_config.json"
IMAGEREWARD_TOKENIZER = "bert-base-uncased"
#: BLIP's ViT-L/16 at 224 px, in ``VisionTransformer``'s argument names.
IMAGEREWARD_VIT_L: dict[str, Any] = {
    "img_size": 224,
    "patch_size": 16,
    "embed_dim": 1024,
    "depth": 24,
    "num_heads": 16,
    "mlp_ratio": 4.0,
}
#: The MLP head's widths after the text encoder's (ImageReward's ``MLP``).
IMAGEREWARD_MLP = (1024, 128, 64, 16, 1)

#: HPS v2.0, the checkpoint ``hpsv2.score`` uses by default (v2.1: ``HPS_v2.1_compressed.pt``).
HPS_CHECKPOINT = "HPS_v2_compressed.pt"
#: Our file for the OpenCLIP model config (OpenCLIP's ViT-H-14 when absent).
HPS_CONFIG = "open_clip_config.json"
HPS_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
#: OpenCLIP's ViT-H-14 (``open_clip/model_configs/ViT-H-14.json``).
VIT_H_14: dict[str, Any] = {
    "embed_dim": 1024,
    "vision_cfg": {
        "image_size": 224,
        "layers": 32,
        "width": 1280,
        "head_width": 80,
        "patch_size": 14,
    },
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 1024,
        "heads": 16,
        "layers": 24,
    },
}
# OpenCLIP config keys that change the network away from the plain ViT / text transformer
_OPENCLIP_UNSUPPORTED = {
    "quick_gelu", "custom_text", "timm_model_name", "hf_model_name", "attentional_pool",
    "global_average_pool", "final_ln_after_pool", "no_ln_pre", "ls_init_value", "pool_type",
    "input_patchnorm", "proj_bias", "embed_cls", "output_tokens",
}  # fmt: skip


# --------------------------------------------------------------------------- scorers


class PreferenceScorer(ImageTextScorer):
    """Ray Data callable class: one preference score per row (image against its prompt)."""


def _pooled(out: Any) -> torch.Tensor:
    """``get_*_features`` output -> the projected embeddings (a tensor in transformers 4,
    the ``pooler_output`` of a model output in transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class PickScorer(PreferenceScorer):
    """PickScore: ``logit_scale.exp() * cos(image, prompt)`` with PickScore's ``CLIPModel``."""

    column = "pickscore"

    def load(self, model_ref: str, cache_dir: str | None) -> None:
        from transformers import CLIPModel, CLIPProcessor

        from selma_ray.models import resolve_model

        path = resolve_model(model_ref, cache_dir)
        self.processor = CLIPProcessor.from_pretrained(PICKSCORE_PROCESSORS.get(model_ref, path))
        self.model = CLIPModel.from_pretrained(path).to(self.device).eval()

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        pixels = self.processor.image_processor(images=list(images), return_tensors="pt")
        tokens = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        with torch.inference_mode():
            img = _pooled(self.model.get_image_features(**pixels.to(self.device)))
            txt = _pooled(self.model.get_text_features(**tokens.to(self.device)))
            img = img / torch.norm(img, dim=-1, keepdim=True)
            txt = txt / torch.norm(txt, dim=-1, keepdim=True)
            scores = self.model.logit_scale.exp() * (img * txt).sum(dim=-1)
        return scores.float().cpu().numpy()


class ImageRewardScorer(PreferenceScorer):
    """ImageReward v1.0 (:class:`ImageRewardModel`) on the authors' checkpoint."""

    column = "imagereward"

    def load(self, model_ref: str, cache_dir: str | None) -> None:
        source = _Source(model_ref, IMAGEREWARD_CHECKPOINT, cache_dir)
        med = _read_json(source.companion(IMAGEREWARD_MED_CONFIG, required=True))
        vit = _read_json(source.companion(IMAGEREWARD_VISION_CONFIG)) or dict(IMAGEREWARD_VIT_L)
        self.tokenizer = _imagereward_tokenizer(source.local_dir)
        self.image_size = int(vit["img_size"])
        self.model = ImageRewardModel(med, vit)
        state = _torch_load(source.checkpoint)
        ours, ignored = imagereward_to_transformers(state)
        _load_weights(self.model, ours, ignored, f"imagereward {model_ref!r}")
        self.model = self.model.float().to(self.device).eval()

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        pixels = torch.stack([imagereward_pixels(im, self.image_size) for im in images])
        tokens = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=IMAGEREWARD_MAX_LENGTH,
            return_tensors="pt",
        )
        with torch.inference_mode():
            rewards = self.model(
                pixel_values=pixels.to(self.device),
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
        return rewards.float().cpu().numpy()


class HPSScorer(PreferenceScorer):
    """HPS v2: ``image_features . text_features`` of the fine-tuned OpenCLIP ViT-H-14, run as
    a transformers ``CLIPModel``."""

    column = "hps"

    def load(self, model_ref: str, cache_dir: str | None) -> None:
        from transformers import CLIPModel, CLIPTokenizer

        source = _Source(model_ref, HPS_CHECKPOINT, cache_dir)
        config = _read_json(source.companion(HPS_CONFIG)) or VIT_H_14
        tok_dir = source.local_dir if _has_tokenizer(source.local_dir) else None
        self.tokenizer = CLIPTokenizer.from_pretrained(tok_dir or HPS_TOKENIZER)
        self.context_length = int(config["text_cfg"].get("context_length", 77))
        self.image_size = int(config["vision_cfg"]["image_size"])
        self.model = CLIPModel(openclip_clip_config(config, self.tokenizer))
        state = _torch_load(source.checkpoint)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        ours, ignored = openclip_to_transformers(state)
        _load_weights(self.model, ours, ignored, f"hps {model_ref!r}")
        self.model = self.model.float().to(self.device).eval()

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        pixels = torch.stack([hps_pixels(im, self.image_size) for im in images])
        tokens = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            img = _pooled(self.model.get_image_features(pixel_values=pixels.to(self.device)))
            # no padding mask, as OpenCLIP: the causal mask keeps padding out of the EOT token
            txt = _pooled(
                self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device))
            )
            scores = (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(dim=-1)
        return scores.float().cpu().numpy()


#: kind -> scorer class
SCORERS: dict[str, type[PreferenceScorer]] = {
    "pickscore": PickScorer,
    "imagereward": ImageRewardScorer,
    "hps": HPSScorer,
}


def preference_scorer(kind: str) -> type[PreferenceScorer]:
    """The scorer class of ``kind`` (``pickscore``, ``imagereward`` or ``hps``)."""
    try:
        return SCORERS[kind]
    except KeyError:
        msg = f"unknown preference scorer {kind!r}; valid: {', '.join(KINDS)}"
        raise ValueError(msg) from None


# --------------------------------------------------------------------------- preprocessing


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``size`` (torchvision ``Resize(size)``'s rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _crop_origin(width: int, height: int, size: int) -> tuple[int, int]:
    """(left, top) of torchvision's ``CenterCrop(size)``."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def _to_tensor(image: Any) -> torch.Tensor:
    """An RGB PIL image -> float32 [3, H, W] in [0, 1] (torchvision ``ToTensor``)."""
    array = np.array(image.convert("RGB"), dtype=np.uint8, copy=True)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().float().div(255)


def imagereward_pixels(image: Any, size: int) -> torch.Tensor:
    """ImageReward's preprocessing: PIL bicubic resize of the shorter side to ``size``, centre
    crop, RGB, to [0, 1], CLIP normalisation."""
    from PIL import Image

    width, height = image.size
    new = _resized_size(width, height, size)
    if new != (width, height):
        image = image.resize(new, Image.BICUBIC)
    left, top = _crop_origin(*new, size)
    image = image.crop((left, top, left + size, top + size))
    return _normalise(_to_tensor(image))


def hps_pixels(image: Any, size: int) -> torch.Tensor:
    """HPS v2's preprocessing: RGB to [0, 1], bicubic resize (antialiased, on the tensor) of the
    shorter side to ``size``, centre crop, CLIP normalisation."""
    x = _to_tensor(image)
    height, width = x.shape[1:]
    new_w, new_h = _resized_size(width, height, size)
    if (new_w, new_h) != (width, height):
        x = F.interpolate(
            x[None], size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True
        )[0]
    left, top = _crop_origin(new_w, new_h, size)
    return _normalise(x[:, top : top + size, left : left + size])


# --------------------------------------------------------------------------- ImageReward model


def _imagereward_configs(med: dict[str, Any], vit: dict[str, Any]) -> tuple[Any, Any]:
    """(BlipVisionConfig, BlipTextConfig) from ``med_config.json`` and the ViT settings."""
    from transformers import BlipTextConfig, BlipVisionConfig

    width = int(vit["embed_dim"])
    vision = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=int(width * float(vit.get("mlp_ratio", 4.0))),
        num_hidden_layers=int(vit["depth"]),
        num_attention_heads=int(vit["num_heads"]),
        image_size=int(vit["img_size"]),
        patch_size=int(vit["patch_size"]),
        hidden_act="gelu",
        layer_norm_eps=1e-6,  # timm ViT with partial(nn.LayerNorm, eps=1e-6)
    )
    text = BlipTextConfig(
        vocab_size=int(med["vocab_size"]),
        hidden_size=int(med["hidden_size"]),
        encoder_hidden_size=width,  # the authors' code sets encoder_width = vision width
        intermediate_size=int(med["intermediate_size"]),
        num_hidden_layers=int(med["num_hidden_layers"]),
        num_attention_heads=int(med["num_attention_heads"]),
        max_position_embeddings=int(med["max_position_embeddings"]),
        hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=float(med.get("layer_norm_eps", 1e-12)),
        pad_token_id=int(med.get("pad_token_id", 0)),
        bos_token_id=None,  # generation ids: unused by the scorer
        sep_token_id=None,
        is_decoder=True,  # builds the cross-attention; the forward runs bidirectional
    )
    return vision, text


class ImageRewardModel(nn.Module):
    """ImageReward: BLIP's image encoder, BLIP's text encoder attending to every image token,
    and the MLP head on the text encoder's first token.

    ``forward(pixel_values, input_ids, attention_mask)`` -> normalised rewards, one per row.
    """

    def __init__(self, med: dict[str, Any], vit: dict[str, Any]) -> None:
        from transformers import BlipTextModel, BlipVisionModel

        super().__init__()
        vision, text = _imagereward_configs(med, vit)
        self.vision_model = BlipVisionModel(vision)
        self.text_encoder = BlipTextModel(text, add_pooling_layer=False)
        w = (text.hidden_size, *IMAGEREWARD_MLP)
        # the authors' layers, same indices (checkpoint keys mlp.layers.N map one to one)
        self.mlp = nn.Sequential(
            nn.Linear(w[0], w[1]),
            nn.Dropout(0.2),
            nn.Linear(w[1], w[2]),
            nn.Dropout(0.2),
            nn.Linear(w[2], w[3]),
            nn.Dropout(0.1),
            nn.Linear(w[3], w[4]),
            nn.Linear(w[4], w[5]),
        )

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(
            image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device
        )
        text = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        )
        features = text.last_hidden_state[:, 0, :].float()
        rewards = self.mlp(features).squeeze(-1)
        return (rewards - IMAGEREWARD_MEAN) / IMAGEREWARD_STD


# --------------------------------------------------------------------------- checkpoint keys

_PLACEHOLDERS = {"i": r"\d+", "p": r"weight|bias", "fc": r"fc1|fc2", "rest": r".+"}


def _compile(pattern: str) -> re.Pattern[str]:
    """``a.{i}.b.{p}`` -> a regex with one named group per placeholder."""
    parts = re.split(r"\{(\w+)\}", pattern)
    return re.compile(
        "".join(
            re.escape(part) if n % 2 == 0 else f"(?P<{part}>{_PLACEHOLDERS[part]})"
            for n, part in enumerate(parts)
        )
    )


class _Renames:
    """Key renaming rules (theirs, ours), applied in either direction; the first match wins."""

    def __init__(self, rules: Sequence[tuple[str, str]]) -> None:
        self.rules = [(_compile(a), a, _compile(b), b) for a, b in rules]

    def ours(self, key: str) -> str | None:
        for theirs_re, _, _, ours in self.rules:
            m = theirs_re.fullmatch(key)
            if m:
                return ours.format(**m.groupdict())
        return None

    def theirs(self, key: str) -> str | None:
        for _, theirs, ours_re, _ in self.rules:
            m = ours_re.fullmatch(key)
            if m:
                return theirs.format(**m.groupdict())
        return None


_VIT = "blip.visual_encoder"
_BLIP_VISION = "vision_model.encoder.layers.{i}"
_IMAGEREWARD_RENAMES = _Renames(
    [
        (f"{_VIT}.cls_token", "vision_model.embeddings.class_embedding"),
        (f"{_VIT}.pos_embed", "vision_model.embeddings.position_embedding"),
        (f"{_VIT}.patch_embed.proj.{{p}}", "vision_model.embeddings.patch_embedding.{p}"),
        (f"{_VIT}.blocks.{{i}}.norm1.{{p}}", f"{_BLIP_VISION}.layer_norm1.{{p}}"),
        (f"{_VIT}.blocks.{{i}}.attn.qkv.{{p}}", f"{_BLIP_VISION}.self_attn.qkv.{{p}}"),
        (f"{_VIT}.blocks.{{i}}.attn.proj.{{p}}", f"{_BLIP_VISION}.self_attn.projection.{{p}}"),
        (f"{_VIT}.blocks.{{i}}.norm2.{{p}}", f"{_BLIP_VISION}.layer_norm2.{{p}}"),
        (f"{_VIT}.blocks.{{i}}.mlp.{{fc}}.{{p}}", f"{_BLIP_VISION}.mlp.{{fc}}.{{p}}"),
        (f"{_VIT}.norm.{{p}}", "vision_model.post_layernorm.{p}"),
        ("blip.text_encoder.{rest}", "text_encoder.{rest}"),  # BLIP's med.py names = ours
        ("mlp.layers.{i}.{p}", "mlp.{i}.{p}"),
    ]
)
#: Checkpoint entries the scorer does not use: BLIP's contrastive projections, and a buffer.
IMAGEREWARD_UNUSED = re.compile(r"blip\.(vision_proj|text_proj)\..*|.*\.position_ids")


def imagereward_to_transformers(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The authors' ``ImageReward.pt`` state dict -> (:class:`ImageRewardModel`'s, unused keys)."""
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, value in state.items():
        ours = None if IMAGEREWARD_UNUSED.fullmatch(key) else _IMAGEREWARD_RENAMES.ours(key)
        if ours is None:
            unused.append(key)
        else:
            out[ours] = value
    return out, unused


def imagereward_from_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:class:`ImageRewardModel`'s state dict -> the authors' key names (the inverse)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        theirs = _IMAGEREWARD_RENAMES.theirs(key)
        if theirs is None:
            raise KeyError(f"no ImageReward checkpoint name for {key!r}")
        out[theirs] = value
    return out


def _openclip_rules() -> list[tuple[str, str]]:
    rules = [
        ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
        ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
        ("ln_final.{p}", "text_model.final_layer_norm.{p}"),
        ("logit_scale", "logit_scale"),
        ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
        ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
        ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
        ("visual.ln_pre.{p}", "vision_model.pre_layrnorm.{p}"),
        ("visual.ln_post.{p}", "vision_model.post_layernorm.{p}"),
    ]
    for theirs, ours in (("", "text_model"), ("visual.", "vision_model")):
        block, layer = f"{theirs}transformer.resblocks.{{i}}", f"{ours}.encoder.layers.{{i}}"
        rules += [
            (f"{block}.ln_1.{{p}}", f"{layer}.layer_norm1.{{p}}"),
            (f"{block}.attn.out_proj.{{p}}", f"{layer}.self_attn.out_proj.{{p}}"),
            (f"{block}.ln_2.{{p}}", f"{layer}.layer_norm2.{{p}}"),
            (f"{block}.mlp.c_fc.{{p}}", f"{layer}.mlp.fc1.{{p}}"),
            (f"{block}.mlp.c_proj.{{p}}", f"{layer}.mlp.fc2.{{p}}"),
        ]
    return rules


_OPENCLIP_RENAMES = _Renames(_openclip_rules())
#: OpenCLIP's projections are ``x @ proj``; transformers' are ``Linear`` weights (transposed).
_OPENCLIP_PROJECTIONS = {
    "text_projection": "text_projection.weight",
    "visual.proj": "visual_projection.weight",
}
_IN_PROJ = re.compile(
    r"(?P<tower>visual\.)?transformer\.resblocks\.(?P<i>\d+)\.attn\.in_proj_(?P<p>weight|bias)"
)
_QKV = re.compile(
    r"(?P<tower>text_model|vision_model)\.encoder\.layers\.(?P<i>\d+)"
    r"\.self_attn\.(?P<x>[qkv])_proj\.(?P<p>weight|bias)"
)


def openclip_to_transformers(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An OpenCLIP ``CLIP`` state dict (HPS v2's ``state_dict``) -> (transformers
    ``CLIPModel``'s, unused keys). A DDP ``module.`` prefix is dropped."""
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, value in state.items():
        key = key.removeprefix("module.")
        m = _IN_PROJ.fullmatch(key)
        if m:  # one [3D, D] in_proj -> q, k, v
            tower = "vision_model" if m["tower"] else "text_model"
            base = f"{tower}.encoder.layers.{m['i']}.self_attn"
            for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[f"{base}.{name}_proj.{m['p']}"] = part
        elif key in _OPENCLIP_PROJECTIONS:
            out[_OPENCLIP_PROJECTIONS[key]] = value.t()
        else:
            ours = _OPENCLIP_RENAMES.ours(key)
            if ours is None:
                unused.append(key)
            else:
                out[ours] = value
    return out, unused


def transformers_to_openclip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPModel`` state dict -> OpenCLIP key names (the inverse)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    projections = {v: k for k, v in _OPENCLIP_PROJECTIONS.items()}
    for key, value in state.items():
        m = _QKV.fullmatch(key)
        if m:
            qkv.setdefault((m["tower"], m["i"], m["p"]), {})[m["x"]] = value
        elif key in projections:
            out[projections[key]] = value.t().contiguous()
        elif key.endswith("position_ids"):
            continue  # a buffer transformers rebuilds
        else:
            theirs = _OPENCLIP_RENAMES.theirs(key)
            if theirs is None:
                raise KeyError(f"no OpenCLIP name for {key!r}")
            out[theirs] = value
    for (tower, i, p), parts in qkv.items():
        prefix = "visual." if tower == "vision_model" else ""
        out[f"{prefix}transformer.resblocks.{i}.attn.in_proj_{p}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


def openclip_clip_config(config: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> Any:
    """A transformers ``CLIPConfig`` of an OpenCLIP model config (ViT + text transformer)."""
    from transformers import CLIPConfig

    vision, text = dict(config["vision_cfg"]), dict(config["text_cfg"])
    odd = sorted(
        f"{where}{k}"
        for where, section in (("", config), ("vision_cfg.", vision), ("text_cfg.", text))
        for k, v in section.items()
        if k in _OPENCLIP_UNSUPPORTED and v not in (None, False, "argmax")
    )
    if odd:
        raise ValueError(f"OpenCLIP config options the CLIPModel conversion does not cover: {odd}")
    width = int(vision["width"])
    return CLIPConfig(
        text_config={
            "vocab_size": int(text.get("vocab_size", 49408)),
            "hidden_size": int(text["width"]),
            "intermediate_size": int(int(text["width"]) * float(text.get("mlp_ratio", 4.0))),
            "num_hidden_layers": int(text["layers"]),
            "num_attention_heads": int(text["heads"]),
            "max_position_embeddings": int(text.get("context_length", 77)),
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": width,
            "intermediate_size": int(width * float(vision.get("mlp_ratio", 4.0))),
            "num_hidden_layers": int(vision["layers"]),
            "num_attention_heads": width // int(vision.get("head_width", 64)),
            "image_size": int(vision["image_size"]),
            "patch_size": int(vision["patch_size"]),
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
        },
        projection_dim=int(config["embed_dim"]),
    )


# --------------------------------------------------------------------------- files


class _Source:
    """Where a checkpoint and its companion files are: a local directory (a ``tiny:`` build
    too), a checkpoint file (companions beside it), or a hub repo ``owner/repo[/file]``."""

    def __init__(self, ref: str, default_file: str, cache_dir: str | None) -> None:
        from selma_ray.models import resolve_model

        path = os.path.expanduser(resolve_model(ref, cache_dir))
        self.local_dir: str | None = None
        self.repo: str | None = None
        if os.path.isdir(path):
            self.local_dir = path
            self.checkpoint = os.path.join(path, default_file)
            if not os.path.isfile(self.checkpoint):
                found = sorted(f for f in os.listdir(path) if f.endswith(".pt"))
                if len(found) != 1:
                    msg = f"model {ref!r}: no {default_file} (or a single .pt file) in {path}"
                    raise FileNotFoundError(msg)
                self.checkpoint = os.path.join(path, found[0])
        elif os.path.isfile(path):
            self.local_dir = os.path.dirname(path)
            self.checkpoint = path
        else:
            parts = path.split("/")
            if len(parts) < 2 or not all(parts):
                msg = f"model {ref!r}: expected a directory, a file or owner/repo[/file]"
                raise ValueError(msg)
            self.repo = "/".join(parts[:2])
            self.checkpoint = _hub_file(self.repo, "/".join(parts[2:]) or default_file)

    def companion(self, name: str, required: bool = False) -> str | None:
        """A file beside the checkpoint (from the hub repo only when ``required``)."""
        if self.local_dir is not None:
            path = os.path.join(self.local_dir, name)
            if os.path.isfile(path):
                return path
            if required:
                raise FileNotFoundError(f"no {name} beside {self.checkpoint}")
            return None
        return _hub_file(str(self.repo), name) if required else None


def _hub_file(repo: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo, filename=filename)


def _read_json(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _load_weights(
    model: nn.Module, state: dict[str, torch.Tensor], unused: list[str], what: str
) -> None:
    """Load ``state`` into ``model``: every model weight must be there (a missing one raises
    naming it); checkpoint entries the model has no place for are logged, not loaded."""
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        shown = ", ".join(result.missing_keys[:8])
        more = len(result.missing_keys) - 8
        extra = f" and {more} more" if more > 0 else ""
        raise KeyError(f"{what}: checkpoint has no weights for {shown}{extra}")
    unused = [*unused, *result.unexpected_keys]
    if unused:
        log.debug("%s: checkpoint entries not used: %s", what, unused)


def _torch_load(path: str) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _has_tokenizer(directory: str | None) -> bool:
    return directory is not None and os.path.isfile(
        os.path.join(directory, "tokenizer_config.json")
    )


def _imagereward_tokenizer(directory: str | None) -> PreTrainedTokenizerBase:
    """The directory's tokenizer, else BLIP's: ``bert-base-uncased`` + ``[DEC]`` + ``[ENC]``."""
    from transformers import BertTokenizer

    if _has_tokenizer(directory):
        return BertTokenizer.from_pretrained(directory)
    tokenizer = BertTokenizer.from_pretrained(IMAGEREWARD_TOKENIZER)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer
