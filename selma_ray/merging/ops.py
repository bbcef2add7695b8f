"""LoRA merge math: small pure functions over tensors (no I/O), in the style of PEFT's
``merge_utils``.

Methods (:func:`merge_loras`); ``w_i`` are the merge weights (default exactly ``1/N``),
``s_i = alpha_i / r_i`` the experts' scales (:mod:`selma_ray.merging.state`):

* ``linear`` -- SELMA's merge: ``delta_W = sum_i w_i s_i B_i A_i``, represented *exactly* as a
  LoRA of rank ``sum(r_i)``: ``A = [A_1; ...; A_N]``, ``B = [w_1 s_1 B_1, ..., w_N s_N B_N]``,
  ``alpha = rank`` (scale 1). It equals ``pipe.set_adapters(names, adapter_weights=w)``.
* ``cat`` -- PEFT's ``add_weighted_adapter(combination_type="cat")``: the same concatenation but
  with ``w_i s_i`` folded into the ``A`` factors (``A = [w_i s_i A_i]``, ``B = [B_i]``); the same
  update as ``linear``, tensor for tensor what PEFT produces.
* ``svd`` -- ``sum_i w_i delta_W_i`` refactored by a truncated SVD at ``svd_rank`` (default
  ``sum(r_i)``, at which it is exact). Computed from the factors (QR of ``B`` and ``A^T``, SVD of
  the small core), never from the dense ``delta_W``; same result as PEFT's ``svd``.
* ``ties``, ``dare_linear``, ``dare_ties`` -- ``peft.utils.merge_utils`` on the dense per-module
  ``delta_W_i`` with ``density``, then a truncated SVD at ``svd_rank`` (default ``sum(r_i)``),
  like PEFT's ``ties_svd`` / ``dare_linear_svd`` / ``dare_ties_svd``. The merged dense update is
  usually of full rank, so this last step is an approximation (its error is reported by
  :func:`merge_loras_with_report`). DARE's random masks are drawn from ``seed`` and the module
  name, so a merge is reproducible (on one kind of device: CPU and CUDA draw differently)
  and independent of module order. Note that TIES (and DARE-TIES) average the sign-agreeing
  entries, so with the default ``1/N`` weights their update is ``1/N`` of that mean; the TIES
  paper's ``lambda = 1`` is ``weights = [1, ..., 1]``.

Ranks. No method here needs equal ranks: ``linear`` / ``cat`` concatenate factors and the others
work on full ``delta_W``. (PEFT's own factor-wise ``linear`` / ``ties`` / ``dare_*``, which do
need equal ranks, are not used.) What must agree is the set of modules and their shapes.

The merged LoRA applies each module's merged update exactly (scale 1) under ONE alpha, its
largest rank, returned as a number: a module of lower rank ``r`` (the SVD rank is capped per
module at ``min(out, in)``) has its ``B`` multiplied by ``r / alpha``, so ``alpha / r * B' A``
is the update. No per-module ``alpha_pattern`` is written, which LoRA hot-swap requires (PEFT
swaps only between adapters with equal alpha patterns; the experts have none).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from selma_ray.merging.methods import SVD_METHODS
from selma_ray.merging.state import Alpha, factors
from selma_ray.merging.validate import MergePlan, validate_merge

__all__ = [
    "MergeReport",
    "cat",
    "linear",
    "lowrank_svd",
    "merge_loras",
    "merge_loras_with_report",
    "merge_module",
    "merge_planned",
    "task_merge",
    "truncated_svd",
]

#: ``[(A as r_i x in, B as out x r_i)]``: one module's factors, one pair per expert.
Factors = Sequence[tuple[Tensor, Tensor]]


@dataclass
class MergeReport:
    """What a merge did: the rank per module and, for SVD refactoring, what it lost."""

    method: str
    weights: list[float]
    ranks: dict[str, int] = field(default_factory=dict)
    #: ||target - merged||_F / ||target||_F per module (SVD methods only; empty for linear, cat)
    relative_error: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        errs = list(self.relative_error.values())
        ranks = list(self.ranks.values())
        return {
            "method": self.method,
            "weights": self.weights,
            "modules": len(self.ranks),
            "rank": max(ranks) if ranks else 0,
            "ranks": sorted(set(ranks)),
            "max_relative_error": max(errs) if errs else 0.0,
            "mean_relative_error": sum(errs) / len(errs) if errs else 0.0,
        }


# --------------------------------------------------------------------------- one module


def linear(fs: Factors, weights: Sequence[float], scales: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Exact: the stacked factors, weights and scales on the B side."""
    a = torch.cat([fa for fa, _ in fs], dim=0)
    b = torch.cat(
        [wi * si * fb for wi, si, (_, fb) in zip(weights, scales, fs, strict=True)], dim=1
    )
    return a, b


def cat(fs: Factors, weights: Sequence[float], scales: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Exact, as PEFT's ``cat``: the stacked factors, weights and scales on the A side."""
    a = torch.cat(
        [fa * wi * si for wi, si, (fa, _) in zip(weights, scales, fs, strict=True)], dim=0
    )
    b = torch.cat([fb for _, fb in fs], dim=1)
    return a, b


def _relative_error(s: Tensor, k: int) -> float:
    total = float(s.square().sum())
    lost = float(s[k:].square().sum())
    return math.sqrt(lost / total) if total > 0 else 0.0


def truncated_svd(delta: Tensor, rank: int) -> tuple[Tensor, Tensor, float]:
    """(A, B, relative error) with ``B @ A`` the best rank-``rank`` approximation of ``delta``."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, s.shape[0])
    err = _relative_error(s, k)
    return vh[:k].contiguous(), (u[:, :k] * s[:k]).contiguous(), err


def lowrank_svd(a: Tensor, b: Tensor, rank: int) -> tuple[Tensor, Tensor, float]:
    """Truncated SVD of ``b @ a`` (``b``: out x R, ``a``: R x in) without forming it densely."""
    big_r = a.shape[0]
    if big_r >= min(b.shape[0], a.shape[1]):
        return truncated_svd(b @ a, rank)
    qb, rb = torch.linalg.qr(b)  # out x R, R x R
    qa, ra = torch.linalg.qr(a.T)  # in x R, R x R
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    k = min(rank, s.shape[0])
    err = _relative_error(s, k)
    new_b = (qb @ u[:, :k]) * s[:k]
    new_a = vh[:k] @ qa.T
    return new_a.contiguous(), new_b.contiguous(), err


def _module_seed(seed: int, module: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(module.encode())) % (2**63 - 1)


def task_merge(
    method: str, deltas: list[Tensor], weights: Tensor, density: float, seed: int, module: str
) -> Tensor:
    """``peft.utils.merge_utils`` TIES / DARE of dense updates; DARE seeded per module."""
    from peft.utils import merge_utils

    if method == "ties":
        return merge_utils.ties(deltas, weights, density)
    # merge_utils draws DARE's masks from the global RNG: seed it per module, then restore it
    # (torch.manual_seed also seeds every CUDA device, so all of them are forked)
    cuda = deltas[0].device.type == "cuda"
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_module_seed(seed, module))
        if method == "dare_linear":
            return merge_utils.dare_linear(deltas, weights, density)
        return merge_utils.dare_ties(deltas, weights, density)


def merge_module(
    plan: MergePlan, module: str, fs: Factors, scales: Sequence[float], seed: int
) -> tuple[Tensor, Tensor, float]:
    """``(A, B, relative error)`` of one module merged by ``plan.method``, as 2-D factors."""
    method, w = plan.method, plan.weights
    if method == "linear":
        return (*linear(fs, w, scales), 0.0)
    if method == "cat":
        return (*cat(fs, w, scales), 0.0)
    total_rank = sum(fa.shape[0] for fa, _ in fs)
    target = plan.svd_rank if plan.svd_rank is not None else total_rank
    if method == "svd":
        return lowrank_svd(*linear(fs, w, scales), target)
    deltas = [si * (fb @ fa) for si, (fa, fb) in zip(scales, fs, strict=True)]
    wt = torch.tensor(w, dtype=torch.float32, device=deltas[0].device)
    return truncated_svd(task_merge(method, deltas, wt, plan.density, seed, module), target)


# --------------------------------------------------------------------------- whole experts


def _out_dtype(states: Sequence[Mapping[str, Tensor]], plan: MergePlan) -> torch.dtype:
    dtype = states[0][next(iter(plan.modules.values()))[0]].dtype
    return dtype if dtype.is_floating_point else torch.float32


def _one_alpha(merged: dict[str, Tensor], plan: MergePlan, ranks: Mapping[str, int]) -> float:
    """The merged LoRA's one alpha (its largest rank), each lower-rank module's scale folded
    into its ``B`` (module doc)."""
    alpha = max(ranks.values())
    for m, (_, b_key) in plan.modules.items():
        if ranks[m] != alpha:
            b = merged[b_key]
            merged[b_key] = (b.double() * (ranks[m] / alpha)).to(b.dtype)
    return float(alpha)


def merge_planned(
    states: Sequence[Mapping[str, Tensor]],
    plan: MergePlan,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> tuple[dict[str, Tensor], Alpha, MergeReport]:
    """Merge experts already checked by :func:`~selma_ray.merging.validate.validate_merge`."""
    dev = torch.device(device) if device is not None else None
    out_dtype = _out_dtype(states, plan)
    merged: dict[str, Tensor] = {}
    report = MergeReport(method=plan.method, weights=plan.weights)
    for m, (a_key, b_key) in plan.modules.items():
        fs = [factors(s, keys[m], dev) for s, keys in zip(states, plan.keys, strict=True)]
        scales = [am[m] / fa.shape[0] for am, (fa, _) in zip(plan.alphas, fs, strict=True)]
        new_a, new_b, err = merge_module(plan, m, fs, scales, seed)
        a_shape, b_shape = states[0][a_key].shape, states[0][b_key].shape
        r = new_a.shape[0]
        merged[a_key] = new_a.reshape(r, *a_shape[1:]).to("cpu", out_dtype).contiguous()
        merged[b_key] = new_b.reshape(b_shape[0], r, *b_shape[2:]).to("cpu", out_dtype).contiguous()
        report.ranks[m] = r
        if plan.method in SVD_METHODS:
            report.relative_error[m] = err
    return merged, _one_alpha(merged, plan, report.ranks), report


def merge_loras_with_report(
    states: Sequence[Mapping[str, Tensor]],
    alphas: Sequence[Alpha],
    method: str = "linear",
    weights: Sequence[float] | None = None,
    density: float = 0.5,
    svd_rank: int | None = None,
    seed: int = 0,
    *,
    names: Sequence[str] | None = None,
    base_models: Sequence[str | None] | None = None,
    weights_field: str = "weights",
    device: str | torch.device | None = None,
) -> tuple[dict[str, Tensor], Alpha, MergeReport]:
    """:func:`merge_loras`, plus a :class:`MergeReport` (ranks, SVD truncation error).

    ``base_models`` (one per expert, None where unknown) must agree; ``weights_field`` names
    the weights in their error messages (the stage passes ``merge.weights``).
    """
    plan = validate_merge(
        states,
        alphas,
        method,
        weights,
        density,
        svd_rank,
        names=names,
        base_models=base_models,
        weights_field=weights_field,
    )
    return merge_planned(states, plan, seed, device)


def merge_loras(
    states: Sequence[Mapping[str, Tensor]],
    alphas: Sequence[Alpha],
    method: str = "linear",
    weights: Sequence[float] | None = None,
    density: float = 0.5,
    svd_rank: int | None = None,
    seed: int = 0,
    *,
    names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
) -> tuple[dict[str, Tensor], Alpha]:
    """Merge LoRA experts into one LoRA; returns ``(state, alpha)``: each module's merged
    update applied exactly under one alpha (module doc).

    ``states``: diffusers-format LoRA state dicts; ``alphas``: each expert's alpha (number or
    ``{module: alpha}``); ``method``: one of :data:`~selma_ray.merging.methods.METHODS` (see the
    module docstring); ``weights``: one per expert (default exactly ``1/N``); ``density``: kept
    fraction for ties / dare; ``svd_rank``: target rank of the SVD methods (default the sum of
    the experts' ranks, capped per module at ``min(out, in)``); ``seed``: DARE's random masks;
    ``names``: expert names for error messages; ``device``: where to compute (the result is on
    the CPU, in the first expert's dtype). The returned alpha is a number: the largest rank.
    """
    merged, alpha, _ = merge_loras_with_report(
        states, alphas, method, weights, density, svd_rank, seed, names=names, device=device
    )
    return merged, alpha
