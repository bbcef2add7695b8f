"""SELMA stage 2 (images): prompts -> seeded diffusion images in one imagefolder per skill.

``generate`` holds the core (seeds, row plan, the diffusers writer); ``stage`` runs the stage
over a run directory on the executor it is handed (Ray Data actors, or in-process).

Names are re-exported lazily, so an image actor that imports the core does not import stage 1
(the prompts reader and its ROUGE-L dependencies).
"""

from __future__ import annotations

from selma_ray._lazy import lazy_exports

_EXPORTS = {
    "ImageGenerator": "generate",
    "image_seed": "generate",
    "plan_rows": "generate",
    "draw_rows": "stage",
    "run_images_stage": "stage",
}

__all__ = ["ImageGenerator", "draw_rows", "image_seed", "plan_rows", "run_images_stage"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
