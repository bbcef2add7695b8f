"""Validation of a merge, in one place: :func:`validate_merge` checks the options and the experts
and returns a :class:`MergePlan`, from which :func:`~selma_ray.merging.ops.merge_planned`
computes without checking again.

Every failure is a ValueError naming the expert or the option at fault and the fix; a bad
option (method, weights, density, svd_rank) is a
:class:`~selma_ray.merging.methods.MergeOptionError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from selma_ray.merging.methods import MergeOptionError, check_options
from selma_ray.merging.state import Alpha, lora_modules, module_alphas

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["MergePlan", "resolve_weights", "validate_experts", "validate_merge"]

#: ``{module: (A key, B key)}`` of one expert.
Keys = dict[str, tuple[str, str]]


@dataclass(frozen=True)
class MergePlan:
    """A validated merge: the options, and per expert its module keys and module alphas."""

    method: str
    weights: list[float]
    density: float
    svd_rank: int | None
    keys: list[Keys]
    alphas: list[dict[str, float]]

    @property
    def modules(self) -> Keys:
        """The first expert's ``{module: (A key, B key)}`` (every expert has the same modules)."""
        return self.keys[0]


def _labels(n: int, names: Sequence[str] | None) -> list[str]:
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
    Raises :class:`MergeOptionError` naming ``field_name`` and the experts in order.
    """
    labels = _labels(n, names)
    if weights is None:
        return [1.0 / n] * n
    weights = list(weights)
    if len(weights) != n:
        msg = (
            f"{field_name} has {len(weights)} value(s) but there are {n} experts (in order: "
            f"{', '.join(labels)}); give one weight per expert, or leave {field_name} unset "
            "for 1/N each"
        )
        raise MergeOptionError(msg)
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            msg = f"{field_name}[{i}] ({labels[i]}): expected a number, got {w!r}"
            raise MergeOptionError(msg)
    return [float(w) for w in weights]


def _check_base_models(labels: list[str], base_models: Sequence[str | None]) -> None:
    if len(base_models) != len(labels):
        msg = f"base_models: {len(base_models)} entries for {len(labels)} experts"
        raise ValueError(msg)
    known = {lab: b for lab, b in zip(labels, base_models, strict=True) if b is not None}
    if len(set(known.values())) > 1:
        detail = ", ".join(f"{lab}: {b!r}" for lab, b in known.items())
        msg = (
            f"the experts were trained on different base models ({detail}); merge only "
            "experts of one base model (retrain the others with the same train.base_model)"
        )
        raise ValueError(msg)


def _check_same_modules(labels: list[str], keys: list[Keys]) -> None:
    ref = set(keys[0])
    problems = []
    for lab, mm in zip(labels[1:], keys[1:], strict=True):
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


def _check_shapes(
    states: Sequence[Mapping[str, Tensor]], labels: list[str], keys: list[Keys]
) -> None:
    for m in keys[0]:
        shapes = {}
        for s, mm, lab in zip(states, keys, labels, strict=True):
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


def _check_experts(
    states: Sequence[Mapping[str, Tensor]],
    alphas: Sequence[Alpha] | None,
    labels: list[str],
    base_models: Sequence[str | None] | None,
) -> tuple[list[Keys], list[dict[str, float]]]:
    """Per expert, its module keys and (when ``alphas`` is given) its module alphas."""
    if alphas is not None and len(alphas) != len(states):
        msg = f"alphas: {len(alphas)} alpha(s) for {len(states)} experts ({', '.join(labels)})"
        raise ValueError(msg)
    if base_models is not None:
        _check_base_models(labels, base_models)
    keys = [lora_modules(s, lab) for s, lab in zip(states, labels, strict=True)]
    _check_same_modules(labels, keys)
    _check_shapes(states, labels, keys)
    if alphas is None:
        return keys, []
    return keys, [
        module_alphas(a, list(mm), name=f"alpha of {lab}")
        for a, mm, lab in zip(alphas, keys, labels, strict=True)
    ]


def _require_experts(states: Sequence[Mapping[str, Tensor]]) -> None:
    if not states:
        msg = "no experts to merge: train at least one expert (the experts stage)"
        raise ValueError(msg)


def validate_experts(
    states: Sequence[Mapping[str, Tensor]],
    alphas: Sequence[Alpha] | None = None,
    *,
    names: Sequence[str] | None = None,
    base_models: Sequence[str | None] | None = None,
) -> Keys:
    """Check that the experts can be merged; return the first expert's ``{module: keys}``.

    Checks: at least one expert; one alpha per expert, each positive (when ``alphas`` is given);
    the same base model (where known); the same LoRA modules; the same input and output shape
    per module. Ranks may differ (every method supports that).
    """
    _require_experts(states)
    keys, _ = _check_experts(states, alphas, _labels(len(states), names), base_models)
    return keys[0]


def validate_merge(
    states: Sequence[Mapping[str, Tensor]],
    alphas: Sequence[Alpha],
    method: str = "linear",
    weights: Sequence[float] | None = None,
    density: float = 0.5,
    svd_rank: int | None = None,
    *,
    names: Sequence[str] | None = None,
    base_models: Sequence[str | None] | None = None,
    weights_field: str = "weights",
) -> MergePlan:
    """Everything a merge checks, in this order: the options (:func:`check_options`), the
    experts (:func:`validate_experts`, with their alphas) and the weights
    (:func:`resolve_weights`, reported as ``weights_field``)."""
    check_options(method, density, svd_rank)
    _require_experts(states)
    labels = _labels(len(states), names)
    keys, alpha_maps = _check_experts(states, alphas, labels, base_models)
    w = resolve_weights(weights, len(states), labels, weights_field)
    return MergePlan(method, w, density, svd_rank, keys, alpha_maps)
