"""Preference scorers (PickScore, ImageReward, HPS v2) on their tiny stand-ins, each against an
independent computation, and their place in stage 5's report.

The authors' packages (``image-reward``, ``hpsv2``) cannot be imported beside this project's
CPU torch (both import torchvision, whose PyPI build for this torch is a CUDA one that fails
to load; ``image-reward`` also imports helpers transformers 5 removed), so the references
below are their forwards written out from their source in plain torch, on the checkpoint
files' own key names: ImageReward's ``ImageReward.score`` (BLIP's ``vit.py`` and ``med.py``,
the MLP, the published normalisation) and OpenCLIP's ``CLIP.forward`` as ``hpsv2.score``
runs it. PickScore's reference is its model card's formula computed by hand from the
``CLIPModel``'s towers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selma_ray.config import load_config
from selma_ray.evaluation import preference
from selma_ray.evaluation.preference import (
    KINDS,
    HPSScorer,
    ImageRewardScorer,
    PickScorer,
    preference_scorer,
)
from selma_ray.execution import batch_to_rows, rows_to_batch
from selma_ray.models import resolve_model

# tests/conftest.py sets HF_HUB_OFFLINE=1 and a per-session SELMA_RAY_CACHE.

PROMPTS = [
    "a red cat on the table",
    "two dogs",
    # longer than every scorer's token limit (35 for ImageReward, 77 for the CLIPs)
    "a photo of " + " and ".join(f"a green dog to the left of {i} blue cats" for i in range(12)),
]
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Non-square noise images (portrait, landscape, square) of different sizes."""
    rng = np.random.default_rng(7)
    shapes = [(50, 36), (30, 45), (64, 64)]  # (height, width)
    return [Image.fromarray(rng.integers(0, 256, (*s, 3), dtype=np.uint8)) for s in shapes]


def _spread(values: np.ndarray) -> float:
    return float(np.max(values) - np.min(values))


# ------------------------------------------------------------------------------------ PickScore


def test_pickscore_is_the_model_cards_formula_row_by_row(images):
    """exp(logit_scale) * cos(image, prompt) per row, from the CLIP towers by hand."""
    scorer = PickScorer("tiny:pickscore", device="cpu")
    got = scorer.score(images, PROMPTS)
    model, processor = scorer.model, scorer.processor
    want = []
    with torch.no_grad():
        for image, prompt in zip(images, PROMPTS, strict=True):
            pixels = processor.image_processor(images=[image], return_tensors="pt")
            pixels = pixels["pixel_values"]
            tokens = processor.tokenizer([prompt], truncation=True, max_length=77)
            ids = torch.tensor(tokens["input_ids"])
            assert ids.shape[1] <= 77
            vision = model.vision_model(pixel_values=pixels).pooler_output
            image_embeds = vision @ model.visual_projection.weight.T
            text = model.text_model(input_ids=ids).pooler_output
            text_embeds = text @ model.text_projection.weight.T
            cos = F.cosine_similarity(image_embeds, text_embeds).item()
            want.append(math.exp(model.logit_scale.item()) * cos)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert _spread(got) > 0.1  # the comparison is not between constants


# ------------------------------------------------------------------------------------ ImageReward


def _torchvision_resize_crop_pil(image: Image.Image, size: int) -> Image.Image:
    """torchvision ``Resize(size, BICUBIC)`` then ``CenterCrop(size)`` on a PIL image."""
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.tensor(np.array(image.convert("RGB")), dtype=torch.float32).permute(2, 0, 1) / 255


def _authors_imagereward(model_dir: str, image: Image.Image, prompt: str, tokenizer) -> float:
    """``ImageReward.score(prompt, image)`` (ImageReward/ImageReward.py) on ``ImageReward.pt``."""
    sd = torch.load(Path(model_dir, "ImageReward.pt"), weights_only=True)
    med = json.loads(Path(model_dir, "med_config.json").read_text())
    vit = json.loads(Path(model_dir, "vision_config.json").read_text())

    # preprocess: Resize(224, BICUBIC), CenterCrop(224), RGB, ToTensor, Normalize
    size = vit["img_size"]
    x = (_to_tensor(_torchvision_resize_crop_pil(image, size)) - CLIP_MEAN) / CLIP_STD
    x = x[None]

    # BLIP's VisionTransformer (vit.py): patch_embed, cls + pos_embed, timm blocks, norm
    def ln(t, p, eps):
        return F.layer_norm(t, t.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], eps)

    def lin(t, p):
        return t @ sd[f"{p}.weight"].T + sd[f"{p}.bias"]

    v = "blip.visual_encoder"
    p = vit["patch_size"]
    x = F.conv2d(x, sd[f"{v}.patch_embed.proj.weight"], sd[f"{v}.patch_embed.proj.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[f"{v}.cls_token"].expand(1, -1, -1), x], dim=1)
    x = x + sd[f"{v}.pos_embed"][:, : x.shape[1]]
    heads, dim = vit["num_heads"], vit["embed_dim"]
    for i in range(vit["depth"]):
        b = f"{v}.blocks.{i}"
        h = ln(x, f"{b}.norm1", 1e-6)
        n = h.shape[1]
        qkv = lin(h, f"{b}.attn.qkv").reshape(1, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k, vv = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(dim=-1)
        x = x + lin((attn @ vv).transpose(1, 2).reshape(1, n, dim), f"{b}.attn.proj")
        x = x + lin(F.gelu(lin(ln(x, f"{b}.norm2", 1e-6), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
    image_embeds = ln(x, f"{v}.norm", 1e-6)

    # BLIP's BertModel (med.py), mode "multimodal": self-attention, cross-attention, FFN
    text = tokenizer(prompt, padding="max_length", truncation=True, max_length=35)
    ids = torch.tensor([text["input_ids"]])
    mask = torch.tensor([text["attention_mask"]], dtype=torch.float32)
    t = "blip.text_encoder"
    eps = med["layer_norm_eps"]
    h = sd[f"{t}.embeddings.word_embeddings.weight"][ids]
    h = h + sd[f"{t}.embeddings.position_embeddings.weight"][: ids.shape[1]][None]
    h = ln(h, f"{t}.embeddings.LayerNorm", eps)
    nh, hd = med["num_attention_heads"], med["hidden_size"] // med["num_attention_heads"]

    def attention(hq, hkv, p, extended_mask):
        def split(z):
            return z.view(1, -1, nh, hd).transpose(1, 2)

        q, k, vv = (
            split(lin(z, f"{p}.self.{n}")) for z, n in ((hq, "query"), (hkv, "key"), (hkv, "value"))
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + extended_mask
        ctx = (scores.softmax(dim=-1) @ vv).transpose(1, 2).reshape(1, -1, nh * hd)
        return ln(lin(ctx, f"{p}.output.dense") + hq, f"{p}.output.LayerNorm", eps)

    extended = (1.0 - mask[:, None, None, :]) * -10000.0
    image_mask = torch.zeros(1, 1, 1, image_embeds.shape[1])  # all-ones image_atts
    for i in range(med["num_hidden_layers"]):
        layer = f"{t}.encoder.layer.{i}"
        h = attention(h, h, f"{layer}.attention", extended)
        h = attention(h, image_embeds, f"{layer}.crossattention", image_mask)
        ffn = lin(F.gelu(lin(h, f"{layer}.intermediate.dense")), f"{layer}.output.dense")
        h = ln(ffn + h, f"{layer}.output.LayerNorm", eps)

    # MLP (Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear) on [CLS]
    r = h[:, 0, :]
    for n in (0, 2, 4, 6, 7):
        r = lin(r, f"mlp.layers.{n}")
    return ((r - 0.16717362830052426) / 1.0333394966054072).item()


def test_imagereward_equals_the_authors_forward_on_their_checkpoint(images):
    """Our transformers BLIP + MLP on the renamed checkpoint gives ImageReward's own forward
    (on ``ImageReward.pt``'s keys), images resized and cropped, prompts padded / truncated
    to 35 tokens."""
    scorer = ImageRewardScorer("tiny:imagereward", device="cpu")
    got = scorer.score(images, PROMPTS)
    model_dir = resolve_model("tiny:imagereward")
    assert len(scorer.tokenizer(PROMPTS[2])["input_ids"]) > 35  # truncation is exercised
    with torch.no_grad():
        want = [
            _authors_imagereward(model_dir, im, p, scorer.tokenizer)
            for im, p in zip(images, PROMPTS, strict=True)
        ]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert _spread(got) > 1e-3


def test_imagereward_checkpoint_keys_round_trip_and_unused_ones_are_named():
    sd = torch.load(Path(resolve_model("tiny:imagereward"), "ImageReward.pt"), weights_only=True)
    ours, unused = preference.imagereward_to_transformers(sd)
    assert sorted(unused) == [
        "blip.text_encoder.embeddings.position_ids",
        "blip.text_proj.bias",
        "blip.text_proj.weight",
        "blip.vision_proj.bias",
        "blip.vision_proj.weight",
    ]
    back = preference.imagereward_from_transformers(ours)
    assert set(back) == set(sd) - set(unused)
    assert all(torch.equal(back[k], sd[k]) for k in back)


def test_a_checkpoint_missing_a_weight_is_refused_and_extra_entries_are_skipped(images, tmp_path):
    import shutil

    model_dir = tmp_path / "ir"
    shutil.copytree(resolve_model("tiny:imagereward"), model_dir)
    sd = torch.load(model_dir / "ImageReward.pt", weights_only=True)
    want = ImageRewardScorer(str(model_dir), device="cpu").score(images, PROMPTS)
    torch.save(
        {**sd, "blip.text_encoder.pooler.dense.weight": torch.zeros(2, 2)},
        model_dir / "ImageReward.pt",
    )
    got = ImageRewardScorer(str(model_dir / "ImageReward.pt"), device="cpu").score(images, PROMPTS)
    np.testing.assert_array_equal(got, want)
    del sd["mlp.layers.7.bias"]
    torch.save(sd, model_dir / "ImageReward.pt")
    with pytest.raises(KeyError, match=r"checkpoint has no weights for mlp\.7\.bias"):
        ImageRewardScorer(str(model_dir), device="cpu")


# ------------------------------------------------------------------------------------ HPS v2


def _openclip_tokens(tokenizer, prompt: str, context: int = 77) -> torch.Tensor:
    """open_clip's ``tokenize``: [sot] + BPE + [eot], cut to ``context`` (eot kept last),
    zero-padded."""
    ids = [tokenizer.bos_token_id, *tokenizer.encode(prompt, add_special_tokens=False)]
    ids = [*ids, tokenizer.eos_token_id][:context]
    ids[-1] = tokenizer.eos_token_id
    return torch.tensor([ids + [0] * (context - len(ids))])


def _hps_preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """hpsv2's ``preprocess_val``: RGB, ToTensor, Resize(size, BICUBIC) on the tensor
    (antialiased), CenterCrop(size), Normalize."""
    x = _to_tensor(image)
    h, w = x.shape[1:]
    new_h, new_w = (int(size * h / w), size) if w <= h else (size, int(size * w / h))
    x = F.interpolate(x[None], (new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return ((x[0, :, top : top + size, left : left + size] - CLIP_MEAN) / CLIP_STD)[None]


def _openclip_features(sd, cfg, image: torch.Tensor, text: torch.Tensor) -> tuple:
    """OpenCLIP ``CLIP.encode_image`` / ``encode_text`` on the checkpoint's keys."""

    def ln(t, p):
        return F.layer_norm(t, t.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], 1e-5)

    def block(x, p, heads, attn_mask):
        h = ln(x, f"{p}.ln_1")
        n, d = h.shape[1], h.shape[2]
        qkv = h @ sd[f"{p}.attn.in_proj_weight"].T + sd[f"{p}.attn.in_proj_bias"]
        q, k, v = (z.view(1, n, heads, d // heads).transpose(1, 2) for z in qkv.chunk(3, -1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
        if attn_mask is not None:
            scores = scores + attn_mask
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, n, d)
        x = x + out @ sd[f"{p}.attn.out_proj.weight"].T + sd[f"{p}.attn.out_proj.bias"]
        h = ln(x, f"{p}.ln_2")
        h = F.gelu(h @ sd[f"{p}.mlp.c_fc.weight"].T + sd[f"{p}.mlp.c_fc.bias"])
        return x + h @ sd[f"{p}.mlp.c_proj.weight"].T + sd[f"{p}.mlp.c_proj.bias"]

    vc, tc = cfg["vision_cfg"], cfg["text_cfg"]
    x = F.conv2d(image, sd["visual.conv1.weight"], stride=vc["patch_size"])
    x = x.reshape(1, x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([sd["visual.class_embedding"].view(1, 1, -1), x], dim=1)
    x = ln(x + sd["visual.positional_embedding"], "visual.ln_pre")
    for i in range(vc["layers"]):
        x = block(x, f"visual.transformer.resblocks.{i}", vc["width"] // vc["head_width"], None)
    image_features = ln(x[:, 0], "visual.ln_post") @ sd["visual.proj"]

    n = text.shape[1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    x = sd["token_embedding.weight"][text] + sd["positional_embedding"]
    for i in range(tc["layers"]):
        x = block(x, f"transformer.resblocks.{i}", tc["heads"], causal)
    x = ln(x, "ln_final")
    text_features = x[torch.arange(1), text.argmax(dim=-1)] @ sd["text_projection"]
    return F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)


def test_hps_equals_open_clips_forward_on_the_checkpoint(images):
    """Our CLIPModel on the converted checkpoint gives ``hpsv2.score``'s number: OpenCLIP's
    forward on the checkpoint's own keys, open_clip tokens (77, zero-padded), hpsv2's
    preprocessing; score = image_features . text_features."""
    scorer = HPSScorer("tiny:hps", device="cpu")
    got = scorer.score(images, PROMPTS)
    model_dir = resolve_model("tiny:hps")
    sd = torch.load(Path(model_dir, "HPS_v2_compressed.pt"), weights_only=True)["state_dict"]
    cfg = json.loads(Path(model_dir, "open_clip_config.json").read_text())
    size = cfg["vision_cfg"]["image_size"]
    assert len(scorer.tokenizer(PROMPTS[2])["input_ids"]) > 77  # truncation is exercised
    want = []
    with torch.no_grad():
        for image, prompt in zip(images, PROMPTS, strict=True):
            text = _openclip_tokens(scorer.tokenizer, prompt)
            img, txt = _openclip_features(sd, cfg, _hps_preprocess(image, size), text)
            want.append((img @ txt.T).item())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert _spread(got) > 1e-2


def test_openclip_conversion_refuses_configs_it_does_not_cover():
    cfg = json.loads(json.dumps(preference.VIT_H_14))
    cfg["quick_gelu"] = True
    cfg["text_cfg"]["hf_model_name"] = "roberta-base"
    with pytest.raises(ValueError, match=r"\['quick_gelu', 'text_cfg\.hf_model_name'\]"):
        preference.openclip_clip_config(cfg, tokenizer=None)


def test_hub_references_fetch_the_authors_files_and_default_what_their_code_hard_codes(
    images, monkeypatch
):
    """``THUDM/ImageReward`` and ``xswu/HPSv2/<file>`` download the checkpoint (and ImageReward's
    med_config.json) from the hub and take the ViT / OpenCLIP config and the tokenizer the
    authors' code hard-codes; here the hub serves the stand-ins' files and the hard-coded
    defaults are pointed at the stand-ins' own, so the scores must equal the stand-ins'."""
    dirs = {"THUDM/ImageReward": "imagereward", "xswu/HPSv2": "hps"}
    fetched = []

    def hub_file(repo, filename):
        fetched.append((repo, filename))
        path = Path(resolve_model(f"tiny:{dirs[repo]}"), filename.replace("2.1", "2"))
        assert path.is_file(), path
        return str(path)

    ir_dir, hps_dir = resolve_model("tiny:imagereward"), resolve_model("tiny:hps")
    monkeypatch.setattr(preference, "_hub_file", hub_file)
    monkeypatch.setattr(
        preference, "IMAGEREWARD_VIT_L", json.loads(Path(ir_dir, "vision_config.json").read_text())
    )
    monkeypatch.setattr(preference, "IMAGEREWARD_TOKENIZER", ir_dir)
    monkeypatch.setattr(
        preference, "VIT_H_14", json.loads(Path(hps_dir, "open_clip_config.json").read_text())
    )
    monkeypatch.setattr(preference, "HPS_TOKENIZER", hps_dir)
    for ref, local, cls in (
        ("THUDM/ImageReward", "tiny:imagereward", ImageRewardScorer),
        ("xswu/HPSv2/HPS_v2.1_compressed.pt", "tiny:hps", HPSScorer),
        ("xswu/HPSv2", "tiny:hps", HPSScorer),
    ):
        got = cls(ref, device="cpu").score(images, PROMPTS)
        np.testing.assert_allclose(got, cls(local, device="cpu").score(images, PROMPTS))
    assert fetched == [
        ("THUDM/ImageReward", "ImageReward.pt"),
        ("THUDM/ImageReward", "med_config.json"),
        ("xswu/HPSv2", "HPS_v2.1_compressed.pt"),
        ("xswu/HPSv2", "HPS_v2_compressed.pt"),
    ]
    with pytest.raises(ValueError, match="expected a directory, a file or owner/repo"):
        HPSScorer("HPSv2", device="cpu")


# ------------------------------------------------------------------------------------ rows


def test_scorers_map_rows_to_one_float_column(images, tmp_path):
    """Each kind's class (looked up by name) keeps the rows and adds its column: the scores
    of the images the rows name, one per row."""
    uris = []
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
        uris.append(str(tmp_path / f"{i}.png"))
    rows = [
        {"image_uri": u, "text": p, "item_id": f"item-{i}"}
        for i, (u, p) in enumerate(zip(uris, PROMPTS, strict=True))
    ]
    assert [preference_scorer(k) for k in KINDS] == [PickScorer, ImageRewardScorer, HPSScorer]
    for kind in KINDS:
        scorer = preference_scorer(kind)(f"tiny:{kind}", device="cpu")
        assert scorer.column == kind
        out = batch_to_rows(scorer(rows_to_batch(rows)))
        assert [r["item_id"] for r in out] == [r["item_id"] for r in rows]
        want = scorer.score(images, PROMPTS)  # PNG round trip is lossless
        np.testing.assert_allclose([r[kind] for r in out], want, rtol=1e-6)
        assert all(isinstance(r[kind], float) for r in out)
    with pytest.raises(ValueError, match="unknown preference scorer 'aesthetic'; valid: "):
        preference_scorer("aesthetic")


def test_every_stand_in_score_moves_with_the_image_and_with_the_prompt(images):
    """The random stand-ins are not blind to either input, so the comparisons above test the
    image path (preprocessing, vision tower) and the text path alike."""
    for kind in KINDS:
        scorer = preference_scorer(kind)(f"tiny:{kind}", device="cpu")
        same_prompt = scorer.score(images, [PROMPTS[0]] * len(images))
        same_image = scorer.score([images[0]] * len(PROMPTS), PROMPTS)
        assert _spread(same_prompt) > 1e-2, kind
        assert _spread(same_image) > 1e-2, kind


# ------------------------------------------------------------------------------------ config


def test_presets_name_the_papers_models_and_rehearsals_their_stand_ins():
    assert load_config().eval.preference_models == {
        "pickscore": "tiny:pickscore",
        "imagereward": "tiny:imagereward",
        "hps": "tiny:hps",
    }
    for preset in ("sd15", "sd2", "sdxl"):
        real = load_config(preset=preset).eval.preference_models
        assert real == {
            "pickscore": "yuvalkirstain/PickScore_v1",
            "imagereward": "THUDM/ImageReward",
            "hps": "xswu/HPSv2/HPS_v2_compressed.pt",
        }
        rehearsal = load_config(preset=preset, overrides=["rehearse=true"])
        assert rehearsal.eval.preference_models == {
            "pickscore": "tiny:pickscore",
            "imagereward": "tiny:imagereward",
            "hps": "tiny:hps",
        }
        stand_ins = rehearsal.rehearsal["stand_ins"]
        assert {r: stand_ins[r] for r in real.values()} == {
            "yuvalkirstain/PickScore_v1": "tiny:pickscore",
            "THUDM/ImageReward": "tiny:imagereward",
            "xswu/HPSv2/HPS_v2_compressed.pt": "tiny:hps",
        }


def test_preference_models_turn_off_per_kind_or_all_and_refuse_unknown_kinds():
    from selma_ray.config import ConfigError

    cfg = load_config(overrides=["eval.preference_models.hps=null"])
    assert set(cfg.eval.preference_models) == {"pickscore", "imagereward"}
    assert load_config(overrides=["eval.preference_models=null"]).eval.preference_models == {}
    with pytest.raises(ConfigError, match="preference_models"):
        load_config(overrides=["eval.preference_models.aesthetic=some/model"])


# ------------------------------------------------------------------------------------ stage 5


def test_stage_reports_each_variants_preference_scores(tmp_path, monkeypatch):
    """Stage 5 scores one row per (variant, item) with each configured scorer on eval.pool and
    writes ``preference: {kind: {mean, items}}`` per variant: the scorer's values on the
    variant's images, rounded, and their mean."""
    from selma_ray.evaluation import stage as eval_stage
    from selma_ray.evaluation.vqa import read_image
    from selma_ray.execution import InProcessExecutor
    from selma_ray.storage import RunDir

    class Recording(InProcessExecutor):
        def __init__(self):
            self.rows = {}

        def map_rows(self, rows, fn_cls, **kw):
            # the stage's ScoreSaver runs the scorer (saving its scores as they come)
            self.rows[kw["fn_kwargs"].get("scorer_cls", fn_cls)] = list(rows)
            return super().map_rows(rows, fn_cls, **kw)

    cfg = load_config(
        overrides=[
            "eval.benchmarks=[dsg1k]",
            "eval.max_items=2",
            "eval.clip_model=null",
            "eval.preference_models.hps=null",
            "images.resolution=32",
            "images.steps=2",
        ]
    )
    variants = ["base", "merged"]  # both draw the base model (no LoRA files needed)
    monkeypatch.setattr(eval_stage, "variant_loras", lambda c, rd: dict.fromkeys(variants))
    rd = RunDir(str(tmp_path / "run"))
    executor = Recording()
    eval_stage.run_eval_stage(cfg, rd, executor)
    report = rd.read_json("eval", "report.json")
    items = report["benchmarks"]["dsg1k"]
    assert len(items) == 2
    assert report["preference_models"] == {
        "pickscore": "tiny:pickscore",
        "imagereward": "tiny:imagereward",
    }
    for kind in ("pickscore", "imagereward"):
        rows = executor.rows[preference_scorer(kind)]
        assert sorted((r["model"], r["item_id"]) for r in rows) == sorted(
            (v, i) for v in variants for i in items
        )
    scorers = {
        k: preference_scorer(k)(f"tiny:{k}", device="cpu") for k in report["preference_models"]
    }
    for v in variants:
        entry = report["variants"][v]["preference"]
        assert set(entry) == {"pickscore", "imagereward"}
        images = [read_image(rd.url("eval", "images", v, f"{i}.png")) for i in items]
        texts = [report["items"][i]["text"] for i in items]
        for kind, scorer in scorers.items():
            want = [round(float(s), 4) for s in scorer.score(images, texts)]
            assert entry[kind]["items"] == dict(zip(items, want, strict=True))
            assert entry[kind]["mean"] == round(sum(want) / len(want), 4)
