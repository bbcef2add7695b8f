"""The model card (README.md) of a merged LoRA, written from its merge record (``merge_info``)."""

from __future__ import annotations

import os
from typing import Any

from selma_ray import layout
from selma_ray.merging.methods import DARE_METHODS

__all__ = ["model_card"]


def _is_hub_id(ref: str) -> bool:
    return (
        ref.count("/") == 1
        and not ref.startswith(("/", ".", "~"))
        and ":" not in ref
        and not os.path.exists(ref)
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _front_matter(base: str) -> str:
    front = ["---", "library_name: diffusers"]
    if _is_hub_id(base):
        front.append(f"base_model: {base}")
    front += ["tags:", "- text-to-image", "- diffusers", "- lora", "- selma", "- selma-ray", "---"]
    return "\n".join(front)


def _params(info: dict[str, Any]) -> str:
    params = [f"method `{info['method']}`"]
    if info.get("density") is not None:
        params.append(f"density {info['density']}")
    if info.get("svd_rank") is not None:
        params.append(f"SVD rank {info['svd_rank']} (capped per module at min(out, in))")
    if info["method"] in DARE_METHODS:
        params.append(f"seed {info['seed']}")
    return ", ".join(params)


def _fidelity(info: dict[str, Any]) -> str:
    merged, method = info["merged"], info["method"]
    if merged["exact"]:
        return "Its update equals the weighted sum of the experts' updates (exact)."
    what = "weighted sum" if method == "svd" else f"`{method}` merge"
    return (
        f"Its update is a rank-{merged['rank']} SVD approximation of the {what} of the "
        f"experts' updates (relative Frobenius error: mean "
        f"{merged['mean_relative_error']:.3g}, max {merged['max_relative_error']:.3g})."
    )


def _summary(info: dict[str, Any]) -> str:
    base, merged = str(info["base_model"]), info["merged"]
    skills = [e["skill"] for e in info["experts"]]
    return f"""# SELMA multi-skill LoRA: {", ".join(skills)}

A LoRA for `{base}` made by selma-ray with SELMA (skill-specific
expert learning and merging with auto-generated data): one LoRA expert was trained per skill on
auto-generated images, then the {len(skills)} experts were merged into this one LoRA
({_params(info)}).

- Base model: `{base}`
- Merged LoRA: rank {merged["rank"]}, alpha {_fmt(merged["alpha"])}, {merged["modules"]} modules
  (`{merged["file"]}`, sha256 `{merged["sha256"][:16]}...`)
- {_fidelity(info)}"""


def _experts_table(info: dict[str, Any]) -> str:
    rows = [
        "| skill | weight | rank | alpha | steps | selected step | best val loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in info["experts"]:
        alpha = e["alpha"] if not isinstance(e["alpha"], dict) else "per module"
        rows.append(
            f"| {e['skill']} | {_fmt(info['weights'][e['skill']])} | "
            f"{'/'.join(str(r) for r in e['ranks'])} | {_fmt(alpha)} | {_fmt(e['steps'])} | "
            f"{_fmt(e['selected_step'])} | {_fmt(e['best_val_loss'])} |"
        )
    return "\n".join(rows)


def _usage(base: str) -> str:
    if base.startswith("tiny:"):
        imports = "from selma_ray.models import resolve_model\n"
        base_expr = f'resolve_model("{base}")'
    else:
        imports, base_expr = "", f'"{base}"'
    merged_dir = "/".join(layout.merged_dir())
    return f"""## Use with diffusers

```python
import torch
from diffusers import DiffusionPipeline
{imports}
pipe = DiffusionPipeline.from_pretrained({base_expr}, torch_dtype=torch.float32)
pipe.load_lora_weights("path/to/{merged_dir}")  # the directory holding {layout.LORA_FILE}
image = pipe("a photo of three red apples on a wooden table").images[0]

# optional: bake the LoRA into the weights for faster inference
pipe.fuse_lora()
pipe.unload_lora_weights()
```

The file's metadata carries the adapter config (alpha = rank, scale 1): no extra scale is
needed. `load_lora_weights(..., adapter_name="selma")` then
`pipe.set_adapters(["selma"], adapter_weights=[s])` scales it by `s` if wanted.
"""


def _tiny_note(base: str) -> str:
    if not base.startswith("tiny:"):
        return ""
    return (
        f"\n`{base}` is a tiny, randomly initialised test model built by selma-ray "
        "(`resolve_model` builds it offline); its images are noise.\n"
    )


def _fused_section(info: dict[str, Any]) -> str:
    pipeline = info.get("fused_pipeline")
    if not pipeline:
        return ""
    return f"""
### Fused pipeline

`{pipeline}/` is the base pipeline with this LoRA fused into its weights
(float32); it loads without PEFT and without `load_lora_weights`:

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("path/to/{pipeline}")
```
"""


def model_card(info: dict[str, Any]) -> str:
    """The README.md of the merged LoRA (and of its fused pipeline) from its merge record."""
    base = str(info["base_model"])
    return (
        f"{_front_matter(base)}\n\n{_summary(info)}\n\n## Experts\n\n{_experts_table(info)}\n\n"
        f"{_usage(base)}{_tiny_note(base)}{_fused_section(info)}"
    )
