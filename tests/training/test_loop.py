"""The expert training loop: overfitting, export, resume, best-step selection, sharding, SDXL."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from selma_ray.config import TrainConfig
from selma_ray.models import resolve_model
from selma_ray.storage import RunDir
from selma_ray.training import loop as loop_mod
from selma_ray.training.data import load_pairs, split_holdout, write_synthetic_skill
from selma_ray.training.loop import (
    ExpertCheckpoint,
    LocalReporter,
    _SampleOrder,
    shard_bounds,
    train_expert,
)

torch.set_num_threads(1)


def write_skill(run_dir: RunDir, skill: str, prompts: int = 4, per_prompt: int = 1) -> None:
    """A random imagefolder for ``skill`` (PNG files + metadata.jsonl)."""
    write_synthetic_skill(run_dir, skill, prompts=prompts, images_per_prompt=per_prompt, seed=1)


def cfg(**kw) -> TrainConfig:
    base = {
        "max_steps": 6,
        "checkpoint_every": 3,
        "batch_size": 2,
        "learning_rate": 1e-3,
        "resolution": 64,
        "validation_fraction": 0.25,
    }
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_models):
    rd = RunDir(str(tmp_path_factory.mktemp("train-run")))
    write_skill(rd, "overfit", prompts=4)
    write_skill(rd, "resume", prompts=4, per_prompt=2)
    return rd


def _draw(pipe):
    gen = torch.Generator().manual_seed(0)
    return pipe("a red cat", num_inference_steps=3, generator=gen, output_type="np").images


def test_overfit_loss_falls_and_expert_loads(run_dir, tiny_models):
    from diffusers import StableDiffusionPipeline

    rep = LocalReporter()
    c = cfg(max_steps=40, checkpoint_every=10, validation_fraction=0.0, random_flip=False)
    result = train_expert(
        c, skill="overfit", run_dir_uri=run_dir.uri, base_model="tiny:sd", reporter=rep
    )
    assert result.steps == 40 and [h["step"] for h in rep.history] == [10, 20, 30, 40]
    meta = run_dir.read_json("experts", "overfit", "expert.json")
    val = [v for _, v in meta["val_loss"]]
    train = [v for _, v in meta["train_loss"]]
    assert len(train) == 40 and meta["val_source"] == "train_slice"
    assert val[-1] < val[0] - 0.003, val
    assert sum(train[-10:]) < sum(train[:10]), train
    assert meta["selected_step"] == result.best_step == min(meta["val_loss"], key=lambda x: x[1])[0]
    assert meta["base_model"] == "tiny:sd" and meta["image_model"] == "synthetic"
    assert meta["rank"] == 4 and meta["steps"] == 40 and meta["skipped"] == {}
    assert meta["pairs"] == {"total": 4, "train": 4, "val": 4, "train_prompts": 4, "val_prompts": 0}
    assert meta["held_out_prompts"] == []
    curves = run_dir.read_json("experts", "overfit", "curves.json")
    assert curves["val_loss"] == meta["val_loss"]

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["sd"], safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    base = _draw(pipe)
    pipe.load_lora_weights(result.out_dir)
    assert abs(_draw(pipe) - base).mean() > 1e-4


def test_resume_matches_uninterrupted_run(run_dir, tmp_path):
    kw = {"skill": "resume", "run_dir_uri": run_dir.uri, "base_model": "tiny:sd", "seed": 3}
    c6 = cfg(gradient_accumulation=2)
    full = LocalReporter(str(tmp_path / "full"))
    train_expert(c6, reporter=full, **kw)

    first = LocalReporter(str(tmp_path / "first"))
    part = train_expert(c6.model_copy(update={"max_steps": 3}), reporter=first, **kw)
    assert part.steps == 3 and [h["step"] for h in first.history] == [3]
    ckpt = ExpertCheckpoint.from_dir(first.checkpoint_path(3))
    assert ckpt.step == 3 and ckpt.optimizer is not None

    second = LocalReporter(str(tmp_path / "second"))
    done = train_expert(c6, reporter=second, resume=ckpt, **kw)
    assert done.steps == 6 and [h["step"] for h in second.history] == [6]

    a, b = full.checkpoint(6), second.checkpoint(6)
    assert a.lora.keys() == b.lora.keys()
    assert all(torch.equal(a.lora[k], b.lora[k]) for k in a.lora)
    assert a.state["train_curve"] == b.state["train_curve"]
    assert [s for s, _ in b.state["train_curve"]] == [1, 2, 3, 4, 5, 6]
    assert a.state["val_curve"] == b.state["val_curve"]
    assert full.history[-1]["val_loss"] == second.history[-1]["val_loss"]
    meta = run_dir.read_json("experts", "resume", "expert.json")
    assert meta["resumed_from"] == 3 and meta["steps"] == 6
    assert meta["pairs"]["val_prompts"] >= 1 and meta["val_source"] == "holdout"
    # expert.json names the held-out prompts: the split of the pairs the trainer loaded
    pairs, _ = load_pairs(run_dir, "resume")
    _, val = split_holdout(pairs, c6.validation_fraction, 3)
    assert meta["held_out_prompts"] == sorted({p.prompt_id for p in val})
    assert len(meta["held_out_prompts"]) == meta["pairs"]["val_prompts"]

    with pytest.raises(ValueError, match=r"cannot resume.*seed: 3 -> 4"):
        train_expert(c6, reporter=LocalReporter(), resume=ckpt, **{**kw, "seed": 4})
    # what the remaining steps depend on must match too: the learning rate, the global batch,
    # the held-out split, the model
    other = c6.model_copy(
        update={"learning_rate": 0.5, "gradient_accumulation": 3, "validation_fraction": 0.4}
    )
    with pytest.raises(ValueError) as e:
        train_expert(other, reporter=LocalReporter(), resume=ckpt, **kw)
    batch = c6.batch_size
    for diff in (
        f"validation_fraction: {c6.validation_fraction} -> 0.4",
        f"global_batch: {2 * batch} -> {3 * batch}",
        f"learning_rate: {c6.learning_rate} -> 0.5",
    ):
        assert diff in str(e.value)
    with pytest.raises(ValueError, match=r"cannot resume.*base_model: 'tiny:sd' -> "):
        train_expert(c6, reporter=LocalReporter(), resume=ckpt,
                     **{**kw, "base_model": resolve_model("tiny:sd")})  # fmt: skip
    # a checkpoint written before those fields were recorded still resumes
    older = ExpertCheckpoint.from_dir(first.checkpoint_path(3))
    for key in ("resolution", "center_crop", "random_flip", "validation_fraction",
                "global_batch", "learning_rate"):  # fmt: skip
        del older.state[key]
    again = LocalReporter(str(tmp_path / "again"))
    train_expert(c6, reporter=again, resume=older, **kw)
    assert torch.equal(again.checkpoint(6).lora[next(iter(a.lora))], a.lora[next(iter(a.lora))])


def test_best_step_is_lowest_validation_loss(run_dir, monkeypatch, tiny_models, tmp_path):
    from diffusers import UNet2DConditionModel

    from selma_ray.training.lora import add_lora, load_lora_state, save_lora

    scripted = iter([0.9, 0.4, 0.7, 0.4])  # steps 2, 4, 6, 8: best is step 4 (tie keeps 4)
    monkeypatch.setattr(loop_mod._Trainer, "validate", lambda self: next(scripted))
    rep = LocalReporter()
    c = cfg(max_steps=8, checkpoint_every=2, batch_size=1)
    result = train_expert(
        c, skill="overfit", run_dir_uri=run_dir.uri, base_model="tiny:sd", reporter=rep
    )
    assert (result.best_step, result.best_val_loss, result.steps) == (4, 0.4, 8)
    assert [h["best_step"] for h in rep.history] == [2, 4, 4, 4]
    meta = run_dir.read_json("experts", "overfit", "expert.json")
    assert meta["selected_step"] == 4 and meta["val_loss"][1] == [4, 0.4]
    last = rep.checkpoint(8)
    assert last.state["best_step"] == 4 and last.best_lora is not None

    # the exported weights are step 4's, not the last step's
    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"], subfolder="unet")
    add_lora(unet, c.rank, c.alpha)
    load_lora_state(unet, rep.checkpoint(4).lora)
    expected = load_file(save_lora(unet, str(tmp_path / "step4")))
    exported = load_file(run_dir.path("experts", "overfit", "pytorch_lora_weights.safetensors"))
    assert expected.keys() == exported.keys()
    assert all(torch.equal(expected[k], exported[k]) for k in expected)
    assert not all(torch.equal(last.lora[k], rep.checkpoint(4).lora[k]) for k in last.lora)


def test_without_a_finite_validation_loss_the_last_step_is_the_expert(run_dir, monkeypatch):
    """No checkpoint with a finite validation loss (an fp16 overflow, say): expert.json names
    the last step, which is what is exported; a LoRA that holds NaN is refused, not exported."""
    monkeypatch.setattr(loop_mod._Trainer, "validate", lambda self: float("nan"))
    kw = {"skill": "overfit", "run_dir_uri": run_dir.uri, "base_model": "tiny:sd"}
    c = cfg(max_steps=4, checkpoint_every=2, batch_size=1)
    rep = LocalReporter()
    result = train_expert(c, reporter=rep, **kw)
    assert (result.best_step, result.steps) == (4, 4)
    meta = run_dir.read_json("experts", "overfit", "expert.json")
    assert (meta["selected_step"], meta["best_val_loss"]) == (4, None)
    assert meta["selection"] == "the last step: no checkpoint had a finite validation loss"
    exported = load_file(run_dir.path("experts", "overfit", "pytorch_lora_weights.safetensors"))
    b = [k for k in rep.checkpoint(4).lora if "lora_B" in k][0]
    assert any(torch.equal(rep.checkpoint(4).lora[b], v) for v in exported.values())

    lora = loop_mod._Trainer.lora
    monkeypatch.setattr(
        loop_mod._Trainer, "lora", lambda self: {k: v * math.nan for k, v in lora(self).items()}
    )
    run_dir.remove("experts", "overfit")
    with pytest.raises(ValueError, match=r"training diverged: \d+ LoRA tensor\(s\) hold NaN"):
        train_expert(c, reporter=LocalReporter(), **kw)
    assert not run_dir.exists("experts", "overfit", "pytorch_lora_weights.safetensors")


def test_without_cache_trains_the_same(run_dir):
    kw = {"skill": "overfit", "run_dir_uri": run_dir.uri, "base_model": "tiny:sd"}
    curves = []
    for cache in (True, False):
        rep = LocalReporter()
        train_expert(cfg(max_steps=2, checkpoint_every=2, cache_inputs=cache), reporter=rep, **kw)
        curves.append(rep.checkpoint(2))
    cached, live = curves
    for (s1, l1), (s2, l2) in zip(
        cached.state["train_curve"], live.state["train_curve"], strict=True
    ):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-4)
    assert all(torch.allclose(cached.lora[k], live.lora[k], atol=1e-5) for k in cached.lora)


def test_text_encoder_lora_trains_and_exports(run_dir, tiny_models):
    from diffusers import StableDiffusionPipeline

    rep = LocalReporter()
    c = cfg(max_steps=2, checkpoint_every=2, text_encoder_lora=True, learning_rate=1e-2)
    result = train_expert(
        c, skill="overfit", run_dir_uri=run_dir.uri, base_model="tiny:sd", reporter=rep
    )
    state = rep.checkpoint(2).lora
    te_b = [v for k, v in state.items() if k.startswith("text_encoder.") and "lora_B" in k]
    assert te_b and any(v.abs().sum() > 0 for v in te_b)  # trained (lora_B starts at zero)
    exported = load_file(run_dir.path("experts", "overfit", "pytorch_lora_weights.safetensors"))
    assert any(k.startswith("text_encoder.") for k in exported)
    assert any(k.startswith("unet.") for k in exported)
    assert run_dir.read_json("experts", "overfit", "expert.json")["text_encoder_lora"]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["sd"], safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    base = _draw(pipe)
    pipe.load_lora_weights(result.out_dir)
    assert abs(_draw(pipe) - base).mean() > 1e-5


def test_guards_never_train_zero_steps(run_dir):
    kw = {"run_dir_uri": run_dir.uri, "base_model": "tiny:sd"}
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        train_expert(cfg().model_copy(update={"max_steps": 0}), skill="overfit", **kw)
    with pytest.raises(ValueError, match="skill 'absent'"):
        train_expert(cfg(), skill="absent", **kw)
    with pytest.raises(ValueError, match="batch_size"):
        train_expert(cfg(batch_size=1), skill="overfit", world_size=2, rank=1, **kw)
    with pytest.raises(ValueError, match="rank"):
        train_expert(cfg(), skill="overfit", world_size=2, rank=2, **kw)


def test_ranks_get_disjoint_slices_of_each_global_batch():
    for world in (1, 2, 3, 4):
        for batch in range(world, 9):
            slices = [range(*shard_bounds(batch, world, r)) for r in range(world)]
            assert [i for s in slices for i in s] == list(range(batch))
            assert all(len(s) >= 1 for s in slices)
    order = _SampleOrder([10, 11, 12, 13, 14], seed=0)
    for epoch in range(3):
        assert sorted(order(epoch * 5 + i) for i in range(5)) == [10, 11, 12, 13, 14]
    epochs = {tuple(order(e * 5 + i) for i in range(5)) for e in range(6)}
    assert len(epochs) > 1  # reshuffled every epoch


# --------------------------------------------------------------------------- SDXL


def test_sdxl_expert_trains_and_loads(run_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    path = resolve_model("tiny:sdxl")  # SDXL base's stand-in: two text encoders, text_time UNet
    rep = LocalReporter()
    c = cfg(
        max_steps=2, checkpoint_every=2, center_crop=False, learning_rate=1e-2,
        text_encoder_lora=True,
    )  # fmt: skip
    result = train_expert(
        c, skill="resume", run_dir_uri=run_dir.uri, base_model=path, reporter=rep,
        cache_dir=str(tmp_path / "sdxl-cache"),
    )  # fmt: skip
    assert result.steps == 2 and rep.history[-1]["val_loss"] > 0
    meta = run_dir.read_json("experts", "resume", "expert.json")
    assert meta["base_model_kind"] == "sdxl"
    key = json.loads((tmp_path / "sdxl-cache" / "cache.json").read_text())
    assert key["crop_seed"] == 0 and not key["center_crop"]

    # both text encoders are trained, but not the first one's last layer (SDXL reads its
    # penultimate hidden states)
    exported = load_file(run_dir.path("experts", "resume", "pytorch_lora_weights.safetensors"))
    for prefix in ("unet.", "text_encoder.", "text_encoder_2."):
        assert any(k.startswith(prefix) for k in exported), prefix
    trained = rep.checkpoint(2).lora
    te_b = [v for k, v in trained.items() if k.startswith("text_encoder.") and "lora_B" in k]
    assert te_b and all(v.abs().sum() > 0 for v in te_b)

    pipe = StableDiffusionXLPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    base = _draw(pipe)
    ids = pipe.tokenizer(["a red cat"], return_tensors="pt").input_ids
    with torch.no_grad():
        te_base = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        pipe.load_lora_weights(result.out_dir)
        te_lora = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    assert abs(_draw(pipe) - base).mean() > 1e-5
    assert not torch.allclose(te_lora, te_base)


# --------------------------------------------------------------------------- DDP (2 processes)

_DDP_WORKER = """
import sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
torch.set_num_threads(1)
from selma_ray.config import TrainConfig
from selma_ray.models import resolve_model
from selma_ray.training.loop import LocalReporter, train_expert
rank, init, run_dir, cfg_json, out = sys.argv[1:6]
rank = int(rank)
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
rep = LocalReporter(out + f"/rank{rank}")
res = train_expert(TrainConfig.model_validate_json(cfg_json), skill="resume", run_dir_uri=run_dir,
                   base_model="tiny:sd", seed=5, reporter=rep, wrap_model=DistributedDataParallel,
                   world_size=2, rank=rank, device="cpu")
assert res.steps == 2 and len(rep.history) == 1
assert (rep.checkpoints == []) == (rank == 1)
dist.destroy_process_group()
"""


def test_two_rank_ddp_matches_one_process(run_dir, tmp_path):
    """Two DDP ranks, each on half of every global batch, train the same LoRA as one process."""
    import os
    import subprocess
    import sys

    c = cfg(max_steps=2, checkpoint_every=2, batch_size=4)
    single = LocalReporter()
    # one thread, like each DDP worker (OMP_NUM_THREADS=1): the same kernels' reduction order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_expert(
            c,
            skill="resume",
            run_dir_uri=run_dir.uri,
            base_model="tiny:sd",
            seed=5,
            reporter=single,
        )
    finally:
        torch.set_num_threads(threads)
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    init = f"file://{tmp_path / 'rendezvous'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [str(script), "RANK", init, run_dir.uri, c.model_dump_json(), str(tmp_path)]
    procs = [
        subprocess.Popen(
            [sys.executable, *[str(r) if a == "RANK" else a for a in argv]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out[-3000:]
    ddp = ExpertCheckpoint.from_dir(str(tmp_path / "rank0" / "checkpoint_000002"))
    ref = single.checkpoint(2)
    for (s1, l1), (s2, l2) in zip(ref.state["train_curve"], ddp.state["train_curve"], strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-5)
    # DDP averages the two ranks' gradients (all-reduce, then / 2) where one process takes the
    # mean of the whole batch: float32 rounds the two differently, by about 2e-6 here after two
    # AdamW steps; the steps themselves move the LoRA (B starts at zero) by ~lr each, over 100x
    diff = max((ref.lora[k] - ddp.lora[k]).abs().max().item() for k in ref.lora)
    moved = max(ref.lora[k].abs().max().item() for k in ref.lora if "lora_B" in k)
    assert diff <= 1e-5 and moved >= 100 * diff, (diff, moved)
