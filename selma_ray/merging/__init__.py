"""SELMA stage 4: merge the per-skill LoRA experts of a run into one multi-skill LoRA.

* :mod:`selma_ray.merging.methods`: :data:`METHODS`, the one list of merge methods (what the
  config, the CLI and the merge accept), and the option checks; imports no torch.
* :mod:`selma_ray.merging.state`: LoRA state dicts: modules, ranks, alphas, updates.
* :mod:`selma_ray.merging.validate`: :func:`validate_merge`, every check of a merge in one
  place, giving a :class:`MergePlan`.
* :mod:`selma_ray.merging.ops`: the merge math (pure functions over tensors, no I/O):
  :func:`merge_loras`, :func:`merge_loras_with_report`, :class:`MergeReport`.
* :mod:`selma_ray.merging.lora_io`: diffusers LoRA files as bytes, with their adapter metadata.
* :mod:`selma_ray.merging.stage`: :func:`merge_run` and :func:`run_merge_stage`, the stage over
  a run directory; :mod:`selma_ray.merging.fused` (:func:`export_fused`) and
  :mod:`selma_ray.merging.card` (:func:`model_card`) write the rest of its output.

Names are re-exported lazily so that importing this package does not import torch.
"""

from __future__ import annotations

from selma_ray._lazy import lazy_exports

_EXPORTS = {
    "DARE_METHODS": "methods",
    "DENSITY_METHODS": "methods",
    "EXACT_METHODS": "methods",
    "METHODS": "methods",
    "SVD_METHODS": "methods",
    "Method": "methods",
    "MergeOptionError": "methods",
    "check_options": "methods",
    "Alpha": "state",
    "delta_weights": "state",
    "lora_modules": "state",
    "module_alphas": "state",
    "module_ranks": "state",
    "MergePlan": "validate",
    "resolve_weights": "validate",
    "validate_experts": "validate",
    "validate_merge": "validate",
    "MergeReport": "ops",
    "merge_loras": "ops",
    "merge_loras_with_report": "ops",
    "merge_planned": "ops",
    "alpha_from_metadata": "lora_io",
    "lora_file_bytes": "lora_io",
    "lora_metadata": "lora_io",
    "read_lora_bytes": "lora_io",
    "Expert": "stage",
    "load_experts": "stage",
    "merge_info": "stage",
    "merge_run": "stage",
    "run_merge_stage": "stage",
    "export_fused": "fused",
    "model_card": "card",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
