"""LoRA helpers: adapters, denoising loss targets, exact state copies, diffusers export."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from selma_ray.training.lora import (
    LORA_WEIGHTS,
    add_lora,
    load_lora_state,
    lora_state,
    noise_pred_loss,
    save_lora,
    unwrap,
)

torch.set_num_threads(1)


class ConstantUNet(torch.nn.Module):
    """A stand-in UNet that predicts a fixed tensor and records what it was given."""

    def __init__(self, prediction: torch.Tensor) -> None:
        super().__init__()
        self.prediction = prediction
        self.seen: dict = {}

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=True, **kwargs):
        self.seen = {"sample": sample, "timestep": timestep, **kwargs}
        return (self.prediction,)


class Wrapper(torch.nn.Module):
    """Like DDP: the real model is ``.module``."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def _unet(path: str) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(path, subfolder="unet")


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 4, 8, 8, generator=g),
        torch.randn(2, 77, 32, generator=g),
        torch.tensor([10, 700]),
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_loss_target_matches_hand_computation(prediction_type):
    sched = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
    )
    g = torch.Generator().manual_seed(0)
    latents, noise, pred = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([0, 500, 999])
    unet = ConstantUNet(pred)
    loss = noise_pred_loss(unet, sched, latents, torch.zeros(3, 77, 32), noise, t)

    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    target = {
        "epsilon": noise,
        "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * latents,
        "sample": latents,
    }[prediction_type]
    assert torch.allclose(unet.seen["sample"], noisy, atol=1e-6)
    assert torch.allclose(loss, ((pred - target) ** 2).mean(), atol=1e-6)
    per = noise_pred_loss(unet, sched, latents, None, noise, t, reduction="none")
    assert per.shape == (3,) and torch.allclose(per.mean(), loss)
    kw = {"text_embeds": torch.zeros(3, 4), "time_ids": torch.zeros(3, 6)}
    noise_pred_loss(unet, sched, latents, None, noise, t, added_cond_kwargs=kw)
    assert unet.seen["added_cond_kwargs"] is kw


def test_unknown_prediction_type_names_the_fix():
    sched = DDPMScheduler()
    sched.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type 'flow'.*scheduler_config"):
        noise_pred_loss(ConstantUNet(torch.zeros(1)), sched, *[torch.zeros(1, 1)] * 3,
                        torch.tensor([1]))  # fmt: skip


def test_add_lora_state_roundtrip(tiny_models):
    unet = _unet(tiny_models["sd"])
    latents, states, t = _inputs()
    with torch.no_grad():
        base = unet(latents, t, states).sample
    torch.manual_seed(0)
    params = add_lora(unet, rank=4, alpha=8)
    assert params and all(p.requires_grad and p.dtype == torch.float32 for p in params)
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert any("to_out.0" in n for n in trainable)
    with torch.no_grad():  # gaussian init: lora_B = 0, so nothing changes yet
        assert torch.equal(unet(latents, t, states).sample, base)
        for p in params:
            p.add_(0.1 * torch.randn_like(p))
        changed = unet(latents, t, states).sample
    assert not torch.allclose(changed, base, atol=1e-4)

    state = lora_state(Wrapper(unet))
    assert all(".default." not in k for k in state) and len(state) == len(params)
    other = _unet(tiny_models["sd"])
    add_lora(other, rank=4, alpha=8)
    load_lora_state(Wrapper(other), state)
    with torch.no_grad():
        assert torch.equal(other(latents, t, states).sample, changed)
    assert all(torch.equal(state[k], v) for k, v in lora_state(other).items())

    wrong = _unet(tiny_models["sd"])
    add_lora(wrong, rank=2, alpha=2)
    with pytest.raises(ValueError, match="shape"):
        load_lora_state(wrong, state)
    with pytest.raises(ValueError, match="missing"):
        load_lora_state(other, {k: v for k, v in list(state.items())[1:]})
    with pytest.raises(ValueError, match="add_lora"):
        lora_state(_unet(tiny_models["sd"]))
    with pytest.raises(ValueError, match="train.rank"):
        add_lora(_unet(tiny_models["sd"]), rank=0, alpha=1)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_every_lora_parameter_gets_a_gradient_with_text_encoder_lora(tiny_models, kind):
    """DDP (``prepare_model``: no unused-parameter search) fails on the second step when a
    trained parameter gets no gradient. SDXL reads its first text encoder's penultimate hidden
    states, so that encoder's last layer gets no LoRA; the second encoder's last layer feeds
    the pooled embedding and keeps its LoRA."""
    from selma_ray.models import resolve_model
    from selma_ray.training.components import load_components
    from selma_ray.training.inputs import encode_text, tokenize

    c = load_components(resolve_model(f"tiny:{kind}"))
    torch.manual_seed(0)
    params = add_lora(c.unet, 4, 4.0, c.text_encoder, c.text_encoder_2)
    ids, ids_2 = tokenize(c, ["a red cat", "two dogs on a table"])
    embeds, pooled = encode_text(c, ids, ids_2)
    size = c.unet.config.sample_size
    kwargs = {}
    if pooled is not None:
        px = float(8 * size)
        time_ids = torch.tensor([[px, px, 0.0, 0.0, px, px]] * 2)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    latents = torch.randn(2, c.unet.config.in_channels, size, size)
    c.unet(latents, torch.tensor([10, 500]), embeds, **kwargs).sample.square().mean().backward()
    models = {"unet": c.unet, "text_encoder": c.text_encoder, "text_encoder_2": c.text_encoder_2}
    trained = {
        f"{name}.{n}": p
        for name, m in models.items()
        if m is not None
        for n, p in m.named_parameters()
        if p.requires_grad
    }
    assert len(trained) == len(params)
    assert [n for n, p in trained.items() if p.grad is None] == []
    assert any(n.startswith("text_encoder.") for n in trained)
    last = c.text_encoder.config.num_hidden_layers - 1
    te1_last = [n for n in trained if n.startswith("text_encoder.") and f"layers.{last}." in n]
    assert bool(te1_last) == (kind == "sd")
    if kind == "sdxl":
        last_2 = c.text_encoder_2.config.num_hidden_layers - 1
        assert any(n.startswith("text_encoder_2.") and f"layers.{last_2}." in n for n in trained)


def test_save_lora_loads_in_pipeline_with_alpha(tiny_models, tmp_path):
    """alpha != rank survives the export: the loaded pipeline equals the trained model."""
    path = tiny_models["sd"]
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)

    def draw(p):
        gen = torch.Generator().manual_seed(0)
        return p("a red cat", num_inference_steps=2, generator=gen, output_type="np").images

    base = draw(pipe)
    torch.manual_seed(0)
    params = add_lora(pipe.unet, rank=4, alpha=16)
    with torch.no_grad():
        for p in params:
            p.add_(0.2 * torch.randn_like(p))
    trained = draw(pipe)
    out = save_lora(Wrapper(pipe.unet), str(tmp_path / "expert"))
    assert out.endswith(LORA_WEIGHTS)
    assert unwrap(Wrapper(Wrapper(pipe.unet))) is pipe.unet

    fresh = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    fresh.set_progress_bar_config(disable=True)
    fresh.load_lora_weights(str(tmp_path / "expert"))
    loaded = draw(fresh)
    assert abs(trained - base).mean() > 1e-3
    assert abs(loaded - trained).max() < 1e-5
