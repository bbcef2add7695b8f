"""The merge math: exact linear merge, PEFT parity, SVD methods (selma_ray.merging.ops)."""

from __future__ import annotations

import torch

from selma_ray.merging import (
    delta_weights,
    lora_modules,
    merge_loras,
    merge_loras_with_report,
    module_ranks,
    resolve_weights,
)

# --------------------------------------------------------------------------- (a) linear


def test_linear_is_the_exact_weighted_sum(loaded, spec):
    states, alphas = loaded
    assert alphas == spec.alphas  # read back from the files' adapter metadata
    assert module_ranks(states[1]) and set(module_ranks(states[1]).values()) == {4}
    weights = [0.5, -0.25, 1.5]
    merged, alpha = merge_loras(states, alphas, "linear", weights)
    rank = sum(spec.ranks)
    assert alpha == float(rank) and set(module_ranks(merged).values()) == {rank}
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


# --------------------------------------------------------------------------- (c) PEFT parity


def _peft_model(sd_path, states, alphas):
    from diffusers import UNet2DConditionModel
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


def test_svd_ties_dare_shapes_ranks_and_seeds(loaded, spec):
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
    assert svd_alpha == float(sum(spec.ranks)) and report.summary()["max_relative_error"] < 1e-5
    for m, d in delta_weights(svd, svd_alpha).items():
        assert torch.allclose(d, exact[m], atol=1e-5)
    # a rank above min(out, in) is capped per module; one alpha (the largest rank) still
    # applies every module's update exactly: a lower-rank module's B carries r / alpha
    ties, ties_alpha, report = merge_loras_with_report(states, alphas, "ties", svd_rank=40)
    assert ties_alpha == 40.0 and set(module_ranks(ties).values()) == {32, 40}
    ranks = module_ranks(ties)
    per_module = {m: float(r) for m, r in ranks.items()}  # scale 1 everywhere
    unfolded = dict(ties)
    for m, (_, b_key) in lora_modules(ties).items():
        unfolded[b_key] = ties[b_key] * (40 / ranks[m])
    got, want = delta_weights(ties, ties_alpha), delta_weights(unfolded, per_module)
    assert all(torch.allclose(got[m], want[m], rtol=1e-5, atol=1e-7) for m in want)
    # DARE is reproducible from the seed and leaves the global RNG alone
    state_before = torch.get_rng_state()
    one, _ = merge_loras(states, alphas, "dare_ties", seed=7)
    two, _ = merge_loras(states, alphas, "dare_ties", seed=7)
    other, _ = merge_loras(states, alphas, "dare_ties", seed=8)
    assert torch.equal(torch.get_rng_state(), state_before)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not all(torch.equal(one[k], other[k]) for k in one)
