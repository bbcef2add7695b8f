"""Merging fixtures: three random experts of the tiny SD model on disk, read back."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from selma_ray import layout
from selma_ray.merging import alpha_from_metadata, read_lora_bytes

SKILLS = ["coco", "countbench", "whoops"]
RANKS = [2, 4, 3]
ALPHAS = [4.0, 2.0, 6.0]  # scales 2, 0.5, 2

torch.set_num_threads(1)


@pytest.fixture(scope="package")
def spec():
    """The experts' skills, ranks and alphas, in order."""
    return SimpleNamespace(skills=SKILLS, ranks=RANKS, alphas=ALPHAS)


@pytest.fixture(scope="package")
def sd_path(_offline_cache):
    from selma_ray.models import resolve_model

    return resolve_model("tiny:sd")


@pytest.fixture(scope="package")
def experts(sd_path, tmp_path_factory):
    """Three random experts (UNet + text encoder LoRA, different ranks and alphas) on disk."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from selma_ray.training.lora import add_lora, save_lora

    root = tmp_path_factory.mktemp("experts")
    out = {}
    for i, (skill, rank, alpha) in enumerate(zip(SKILLS, RANKS, ALPHAS, strict=True)):
        unet = UNet2DConditionModel.from_pretrained(sd_path, subfolder="unet")
        te = CLIPTextModel.from_pretrained(sd_path, subfolder="text_encoder")
        torch.manual_seed(100 + i)
        params = add_lora(unet, rank=rank, alpha=alpha, text_encoder=te)
        with torch.no_grad():
            for p in params:
                p.add_(0.15 * torch.randn_like(p))
        d = root / skill
        save_lora(unet, str(d), text_encoder=te)
        meta = {
            "skill": skill,
            "base_model": "tiny:sd",
            "rank": rank,
            "alpha": alpha,
            "steps": 20,
            "selected_step": 10 + i,
            "best_val_loss": 0.5 - 0.1 * i,
            "text_encoder_lora": True,
        }
        (d / layout.EXPERT_META_FILE).write_text(json.dumps(meta))
        out[skill] = d
    return out


def _read(path) -> tuple[dict, float]:
    state, md = read_lora_bytes(open(os.path.join(path, layout.LORA_FILE), "rb").read())
    alpha = alpha_from_metadata(state, md)
    assert alpha is not None
    return state, alpha


@pytest.fixture(scope="package")
def loaded(experts):
    pairs = [_read(experts[s]) for s in SKILLS]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.fixture(scope="package")
def make_pipe():
    """``make_pipe(path)``: a StableDiffusionPipeline without safety checker or progress bar."""
    from diffusers import StableDiffusionPipeline

    def _pipe(path):
        pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return _pipe


@pytest.fixture(scope="package")
def draw():
    """``draw(pipe)``: a 2-step 32x32 image of one prompt, seed 0, as a numpy array."""

    def _draw(pipe):
        gen = torch.Generator().manual_seed(0)
        kw = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np"}
        return pipe("a red cat", generator=gen, **kw).images

    return _draw
