"""The training step's speed options leave training as it was ([throughput] item 0).

Each option is compared with the plain float32 step on the same seed, so the same samples,
flips, timesteps and noise: the micro-batch cut, fused AdamW, channels_last and torch.compile
must give the same loss curve and LoRA up to float rounding; bf16 / fp16 autocast must follow
the float32 trajectory (the loss curve far closer to it than a doubled learning rate's, the
LoRA moving the same way).
"""

from __future__ import annotations

import pytest
import torch

from selma_ray.config import TrainConfig
from selma_ray.storage import RunDir
from selma_ray.training import loop as loop_mod
from selma_ray.training.data import write_synthetic_skill

torch.set_num_threads(1)

SKILL = "speed"
STEPS = 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_models):
    rd = RunDir(str(tmp_path_factory.mktemp("speed-run")))
    write_synthetic_skill(rd, SKILL, prompts=6, images_per_prompt=1, seed=2)
    return rd


def _cfg(**kw) -> TrainConfig:
    base = {
        "max_steps": STEPS,
        "batch_size": 4,
        "gradient_accumulation": 1,
        "learning_rate": 1e-2,  # large steps: a wrong update shows within a few steps
        "resolution": 64,
        "validation_fraction": 0.0,
        "fused_optimizer": False,
    }
    return TrainConfig(**{**base, **kw})


def _trainer(run_dir: RunDir, cfg: TrainConfig) -> loop_mod._Trainer:
    return loop_mod._Trainer(
        cfg,
        skill=SKILL,
        run_dir=run_dir,
        base_model="tiny:sd",
        cache_dir=None,
        seed=5,
        device=torch.device("cpu"),
        world_size=1,
        rank=0,
        model_cache_dir=None,
    )


def _run(run_dir: RunDir, steps: int = STEPS, **kw):
    """(loss curve, LoRA before, LoRA after, trainer) of ``steps`` optimizer steps."""
    trainer = _trainer(run_dir, _cfg(**kw))
    before = {k: v.detach().clone() for k, v in trainer.lora().items()}
    curve = [trainer.train_step() for _ in range(steps)]
    return curve, before, trainer.lora(), trainer


@pytest.fixture(scope="module")
def reference(run_dir):
    """The plain step: float32, foreach AdamW, contiguous, eager, one micro-batch of 4."""
    return _run(run_dir)


@pytest.fixture(scope="module")
def doubled_lr(run_dir):
    """The reference recipe with twice the learning rate: the yardstick of a real change."""
    return _run(run_dir, learning_rate=2e-2)


def _assert_same_training(got, ref, rtol: float, lora_rtol: float = 1e-3) -> None:
    """The same loss curve (to ``rtol``) and LoRA: the largest weight difference at most
    ``lora_rtol`` of the largest distance a weight moved (Adam's normalised steps turn float
    rounding in a near-zero gradient into a step of up to lr, so absolute bounds mislead)."""
    curve, _, lora, _ = got
    ref_curve, ref_before, ref_lora, _ = ref
    assert curve == pytest.approx(ref_curve, rel=rtol), (curve, ref_curve)
    assert lora.keys() == ref_lora.keys()
    worst = max(float((lora[k] - ref_lora[k]).abs().max()) for k in lora)
    moved = max(float((ref_lora[k] - ref_before[k]).abs().max()) for k in lora)
    assert worst <= lora_rtol * moved, (worst, moved)


def test_reference_run_really_trains(reference):
    curve, before, after, _ = reference
    moved = max(float((after[k] - before[k]).abs().max()) for k in after)
    assert moved > 1e-3 and len(set(curve)) == STEPS  # the comparisons below are not vacuous


def test_micro_batch_cut_does_not_change_training(run_dir, reference):
    # 4 x 1 (the reference) against 2 x 2 and 1 x 4: same samples, same draws per sample
    for batch, accum in ((2, 2), (1, 4)):
        got = _run(run_dir, batch_size=batch, gradient_accumulation=accum)
        _assert_same_training(got, reference, rtol=1e-5)


def test_two_micro_batches_differ_from_one_step_of_two(run_dir, reference):
    # the invariance above is about one step's samples: halving the step is another training
    got = _run(run_dir, batch_size=2, gradient_accumulation=1)
    assert got[0] != pytest.approx(reference[0], rel=1e-3)


def test_fused_adamw_matches_foreach(run_dir, reference):
    got = _run(run_dir, fused_optimizer=True)
    groups = got[3].optimizer.param_groups
    assert all(g["fused"] for g in groups)
    _assert_same_training(got, reference, rtol=1e-5)


def test_channels_last_matches_contiguous(run_dir, reference):
    got = _run(run_dir, channels_last=True)
    conv = got[3].comps.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    _assert_same_training(got, reference, rtol=1e-4)


def test_compiled_unet_matches_eager(run_dir, reference, monkeypatch):
    # aot_eager: dynamo's graph capture and AOT autograd, without inductor's minutes of C++
    # code generation on a small CPU; the GPU check measures inductor
    monkeypatch.setattr(loop_mod, "COMPILE_OPTIONS", {"backend": "aot_eager"})
    got = _run(run_dir, compile=True)
    unet = got[3].comps.unet
    assert unet._compiled_call_impl is not None  # compiled in place: names unchanged
    assert got[2].keys() == reference[2].keys()
    _assert_same_training(got, reference, rtol=1e-4)


def _cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    va = torch.cat([v.flatten().double() for _, v in sorted(a.items())])
    vb = torch.cat([v.flatten().double() for _, v in sorted(b.items())])
    return float(va @ vb / (va.norm() * vb.norm()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_autocast_follows_the_float32_trajectory(
    run_dir, reference, doubled_lr, monkeypatch, dtype
):
    # the CUDA code path on the CPU: the frozen UNet stored in the dtype, autocast, LoRA in
    # float32, a GradScaler for fp16
    monkeypatch.setattr(loop_mod, "_amp_dtype", lambda cfg, device: dtype)
    curve, before, after, trainer = _run(run_dir)
    assert trainer.comps.unet.conv_in.weight.dtype == dtype
    assert all(p.dtype == torch.float32 for p in trainer.params)
    assert (trainer.scaler is not None) == (dtype == torch.float16)
    ref_curve, ref_before, ref_after, _ = reference
    # the same start, up to the dtype's rounding (PEFT builds the LoRA in the base's dtype)
    assert all(torch.allclose(before[k], ref_before[k], rtol=1e-2, atol=1e-6) for k in before)
    # the loss curve: off float32's by at most a tenth of what a real change of recipe moves it
    # (doubling the learning rate; measured: bf16 deviates <= 1.5e-4, fp16 <= 3e-5, the doubled
    # lr 4e-3 .. 1e-2 from step 2 on)
    off = max(abs(a - b) for a, b in zip(curve, ref_curve, strict=True))
    recipe = max(abs(a - b) for a, b in zip(doubled_lr[0], ref_curve, strict=True))
    assert recipe > 1e-3  # the yardstick is not vacuous
    assert off <= 0.1 * recipe, (off, recipe)
    # the LoRA moved the way float32's moved
    delta = {k: after[k] - before[k] for k in after}
    ref_delta = {k: ref_after[k] - ref_before[k] for k in ref_after}
    assert _cosine(delta, ref_delta) > 0.99


def test_resume_keeps_this_runs_optimizer_implementation(run_dir, tmp_path):
    # a checkpoint written with foreach AdamW, resumed with fused: torch's load_state_dict
    # would restore the saved flags; the run keeps fused and trains as an uninterrupted one
    full = _run(run_dir, fused_optimizer=True)
    first = _trainer(run_dir, _cfg(fused_optimizer=False))
    curve = [first.train_step() for _ in range(2)]
    ckpt = first.checkpoint()
    second = _trainer(run_dir, _cfg(fused_optimizer=True))
    second.resume_from(ckpt)
    assert all(g["fused"] for g in second.optimizer.param_groups)
    curve += [second.train_step() for _ in range(STEPS - 2)]
    assert curve == pytest.approx(full[0], rel=1e-5)
    _assert_same_training((curve, None, second.lora(), second), full, rtol=1e-5)
