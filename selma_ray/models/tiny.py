"""Tiny, randomly initialised, offline models: a Stable Diffusion pipeline and a chat LLM.

Both are written with ``save_pretrained`` into an ordinary model directory, so they load
through exactly the same ``from_pretrained`` code (diffusers, transformers, vLLM) as a real
hub id. Nothing is downloaded: the tokenizers are built in memory, the weights come from
``torch.manual_seed(seed)``. Same ``seed`` -> byte-identical weight files.

Bump :data:`FORMAT_VERSION` whenever the recipe changes, so cached builds are not reused.
"""

from __future__ import annotations

import contextlib
import json
import random
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator

    from transformers import CLIPTokenizer, PreTrainedTokenizerFast

__all__ = [
    "FORMAT_VERSION",
    "LLM_CHAT_TEMPLATE",
    "make_tiny",
    "make_tiny_llm",
    "make_tiny_clip",
    "make_tiny_sd",
    "make_tiny_vqa",
    "make_sd15_size",
]

#: Version of the tiny-model recipe; part of the cache directory name (see ``registry``).
FORMAT_VERSION = 2

# Module init draws from torch's global RNG: two threads building at once would interleave
# their draws, so builds in one process are serialised (processes have their own RNG).
_BUILD_LOCK = threading.RLock()

_SD_MAX_LENGTH = 77
_LLM_VOCAB_SIZE = 1536

LLM_BOS = "<|begin|>"
LLM_EOS = "<|end|>"
LLM_PAD = "<|pad|>"
LLM_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

#: Jinja chat template of the tiny LLM: ``<|role|>\ncontent<|end|>\n`` per turn.
LLM_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Hold the build lock, seed torch, and restore the caller's RNG state afterwards."""
    import torch

    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------- Stable Diffusion


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table (256 entries)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


# Words whose BPE merges the tiny CLIP tokenizer knows (everything else falls back to bytes).
_SD_MERGE_WORDS = (
    "a", "the", "of", "and", "on", "in", "photo", "red", "blue", "green", "cat", "dog",
    "on", "with", "two", "three", "table", "image", "left", "right", "person",
)  # fmt: skip


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style byte-level BPE vocabulary (bytes, ``</w>`` variants, merges, specials)."""
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab[token] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _SD_MERGE_WORDS:
        if len(word) < 2:
            continue
        parts = [*list(word[:-1]), word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            merged = left + right
            if merged not in vocab:
                merges.append((left, right))
                vocab[merged] = len(vocab)
            left = merged
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return vocab, merges


def _write_clip_vocab_files(directory: Path) -> None:
    """Also write ``vocab.json``/``merges.txt`` (transformers 4's slow CLIPTokenizer needs them)."""
    vocab, merges = _clip_vocab_and_merges()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )


def _tiny_clip_tokenizer() -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    try:
        return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_SD_MAX_LENGTH)
    except (TypeError, ValueError):  # pragma: no cover - transformers versions that need files
        with tempfile.TemporaryDirectory() as tmp:
            _write_clip_vocab_files(Path(tmp))
            return CLIPTokenizer(
                vocab_file=str(Path(tmp, "vocab.json")),
                merges_file=str(Path(tmp, "merges.txt")),
                model_max_length=_SD_MAX_LENGTH,
            )


#: The tiny Stable Diffusion pipeline's UNet, VAE and CLIP text-encoder sizes.
TINY_SD_UNET_CONFIG: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "norm_num_groups": 2,
}
TINY_SD_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [4, 8],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "latent_channels": 4,
    "norm_num_groups": 2,
    "sample_size": 64,
}
TINY_SD_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "layer_norm_eps": 1e-5,
}

#: Stable Diffusion 1.5's UNet config (860 M parameters).
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
}

#: Stable Diffusion 1.x / 2.x's VAE config (84 M parameters, 8x downsampling).
SD_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

#: Stable Diffusion 1.x's text encoder (CLIP ViT-L/14's text tower) sizes.
SD15_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
}


def _write_sd_pipeline(
    path: str | os.PathLike[str],
    seed: int,
    unet_config: dict[str, Any],
    vae_config: dict[str, Any],
    text_config: dict[str, Any],
) -> str:
    """A random Stable Diffusion pipeline of the given sizes, saved with ``save_pretrained``.

    Seeds: UNet ``seed``, VAE ``seed + 1``, text encoder ``seed + 2``; the tokenizer is the
    in-memory CLIP-style one, the scheduler SD's DDIM settings.
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(path)
    with _BUILD_LOCK:
        tokenizer = _tiny_clip_tokenizer()
        with _seeded(seed):
            unet = UNet2DConditionModel(**unet_config)
        with _seeded(seed + 1):
            vae = AutoencoderKL(**vae_config)
        with _seeded(seed + 2):
            text_encoder = CLIPTextModel(
                CLIPTextConfig(
                    bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                    vocab_size=len(tokenizer),
                    max_position_embeddings=_SD_MAX_LENGTH,
                    **text_config,
                )
            )
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(str(out), safe_serialization=True)
    _write_clip_vocab_files(out / "tokenizer")
    return str(out)


def make_tiny_sd(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Write a tiny random Stable Diffusion pipeline to ``path``; return ``path`` as a str.

    Loads with ``StableDiffusionPipeline.from_pretrained(path)`` (or ``DiffusionPipeline``);
    the default image size is 64x64 (32x32 latents, VAE scale factor 2).
    """
    return _write_sd_pipeline(
        path, seed, TINY_SD_UNET_CONFIG, TINY_SD_VAE_CONFIG, TINY_SD_TEXT_CONFIG
    )


def make_sd15_size(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Write a Stable Diffusion 1.5-*sized* pipeline with random weights; return ``path``.

    Real SD 1.5 shapes (860 M UNet, 84 M VAE, a 12-layer 768-wide CLIP text encoder; only the
    tokenizer is the tiny in-memory one, so the embedding table is smaller): the same FLOPs and
    memory as the real model, for GPU benchmarks and checks where no weights can be
    downloaded. About 4 GB on disk; takes tens of seconds to build.
    """
    return _write_sd_pipeline(path, seed, SD15_UNET_CONFIG, SD_VAE_CONFIG, SD15_TEXT_CONFIG)


# ------------------------------------------------------------------------------------ chat LLM

_OBJECTS = (
    "apple", "backpack", "ball", "banana", "bed", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "bowl", "box", "bread", "bridge", "brush", "bucket", "bus", "cake", "camera",
    "candle", "car", "carrot", "cat", "chair", "clock", "cloud", "coat", "computer", "cookie",
    "couch", "cow", "cup", "desk", "dog", "door", "duck", "egg", "elephant", "fence", "flower",
    "fork", "frog", "giraffe", "glass", "guitar", "hat", "horse", "house", "jacket", "key",
    "kite", "knife", "ladder", "lamp", "laptop", "leaf", "lemon", "mirror", "moon", "motorcycle",
    "mountain", "mug", "orange", "oven", "painting", "pencil", "phone", "piano", "pillow",
    "pizza", "plant", "plate", "pot", "rabbit", "river", "robot", "rock", "sandwich", "sheep",
    "shelf", "shoe", "sink", "skateboard", "sofa", "spoon", "star", "sun", "table", "teapot",
    "tent", "tiger", "towel", "toy", "train", "tree", "truck", "umbrella", "vase", "wall",
    "window", "zebra",
)  # fmt: skip
_COLORS = (
    "red", "blue", "green", "yellow", "black", "white", "purple", "orange", "pink", "brown",
    "gray", "golden", "silver",
)  # fmt: skip
_ADJECTIVES = (
    "small", "large", "tiny", "huge", "old", "new", "wooden", "metal", "shiny", "soft", "round",
    "square", "broken", "happy", "sleepy", "bright", "dark", "striped", "fluffy", "tall",
)  # fmt: skip
_RELATIONS = (
    "on top of", "next to", "under", "behind", "in front of", "to the left of",
    "to the right of", "inside", "near", "above", "below", "beside",
)  # fmt: skip
_VERBS = (
    "sits", "stands", "lies", "rests", "sleeps", "jumps", "runs", "flies", "floats", "leans",
    "hangs", "waits",
)  # fmt: skip
_PLACES = (
    "kitchen", "garden", "street", "park", "beach", "forest", "office", "bedroom", "city",
    "field", "lake", "room", "market", "library", "classroom",
)  # fmt: skip
_NUMBERS = (
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
)  # fmt: skip
_INSTRUCTIONS = (
    "You are a helpful assistant.",
    "Generate a list of image descriptions.",
    "Write new prompts in the same style as the examples.",
    "Each prompt should be short, clear and describe one scene.",
    "Here are some examples:",
    "Please continue the list with more items.",
    "Answer the question about the image with yes or no.",
    "Does the image show the object? Yes. No.",
    "Describe the photo in a single sentence.",
    "The quick brown fox jumps over the lazy dog!",
    "Count the objects, then answer: how many are there?",
)


def _llm_corpus() -> list[str]:
    """A fixed, built-in English training corpus (deterministic; no data files)."""
    rng = random.Random(1234)
    lines: list[str] = list(_INSTRUCTIONS)
    words = _OBJECTS + _COLORS + _ADJECTIVES + _VERBS + _PLACES + _NUMBERS
    lines += [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [w.capitalize() for w in words]
    lines.append("0 1 2 3 4 5 6 7 8 9 10 11 12 20 50 100 2024")
    lines.append(". , ; : ! ? ' \" ( ) [ ] - _ / * + = & % $ # @ ~ < > { } |")
    for i in range(400):
        a, b = rng.choice(_OBJECTS), rng.choice(_OBJECTS)
        color, adj = rng.choice(_COLORS), rng.choice(_ADJECTIVES)
        rel, verb, place = rng.choice(_RELATIONS), rng.choice(_VERBS), rng.choice(_PLACES)
        num = rng.choice(_NUMBERS)
        template = i % 5
        if template == 0:
            line = f"{i % 20 + 1}. A {color} {a} {rel} a {adj} {b}."
        elif template == 1:
            line = f"{num.capitalize()} {adj} {a}s {verb[:-1]} in the {place}, next to {num} {b}s."
        elif template == 2:
            line = f"A photo of a {adj} {color} {a} that {verb} {rel} the {b} in a {place}."
        elif template == 3:
            line = f"Is there a {color} {a}? Yes, the {a} is {rel} the {b}."
        else:
            line = f"{i}: The {a} and the {b} are {color}; a {adj} scene at the {place}!"
        lines.append(line)
    return lines


def _tiny_llm_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [LLM_BOS, LLM_EOS, LLM_PAD, *LLM_ROLE_TOKENS]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_LLM_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_llm_corpus(), trainer=trainer)
    bos_id = backend.token_to_id(LLM_BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{LLM_BOS} $A",
        pair=f"{LLM_BOS} $A {LLM_BOS} $B",
        special_tokens=[(LLM_BOS, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=LLM_BOS,
        eos_token=LLM_EOS,
        pad_token=LLM_PAD,
        additional_special_tokens=list(LLM_ROLE_TOKENS),
        chat_template=LLM_CHAT_TEMPLATE,
        model_max_length=512,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def tiny_llama_config(tokenizer: PreTrainedTokenizerFast) -> Any:
    """The tiny Llama decoder (head_dim 32, the smallest vLLM's CPU attention takes), sized to
    ``tokenizer``: the tiny chat LLM and the chat VLM stand-in's language model."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def make_tiny_llm(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Write a tiny random Llama-style chat LLM (model + tokenizer) to ``path``; return it.

    Loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and with vLLM (head_dim 32).
    """
    from transformers import GenerationConfig, LlamaForCausalLM

    out = Path(path)
    with _BUILD_LOCK:
        tokenizer = _tiny_llm_tokenizer()
        config = tiny_llama_config(tokenizer)
        with _seeded(seed):
            model = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
        )
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    _make_tokenizer_config_portable(out / "tokenizer_config.json")
    return str(out)


# --------------------------------------------------------------------------- CLIP (CLIPScore)

_CLIP_IMAGE_SIZE = 32
#: The vision tower shared by the tiny CLIP and the tiny BLIP VQA model.
_TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": _CLIP_IMAGE_SIZE,
    "patch_size": 8,
}


def make_tiny_clip(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Write a tiny random ``CLIPModel`` + ``CLIPProcessor`` to ``path``; return it as a str.

    Loads with ``CLIPModel.from_pretrained(path)`` / ``CLIPProcessor.from_pretrained(path)``
    (32x32 images, the tiny SD tokenizer, 32-d projections), like ``openai/clip-vit-*``.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    out = Path(path)
    with _BUILD_LOCK:
        tokenizer = _tiny_clip_tokenizer()
        config = CLIPConfig(
            text_config={
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "vocab_size": len(tokenizer),
                "max_position_embeddings": _SD_MAX_LENGTH,
            },
            vision_config=dict(_TINY_VISION),
            projection_dim=32,
        )
        with _seeded(seed):
            model = CLIPModel(config)
        model.save_pretrained(str(out), safe_serialization=True)
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": _CLIP_IMAGE_SIZE},
            crop_size={"height": _CLIP_IMAGE_SIZE, "width": _CLIP_IMAGE_SIZE},
        )
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
            str(out)
        )
    _write_clip_vocab_files(out)
    return str(out)


# --------------------------------------------------------------------------- VQA (BLIP)

_VQA_WORDS = (
    "yes", "no", "a", "the", "is", "are", "there", "of", "on", "in", "what", "color", "how",
    "many", "red", "blue", "green", "cat", "dog", "table", "left", "right", "person", "one",
    "two", "three", "?", ".", ",",
)  # fmt: skip


def make_tiny_vqa(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Write a tiny random ``BlipForQuestionAnswering`` + ``BlipProcessor`` to ``path``.

    Loads like ``Salesforce/blip-vqa-base``: ``AutoModelForVisualQuestionAnswering`` /
    ``AutoProcessor.from_pretrained(path)``; ``generate`` answers in a few word-piece tokens
    (random words: the weights are random). 32x32 images.
    """
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
        GenerationConfig,
    )

    out = Path(path)
    with _BUILD_LOCK, tempfile.TemporaryDirectory() as tmp:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
        vocab_file = Path(tmp, "vocab.txt")
        vocab_file.write_text("\n".join([*specials, *_VQA_WORDS]) + "\n", encoding="utf-8")
        tokenizer = BertTokenizer(str(vocab_file), bos_token="[DEC]", model_max_length=32)
        config = BlipConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "encoder_hidden_size": 32,
                "intermediate_size": 37,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "max_position_embeddings": 64,
                "bos_token_id": tokenizer.convert_tokens_to_ids("[DEC]"),
                "pad_token_id": tokenizer.pad_token_id,
                "sep_token_id": tokenizer.sep_token_id,
                "eos_token_id": tokenizer.sep_token_id,
            },
            vision_config={**_TINY_VISION, "projection_dim": 32},
            projection_dim=32,
        )
        with _seeded(seed):
            model = BlipForQuestionAnswering(config)
        model.generation_config = GenerationConfig(
            bos_token_id=config.text_config.bos_token_id,
            eos_token_id=config.text_config.sep_token_id,
            pad_token_id=config.text_config.pad_token_id,
            max_new_tokens=4,
        )
        model.save_pretrained(str(out), safe_serialization=True)
        image_processor = BlipImageProcessor(
            size={"height": _CLIP_IMAGE_SIZE, "width": _CLIP_IMAGE_SIZE}
        )
        BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
            str(out)
        )
    return str(out)


def _make_tokenizer_config_portable(config_file: Path) -> None:
    """Name the tokenizer class and extra special tokens the way transformers 4 and 5 both read.

    transformers 5 saves ``TokenizersBackend`` and a list ``extra_special_tokens``, which
    transformers 4 (what a GPU vLLM may pin) cannot load; both load the spelling below.
    """
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = extra
    elif extra is not None:
        config["extra_special_tokens"] = extra
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def make_tiny(directory: str | os.PathLike[str], seed: int = 0) -> dict[str, str]:
    """Build both tiny models under ``directory/sd`` and ``directory/llm``; return their paths."""
    root = Path(directory)
    return {
        "sd": make_tiny_sd(root / "sd", seed=seed),
        "llm": make_tiny_llm(root / "llm", seed=seed),
    }
