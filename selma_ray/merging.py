"""LoRA merging math: validate skill experts and merge their diffusers-format LoRA state dicts.

Everything here is pure tensor code over ``dict[str, Tensor]`` state dicts as read by
``safetensors.torch.load_file`` from a ``pytorch_lora_weights.safetensors`` (plus helpers that
read and write such files' metadata); the stage that reads a run directory and exports the
merged model is :mod:`selma_ray.merging_stage`.

State dicts. A LoRA module ``m`` (e.g. ``unet.down_blocks.1.attentions.0.transformer_blocks.0.
attn1.to_q`` or ``text_encoder.encoder.layers.0.self_attn.q_proj``) has a down matrix ``A``
(``r x in``) and an up matrix ``B`` (``out x r``), under any of the key styles diffusers writes
and reads: ``m.lora_A.weight`` / ``m.lora_B.weight`` (PEFT), ``m.lora.down.weight`` /
``m.lora.up.weight`` (diffusers UNet) or ``m.lora_linear_layer.down.weight`` / ``.up.weight``
(diffusers text encoders). Conv LoRAs (4-D ``A``, ``B``) are handled by flattening. The update
of an expert is ``delta_W = scale * B @ A`` with ``scale = alpha / r``; ``alpha`` is a number
for the whole expert or a ``{module: alpha}`` mapping (:data:`Alpha`).

Methods (:func:`merge_loras`); ``w_i`` are the merge weights (default exactly ``1/N``):

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

The merged LoRA always has scale 1: its alpha equals its rank, returned as a number when every
module has the same rank, else as a ``{module: rank}`` mapping (the SVD rank is capped per
module at ``min(out, in)``).
"""

from __future__ import annotations

import collections
import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor

__all__ = [
    "METHODS",
    "Alpha",
    "MergeReport",
    "alpha_from_metadata",
    "delta_weights",
    "lora_file_bytes",
    "lora_metadata",
    "lora_modules",
    "merge_loras",
    "merge_loras_with_report",
    "module_alphas",
    "module_ranks",
    "read_lora_bytes",
    "resolve_weights",
    "validate_experts",
]

Method = Literal["linear", "cat", "ties", "dare_linear", "dare_ties", "svd"]
METHODS: tuple[str, ...] = ("linear", "cat", "ties", "dare_linear", "dare_ties", "svd")
#: Per-expert LoRA alpha: one number for every module, or ``{module: alpha}``.
Alpha: TypeAlias = "float | Mapping[str, float]"

# (A suffix, B suffix) per key style; the first matching style wins.
_KEY_STYLES: tuple[tuple[str, str], ...] = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
)
_COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "transformer")
_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
_DARE = ("dare_linear", "dare_ties")


# --------------------------------------------------------------------------- state dicts


def lora_modules(state: Mapping[str, Tensor], name: str = "state") -> dict[str, tuple[str, str]]:
    """``{module: (A key, B key)}`` of a LoRA state dict, in sorted module order.

    Raises ValueError naming ``name`` and the key for anything that is not a LoRA down/up
    weight (biases, DoRA magnitudes, kohya ``.alpha`` keys) or an A without its B.
    """
    a_keys: dict[str, str] = {}
    b_keys: dict[str, str] = {}
    for key in state:
        for a_suffix, b_suffix in _KEY_STYLES:
            if key.endswith(a_suffix):
                a_keys[key[: -len(a_suffix)]] = key
                break
            if key.endswith(b_suffix):
                b_keys[key[: -len(b_suffix)]] = key
                break
        else:
            styles = ", ".join(f"{a}/{b}" for a, b in _KEY_STYLES)
            msg = (
                f"{name}: key {key!r} is not a LoRA down/up weight (expected one of {styles}); "
                "LoRA biases, DoRA and kohya-style alpha keys cannot be merged: export the "
                "expert with selma_ray.training.lora.save_lora"
            )
            raise ValueError(msg)
    unpaired = sorted(set(a_keys) ^ set(b_keys))
    if unpaired:
        msg = f"{name}: LoRA module(s) without both down and up weights: {unpaired[:3]}"
        raise ValueError(msg)
    if not a_keys:
        msg = f"{name}: the state dict holds no LoRA weights"
        raise ValueError(msg)
    return {m: (a_keys[m], b_keys[m]) for m in sorted(a_keys)}


def module_ranks(state: Mapping[str, Tensor]) -> dict[str, int]:
    """``{module: rank}`` (rows of each A)."""
    return {m: int(state[a].shape[0]) for m, (a, _) in lora_modules(state).items()}


def module_alphas(alpha: Alpha, modules: Sequence[str], name: str = "alpha") -> dict[str, float]:
    """``{module: alpha}`` for a per-expert alpha given as a number or a mapping."""
    if isinstance(alpha, Mapping):
        missing = [m for m in modules if m not in alpha]
        if missing:
            msg = f"{name}: no alpha for module(s) {missing[:3]}; give one per LoRA module"
            raise ValueError(msg)
        out = {m: float(alpha[m]) for m in modules}
    else:
        out = dict.fromkeys(modules, float(alpha))
    bad = {m: a for m, a in out.items() if not math.isfinite(a) or a <= 0}
    if bad:
        first = next(iter(bad.items()))
        msg = f"{name}: LoRA alpha must be a positive number, got {first[1]} for {first[0]}"
        raise ValueError(msg)
    return out


def _as_2d(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _factors(
    state: Mapping[str, Tensor], keys: tuple[str, str], device: torch.device | None
) -> tuple[Tensor, Tensor]:
    """(A as r x in_flat, B as out x r), float32 on ``device``."""
    a, b = state[keys[0]], state[keys[1]]
    return (
        _as_2d(a).to(device=device, dtype=torch.float32),
        _as_2d(b).to(device=device, dtype=torch.float32),
    )


def delta_weights(state: Mapping[str, Tensor], alpha: Alpha) -> dict[str, Tensor]:
    """``{module: scale * B @ A}`` in the base weight's shape (float32), ``scale = alpha / r``."""
    modules = lora_modules(state)
    alphas = module_alphas(alpha, list(modules))
    out: dict[str, Tensor] = {}
    for m, keys in modules.items():
        a, b = _factors(state, keys, None)
        scale = alphas[m] / a.shape[0]
        out[m] = (scale * (b @ a)).reshape(b.shape[0], *state[keys[0]].shape[1:])
    return out


# --------------------------------------------------------------------------- validation


def _expert_names(n: int, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [f"expert {i}" for i in range(n)]
    if len(names) != n:
        msg = f"names: {len(names)} names for {n} experts"
        raise ValueError(msg)
    return [str(x) for x in names]


def resolve_weights(
    weights: Sequence[float] | None,
    n: int,
    names: Sequence[str] | None = None,
    field_name: str = "weights",
) -> list[float]:
    """The merge weights: one finite number per expert, or exactly ``1/N`` each when None.

    (SELMA's released merge script computes ``1 / len(model_id)``, the length of a model id
    *string*, by mistake; the paper's merge is the average, so the default here is ``1/N``.)
    """
    order = ", ".join(_expert_names(n, names))
    if weights is None:
        return [1.0 / n] * n
    weights = list(weights)
    if len(weights) != n:
        msg = (
            f"{field_name} has {len(weights)} value(s) but there are {n} experts (in order: "
            f"{order}); give one weight per expert, or leave {field_name} unset for 1/N each"
        )
        raise ValueError(msg)
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            msg = f"{field_name}[{i}] ({_expert_names(n, names)[i]}): expected a number, got {w!r}"
            raise ValueError(msg)
    return [float(w) for w in weights]


def validate_experts(
    states: Sequence[Mapping[str, Tensor]],
    alphas: Sequence[Alpha] | None = None,
    *,
    names: Sequence[str] | None = None,
    base_models: Sequence[str | None] | None = None,
) -> dict[str, tuple[str, str]]:
    """Check that the experts can be merged; return the first expert's ``{module: keys}``.

    Checks (each failure is a ValueError naming the experts at fault and the fix): at least one
    expert; one alpha per expert; the same base model (where known); the same LoRA modules; the
    same input and output shape per module. Ranks may differ (every method supports that).
    """
    if not states:
        msg = "no experts to merge: train at least one expert (the experts stage)"
        raise ValueError(msg)
    labels = _expert_names(len(states), names)
    if alphas is not None and len(alphas) != len(states):
        msg = f"alphas: {len(alphas)} alpha(s) for {len(states)} experts ({', '.join(labels)})"
        raise ValueError(msg)
    if base_models is not None:
        if len(base_models) != len(states):
            msg = f"base_models: {len(base_models)} entries for {len(states)} experts"
            raise ValueError(msg)
        known = {lab: b for lab, b in zip(labels, base_models, strict=True) if b is not None}
        if len(set(known.values())) > 1:
            detail = ", ".join(f"{lab}: {b!r}" for lab, b in known.items())
            msg = (
                f"the experts were trained on different base models ({detail}); merge only "
                "experts of one base model (retrain the others with the same train.base_model)"
            )
            raise ValueError(msg)
    mods = [lora_modules(s, lab) for s, lab in zip(states, labels, strict=True)]
    ref = set(mods[0])
    problems = []
    for lab, mm in zip(labels[1:], mods[1:], strict=True):
        missing, extra = sorted(ref - set(mm)), sorted(set(mm) - ref)
        if missing or extra:
            problems.append(
                f"{lab} lacks {len(missing)} module(s) {missing[:2]} and has {len(extra)} "
                f"other(s) {extra[:2]}"
            )
    if problems:
        msg = (
            f"the experts target different modules (compared with {labels[0]}): "
            + "; ".join(problems)
            + ". Merge experts trained with the same LoRA targets (train.text_encoder_lora)."
        )
        raise ValueError(msg)
    for m in mods[0]:
        shapes = {}
        for s, mm, lab in zip(states, mods, labels, strict=True):
            a, b = s[mm[m][0]], s[mm[m][1]]
            if a.shape[0] != b.shape[1] or a.dim() != b.dim():
                msg = (
                    f"{lab}: module {m} has A {tuple(a.shape)} and B {tuple(b.shape)}, "
                    "which do not form a LoRA (A: r x in, B: out x r)"
                )
                raise ValueError(msg)
            shapes[lab] = (tuple(b.shape[:1]), tuple(a.shape[1:]), tuple(b.shape[2:]))
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{lab}: out {o} in {i}" for lab, (o, i, _) in shapes.items())
            msg = (
                f"module {m} has different shapes across experts ({detail}); the experts "
                "adapt different base models"
            )
            raise ValueError(msg)
    if alphas is not None:
        for s, a, lab in zip(states, alphas, labels, strict=True):
            module_alphas(a, list(lora_modules(s)), name=f"alpha of {lab}")
    return mods[0]


# --------------------------------------------------------------------------- merging


@dataclass
class MergeReport:
    """What a merge did: the rank per module and, for SVD refactoring, what it lost."""

    method: str
    weights: list[float]
    ranks: dict[str, int] = field(default_factory=dict)
    #: ||target - merged||_F / ||target||_F per module (SVD methods; 0 for exact methods)
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


def _module_seed(seed: int, module: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(module.encode())) % (2**63 - 1)


def _task_merge(
    method: str, deltas: list[Tensor], weights: Tensor, density: float, seed: int, module: str
) -> Tensor:
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


def _truncated_svd(delta: Tensor, rank: int) -> tuple[Tensor, Tensor, float]:
    """(A, B, relative error) with ``B @ A`` the best rank-``rank`` approximation of ``delta``."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, s.shape[0])
    total = float(s.square().sum())
    lost = float(s[k:].square().sum())
    err = math.sqrt(lost / total) if total > 0 else 0.0
    return vh[:k].contiguous(), (u[:, :k] * s[:k]).contiguous(), err


def _lowrank_svd(a: Tensor, b: Tensor, rank: int) -> tuple[Tensor, Tensor, float]:
    """Truncated SVD of ``b @ a`` (``b``: out x R, ``a``: R x in) without forming it densely."""
    big_r = a.shape[0]
    if big_r >= min(b.shape[0], a.shape[1]):
        return _truncated_svd(b @ a, rank)
    qb, rb = torch.linalg.qr(b)  # out x R, R x R
    qa, ra = torch.linalg.qr(a.T)  # in x R, R x R
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    k = min(rank, s.shape[0])
    total = float(s.square().sum())
    lost = float(s[k:].square().sum())
    err = math.sqrt(lost / total) if total > 0 else 0.0
    new_b = (qb @ u[:, :k]) * s[:k]
    new_a = vh[:k] @ qa.T
    return new_a.contiguous(), new_b.contiguous(), err


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
    device: str | torch.device | None = None,
) -> tuple[dict[str, Tensor], Alpha, MergeReport]:
    """:func:`merge_loras`, plus a :class:`MergeReport` (ranks, SVD truncation error)."""
    if method not in METHODS:
        msg = f"merge method {method!r} is unknown; choose one of {list(METHODS)} (merge.method)"
        raise ValueError(msg)
    if not 0 < density <= 1:
        msg = f"density must be in (0, 1], got {density} (merge.density)"
        raise ValueError(msg)
    if svd_rank is not None and svd_rank < 1:
        msg = f"svd_rank must be >= 1, got {svd_rank} (merge.svd_rank)"
        raise ValueError(msg)
    modules = validate_experts(states, alphas, names=names)
    n = len(states)
    w = resolve_weights(weights, n, names)
    dev = torch.device(device) if device is not None else None
    per_expert = [lora_modules(s) for s in states]
    alpha_maps = [module_alphas(a, list(modules)) for a in alphas]
    out_dtype = states[0][next(iter(modules.values()))[0]].dtype
    if not out_dtype.is_floating_point:
        out_dtype = torch.float32
    merged: dict[str, Tensor] = {}
    report = MergeReport(method=method, weights=w)
    for m, (a_key, b_key) in modules.items():
        factors = [_factors(s, pm[m], dev) for s, pm in zip(states, per_expert, strict=True)]
        scales = [am[m] / fa.shape[0] for am, (fa, _) in zip(alpha_maps, factors, strict=True)]
        total_rank = sum(fa.shape[0] for fa, _ in factors)
        target = svd_rank if svd_rank is not None else total_rank
        err = 0.0
        if method in ("linear", "svd"):
            # exact: the stacked factors, weights and scales on the B side
            new_a = torch.cat([fa for fa, _ in factors], dim=0)
            new_b = torch.cat(
                [wi * si * fb for wi, si, (_, fb) in zip(w, scales, factors, strict=True)], dim=1
            )
            if method == "svd":
                new_a, new_b, err = _lowrank_svd(new_a, new_b, target)
        elif method == "cat":
            new_a = torch.cat(
                [fa * wi * si for wi, si, (fa, _) in zip(w, scales, factors, strict=True)], dim=0
            )
            new_b = torch.cat([fb for _, fb in factors], dim=1)
        else:
            deltas = [si * (fb @ fa) for si, (fa, fb) in zip(scales, factors, strict=True)]
            wt = torch.tensor(w, dtype=torch.float32, device=deltas[0].device)
            dense = _task_merge(method, deltas, wt, density, seed, m)
            new_a, new_b, err = _truncated_svd(dense, target)
        a_shape = states[0][a_key].shape
        b_shape = states[0][b_key].shape
        r = new_a.shape[0]
        merged[a_key] = new_a.reshape(r, *a_shape[1:]).to("cpu", out_dtype).contiguous()
        merged[b_key] = new_b.reshape(b_shape[0], r, *b_shape[2:]).to("cpu", out_dtype).contiguous()
        report.ranks[m] = r
        if method in ("svd", "ties", "dare_linear", "dare_ties"):
            report.relative_error[m] = err
    ranks = set(report.ranks.values())
    alpha: Alpha = (
        float(ranks.pop()) if len(ranks) == 1 else {m: float(r) for m, r in report.ranks.items()}
    )
    return merged, alpha, report


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
    """Merge LoRA experts into one LoRA; returns ``(state, alpha)`` with scale 1 everywhere.

    ``states``: diffusers-format LoRA state dicts; ``alphas``: each expert's alpha (number or
    ``{module: alpha}``); ``method``: one of :data:`METHODS` (see the module docstring);
    ``weights``: one per expert (default exactly ``1/N``); ``density``: kept fraction for ties /
    dare; ``svd_rank``: target rank of the SVD methods (default the sum of the experts' ranks,
    capped per module at ``min(out, in)``); ``seed``: DARE's random masks; ``names``: expert
    names for error messages; ``device``: where to compute (the result is on the CPU, in the
    first expert's dtype). The returned alpha is a number when every module has the same rank,
    else ``{module: rank}``.
    """
    merged, alpha, _ = merge_loras_with_report(
        states,
        alphas,
        method,
        weights,
        density,
        svd_rank,
        seed,
        names=names,
        device=device,
    )
    return merged, alpha


# --------------------------------------------------------------------------- files + metadata


def _split_component(module: str) -> tuple[str | None, str]:
    head, _, rest = module.partition(".")
    if head in _COMPONENTS and rest:
        return head, rest
    return None, module


def read_lora_bytes(
    data: bytes, name: str = "LoRA file"
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(state dict, safetensors __metadata__)`` of the bytes of a ``.safetensors`` file."""
    from safetensors.torch import load

    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        state = load(data)
    except Exception as e:  # any parse failure means: not a safetensors file
        msg = f"{name} is not a readable .safetensors file ({type(e).__name__}: {e})"
        raise ValueError(msg) from e
    metadata = header.get("__metadata__") or {}
    return state, {str(k): str(v) for k, v in metadata.items()}


def alpha_from_metadata(
    state: Mapping[str, Tensor], metadata: Mapping[str, str], name: str = "LoRA file"
) -> Alpha | None:
    """The per-module alpha diffusers will use when loading this file, or None without metadata.

    Reads the ``lora_adapter_metadata`` that ``save_lora_weights(..., *_lora_adapter_metadata=)``
    writes (``<component>.lora_alpha``, ``.alpha_pattern``, ``.use_rslora``...). A number when
    every module has the same alpha. rsLoRA's ``alpha / sqrt(r)`` is folded into the alpha.
    """
    from peft.utils.other import get_pattern_key

    raw = metadata.get(_METADATA_KEY)
    if not raw:
        return None
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError as e:
        msg = f"{name}: its {_METADATA_KEY} metadata is not valid JSON ({e})"
        raise ValueError(msg) from e
    per_component: dict[str | None, dict[str, Any]] = collections.defaultdict(dict)
    for key, value in flat.items():
        comp, rest = _split_component(key)
        per_component[comp][rest] = value
    out: dict[str, float] = {}
    for m, r in module_ranks(state).items():
        comp, local = _split_component(m)
        cfg = per_component.get(comp)
        if not cfg:
            out[m] = float(r)  # diffusers' convention without metadata: scale 1
            continue
        if cfg.get("use_dora"):
            msg = f"{name}: DoRA adapters ({comp}.use_dora) cannot be merged"
            raise ValueError(msg)
        pattern = cfg.get("alpha_pattern") or {}
        key = get_pattern_key(list(pattern), local)
        alpha = float(pattern.get(key, cfg.get("lora_alpha", 8)))
        if cfg.get("use_rslora"):
            alpha = alpha * r / math.sqrt(r)
        out[m] = alpha
    values = set(out.values())
    return values.pop() if len(values) == 1 else out


def lora_metadata(
    state: Mapping[str, Tensor], alpha: Alpha, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """safetensors ``__metadata__`` so that ``pipe.load_lora_weights`` uses ``alpha`` exactly.

    One PEFT ``LoraConfig`` per component (``unet``, ``text_encoder``...): the most common rank
    and alpha, with ``rank_pattern`` / ``alpha_pattern`` for the modules that differ, and the
    exact module paths as ``target_modules``. ``extra`` entries are added as they are.
    """
    ranks = module_ranks(state)
    alphas = module_alphas(alpha, list(ranks))
    groups: dict[str | None, dict[str, tuple[int, float]]] = collections.defaultdict(dict)
    for m, r in ranks.items():
        comp, local = _split_component(m)
        groups[comp][local] = (r, alphas[m])
    flat: dict[str, Any] = {}
    for comp, mods in groups.items():
        if comp is None:
            continue  # keys without a component prefix: diffusers cannot place them anyway
        r = collections.Counter(v[0] for v in mods.values()).most_common(1)[0][0]
        a = collections.Counter(v[1] for v in mods.values()).most_common(1)[0][0]
        config = {
            "r": r,
            "lora_alpha": a,
            "rank_pattern": {k: v[0] for k, v in mods.items() if v[0] != r},
            "alpha_pattern": {k: v[1] for k, v in mods.items() if v[1] != a},
            "target_modules": sorted(mods),
            "lora_dropout": 0.0,
            "bias": "none",
            "use_dora": False,
            "use_rslora": False,
            "init_lora_weights": True,
            "peft_type": "LORA",
        }
        flat.update({f"{comp}.{k}": v for k, v in config.items()})
    out = {"format": "pt"}
    if flat:
        out[_METADATA_KEY] = json.dumps(flat, indent=2, sort_keys=True)
    out.update({str(k): str(v) for k, v in (extra or {}).items()})
    return out


def lora_file_bytes(
    state: Mapping[str, Tensor], alpha: Alpha, extra: Mapping[str, str] | None = None
) -> bytes:
    """The bytes of a ``pytorch_lora_weights.safetensors`` with :func:`lora_metadata`."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return save(tensors, metadata=lora_metadata(state, alpha, extra))
