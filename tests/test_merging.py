"""Merging skill experts: exact linear merge, PEFT parity, SVD methods, validation, export."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

from selma_ray.config import ConfigError, load_config
from selma_ray.merging import (
    METHODS,
    alpha_from_metadata,
    delta_weights,
    lora_file_bytes,
    lora_modules,
    merge_loras,
    merge_loras_with_report,
    module_ranks,
    read_lora_bytes,
    resolve_weights,
    validate_experts,
)
from selma_ray.merging_stage import merge_run, run_merge_stage
from selma_ray.storage import RunDir
from selma_ray.training.lora import LORA_WEIGHTS, add_lora, save_lora

torch.set_num_threads(1)

SKILLS = ["coco", "countbench", "whoops"]
RANKS = [2, 4, 3]
ALPHAS = [4.0, 2.0, 6.0]  # scales 2, 0.5, 2


@pytest.fixture(scope="module")
def sd_path(_offline_cache):
    from selma_ray.models import resolve_model

    return resolve_model("tiny:sd")


@pytest.fixture(scope="module")
def experts(sd_path, tmp_path_factory):
    """Three random experts (UNet + text encoder LoRA, different ranks and alphas) on disk."""
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
        (d / "expert.json").write_text(json.dumps(meta))
        out[skill] = d
    return out


def _read(path) -> tuple[dict, float]:
    state, md = read_lora_bytes(open(os.path.join(path, LORA_WEIGHTS), "rb").read())
    alpha = alpha_from_metadata(state, md)
    assert alpha is not None
    return state, alpha


@pytest.fixture(scope="module")
def loaded(experts):
    pairs = [_read(experts[s]) for s in SKILLS]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _pipe(path):
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _draw(pipe):
    gen = torch.Generator().manual_seed(0)
    kw = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np"}
    return pipe("a red cat", generator=gen, **kw).images


# --------------------------------------------------------------------------- (a) linear


def test_linear_is_the_exact_weighted_sum(loaded):
    states, alphas = loaded
    assert alphas == ALPHAS  # read back from the files' adapter metadata
    assert module_ranks(states[1]) and set(module_ranks(states[1]).values()) == {4}
    weights = [0.5, -0.25, 1.5]
    merged, alpha = merge_loras(states, alphas, "linear", weights)
    assert alpha == float(sum(RANKS)) and set(module_ranks(merged).values()) == {sum(RANKS)}
    assert set(merged) == set(states[0])  # same key names (diffusers styles kept)
    deltas = [delta_weights(s, a) for s, a in zip(states, alphas, strict=True)]
    got = delta_weights(merged, alpha)
    assert any(m.startswith("text_encoder.") for m in got)
    for m, d in got.items():
        want = sum(w * dd[m] for w, dd in zip(weights, deltas, strict=True))
        assert torch.allclose(d, want, atol=1e-6), m

    # default weights: exactly 1/N, the same as giving them
    assert resolve_weights(None, 3) == [1 / 3, 1 / 3, 1 / 3]
    default, _ = merge_loras(states, alphas)
    given, _ = merge_loras(states, alphas, "linear", [1 / 3] * 3)
    assert all(torch.equal(default[k], given[k]) for k in default)
    # cat: the same update, weights folded into A instead of B
    cat, cat_alpha = merge_loras(states, alphas, "cat", weights)
    for m, d in delta_weights(cat, cat_alpha).items():
        assert torch.allclose(d, got[m], atol=1e-6)


# --------------------------------------------------------------------------- (b) diffusers


def test_merged_file_matches_set_adapters_in_diffusers(sd_path, experts, loaded, tmp_path):
    states, alphas = loaded
    weights = [0.6, 0.3, -0.4]
    pipe = _pipe(sd_path)
    base = _draw(pipe)
    names = [f"skill_{s}" for s in SKILLS]
    for s, name in zip(SKILLS, names, strict=True):
        pipe.load_lora_weights(str(experts[s]), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=weights)
    mixed = _draw(pipe)
    pipe.unload_lora_weights()
    assert abs(_draw(pipe) - base).max() == 0

    merged, alpha = merge_loras(states, alphas, "linear", weights)
    (tmp_path / LORA_WEIGHTS).write_bytes(lora_file_bytes(merged, alpha))
    pipe.load_lora_weights(str(tmp_path), adapter_name="merged")
    out = _draw(pipe)
    assert abs(mixed - base).mean() > 1e-3  # the LoRAs do change the image
    assert abs(out - mixed).max() < 1e-5


# --------------------------------------------------------------------------- (c) PEFT parity


def _peft_model(sd_path, states, alphas):
    from peft import LoraConfig, LoraModel

    unet = UNet2DConditionModel.from_pretrained(sd_path, subfolder="unet")
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    names = [f"expert_{i}" for i in range(len(states))]
    model = None
    for name, state, alpha in zip(names, states, alphas, strict=True):
        cfg = LoraConfig(
            r=next(iter(module_ranks(state).values())), lora_alpha=alpha, target_modules=targets
        )
        if model is None:
            model = LoraModel(unet, cfg, name)
        else:
            model.peft_config[name] = cfg
            model.inject_adapter(unet, name)
        with torch.no_grad():
            for m, (a, b) in lora_modules(state).items():
                layer = unet.get_submodule(m.removeprefix("unet."))
                layer.lora_A[name].weight.copy_(state[a])
                layer.lora_B[name].weight.copy_(state[b])
    return model, unet, names


def test_methods_match_peft_add_weighted_adapter(sd_path, loaded):
    states, alphas = loaded
    states = [{k: v for k, v in s.items() if k.startswith("unet.")} for s in states]
    weights = [0.7, 0.2, 0.5]
    model, unet, names = _peft_model(sd_path, states, alphas)
    model.add_weighted_adapter(names, weights, "m_cat", combination_type="cat")
    model.add_weighted_adapter(names, weights, "m_svd", combination_type="svd", svd_rank=5)
    model.add_weighted_adapter(
        names, weights, "m_ties", combination_type="ties_svd", svd_rank=6, density=0.4
    )
    cat, _ = merge_loras(states, alphas, "cat", weights)
    svd, svd_alpha = merge_loras(states, alphas, "svd", weights, svd_rank=5)
    ties, ties_alpha = merge_loras(states, alphas, "ties", weights, density=0.4, svd_rank=6)
    assert svd_alpha == 5.0 and ties_alpha == 6.0
    svd_d, ties_d = delta_weights(svd, svd_alpha), delta_weights(ties, ties_alpha)
    for m, (a, b) in lora_modules(cat).items():
        layer = unet.get_submodule(m.removeprefix("unet."))
        assert layer.scaling["m_cat"] == 1.0
        assert torch.equal(cat[a], layer.lora_A["m_cat"].weight)
        assert torch.equal(cat[b], layer.lora_B["m_cat"].weight)
        assert torch.allclose(svd_d[m], layer.get_delta_weight("m_svd"), atol=1e-5)
        assert torch.allclose(ties_d[m], layer.get_delta_weight("m_ties"), atol=1e-5)


# --------------------------------------------------------------------------- (d) SVD methods


def test_svd_ties_dare_shapes_ranks_and_seeds(loaded):
    states, alphas = loaded
    ref = {k: v.shape for k, v in states[0].items()}
    exact = delta_weights(*merge_loras(states, alphas, "linear"))
    for method in ("ties", "dare_linear", "dare_ties", "svd"):
        merged, alpha, report = merge_loras_with_report(states, alphas, method, svd_rank=3)
        assert set(merged) == set(ref) and alpha == 3.0
        for m, (a, b) in lora_modules(merged).items():
            a0, b0 = lora_modules(states[0])[m]
            assert merged[a].shape == (3, *ref[a0][1:]) and merged[b].shape == (ref[b0][0], 3)
        assert 0 < report.summary()["max_relative_error"] < 1, method
    # svd at the default rank (sum of ranks) is exact: the linear merge again
    svd, svd_alpha, report = merge_loras_with_report(states, alphas, "svd")
    assert svd_alpha == float(sum(RANKS)) and report.summary()["max_relative_error"] < 1e-5
    for m, d in delta_weights(svd, svd_alpha).items():
        assert torch.allclose(d, exact[m], atol=1e-5)
    # a rank above min(out, in) is capped per module: alpha becomes per module (= its rank)
    ties, ties_alpha = merge_loras(states, alphas, "ties", svd_rank=40)
    assert isinstance(ties_alpha, dict) and set(module_ranks(ties).values()) == {32, 40}
    assert ties_alpha == {m: float(r) for m, r in module_ranks(ties).items()}
    # DARE is reproducible from the seed and leaves the global RNG alone
    state_before = torch.get_rng_state()
    one, _ = merge_loras(states, alphas, "dare_ties", seed=7)
    two, _ = merge_loras(states, alphas, "dare_ties", seed=7)
    other, _ = merge_loras(states, alphas, "dare_ties", seed=8)
    assert torch.equal(torch.get_rng_state(), state_before)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not all(torch.equal(one[k], other[k]) for k in one)


def test_per_module_alpha_file_loads_in_diffusers(sd_path, loaded, tmp_path):
    """rank_pattern / alpha_pattern metadata: diffusers applies each module's delta exactly."""
    states, alphas = loaded
    merged, alpha = merge_loras(states, alphas, "ties", svd_rank=40)
    assert isinstance(alpha, dict)
    (tmp_path / LORA_WEIGHTS).write_bytes(lora_file_bytes(merged, alpha))
    state, md = read_lora_bytes((tmp_path / LORA_WEIGHTS).read_bytes())
    assert alpha_from_metadata(state, md) == alpha
    pipe = _pipe(sd_path)
    pipe.load_lora_weights(str(tmp_path), adapter_name="merged")
    want = delta_weights(merged, alpha)
    for m, d in want.items():
        comp, _, local = m.partition(".")
        layer = getattr(pipe, comp).get_submodule(local)
        assert torch.allclose(layer.get_delta_weight("merged"), d, atol=1e-6), m


# --------------------------------------------------------------------------- (e) validation


def test_validation_errors_name_the_problem(loaded):
    states, alphas = loaded
    names = ["expert 'coco'", "expert 'countbench'", "expert 'whoops'"]
    with pytest.raises(ValueError, match="different base models.*'tiny:sd@1'.*train.base_model"):
        validate_experts(states, names=names, base_models=["tiny:sd", "tiny:sd", "tiny:sd@1"])
    fewer = dict(states[1])
    a, b = next(iter(lora_modules(fewer).values()))
    del fewer[a], fewer[b]
    with pytest.raises(ValueError, match="different modules.*countbench.*lacks 1 module"):
        validate_experts([states[0], fewer, states[2]], names=names)
    with pytest.raises(
        ValueError, match=r"merge.weights has 2 value.*\(in order: coco, countbench"
    ):
        resolve_weights([1, 2], 3, SKILLS, field_name="merge.weights")
    with pytest.raises(ValueError, match="weights has 4 value"):
        merge_loras(states, alphas, "linear", [1, 2, 3, 4])
    with pytest.raises(ValueError, match="unknown; choose one of"):
        merge_loras(states, alphas, "average")
    with pytest.raises(ValueError, match="alpha must be a positive"):
        merge_loras(states, [1.0, 0.0, 2.0])
    bad = {**states[0], "unet.x.to_q.lora_B.bias": torch.zeros(3)}
    with pytest.raises(ValueError, match="not a LoRA down/up weight"):
        lora_modules(bad)
    wide = {
        k: (torch.zeros(v.shape[0], v.shape[1] + 1) if "down" in k else v)
        for k, v in states[1].items()
    }
    with pytest.raises(ValueError, match="different shapes"):
        validate_experts([states[0], wide])
    assert set(METHODS) == {"linear", "cat", "ties", "dare_linear", "dare_ties", "svd"}


# --------------------------------------------------------------------------- (f) merge_run


def _run_dir(tmp_path, experts) -> RunDir:
    rd = RunDir(str(tmp_path / "run"))
    for skill, d in experts.items():
        shutil.copytree(d, rd.path("experts", skill))
    return rd


def test_merge_run_writes_lora_card_and_fused_pipeline(sd_path, experts, tmp_path):
    rd = _run_dir(tmp_path, experts)
    cfg = load_config(overrides=[f"prompts.skills={SKILLS}", "merge.export_fused=true"])
    counts = run_merge_stage(cfg, rd)
    assert counts == {
        "experts": 3,
        "method": "linear",
        "rank": 9,
        "modules": 56,
        "exact": True,
        "fused": True,
    }
    info = json.loads(rd.read_text("merged", "merge.json"))
    assert info["weights"] == dict.fromkeys(SKILLS, 1 / 3)
    assert [e["selected_step"] for e in info["experts"]] == [10, 11, 12]
    card = rd.read_text("merged", "README.md")
    for text in ("tiny:sd", "coco", "countbench", "whoops", "`linear`", "load_lora_weights"):
        assert text in card
    assert "| coco | 0.3333 | 2 | 4 | 20 | 10 |" in card
    assert rd.read_text("merged", "pipeline", "README.md") == card

    pipe = _pipe(sd_path)
    base = _draw(pipe)
    pipe.load_lora_weights(rd.path("merged"))
    lora = _draw(pipe)
    fused = DiffusionPipeline.from_pretrained(rd.path("merged", "pipeline"))
    fused.set_progress_bar_config(disable=True)
    assert abs(lora - base).mean() > 1e-3
    assert abs(_draw(fused) - lora).max() < 1e-4

    # method / weights overrides; wrong count names merge.weights and the expert order
    info = merge_run(
        cfg.model_copy(update={"merge": cfg.merge.model_copy(update={"export_fused": False})}),
        rd,
        method="svd",
        weights=[1.0, 0.5, 0.25],
    )
    assert info["method"] == "svd" and info["weights_source"] == "argument"
    assert not rd.exists("merged", "pipeline")
    with pytest.raises(ConfigError, match="merge.weights.*in order: coco, countbench, whoops"):
        merge_run(cfg, rd, weights=[1.0])


def test_merge_run_names_missing_and_mismatched_experts(experts, tmp_path):
    rd = _run_dir(tmp_path, {s: experts[s] for s in SKILLS[:2]})
    cfg = load_config(overrides=[f"prompts.skills={SKILLS}"])
    with pytest.raises(FileNotFoundError, match=r"\['whoops'\].*experts stage"):
        merge_run(cfg, rd)
    shutil.copytree(experts["whoops"], rd.path("experts", "whoops"))
    meta = rd.read_json("experts", "whoops", "expert.json")
    rd.write_json({**meta, "base_model": "tiny:sd@3"}, "experts", "whoops", "expert.json")
    with pytest.raises(ValueError, match="different base models.*whoops"):
        merge_run(cfg, rd)


def test_merge_run_on_an_object_store_run_dir(experts):
    """memory:// stands in for s3:// / gs://: files and the fused pipeline go through fsspec."""
    rd = RunDir("memory://selma-merge-test")
    for skill in SKILLS:
        for name in (LORA_WEIGHTS, "expert.json"):
            rd.write_bytes((experts[skill] / name).read_bytes(), "experts", skill, name)
    cfg = load_config(
        overrides=[
            f"prompts.skills={SKILLS}",
            "merge.export_fused=true",
            "merge.method=dare_linear",
            "merge.weights=[1, 1, 1]",
        ]
    )
    info = merge_run(cfg, rd)
    assert info["weights_source"] == "merge.weights" and info["svd_rank"] == 9
    assert rd.exists("merged", "pipeline", "unet", "config.json")
    assert rd.exists("merged", "pipeline", "README.md")
    state, md = read_lora_bytes(rd.read_bytes("merged", LORA_WEIGHTS))
    assert alpha_from_metadata(state, md) == 9.0 and "selma_ray.merge" in md
    rd.remove()
