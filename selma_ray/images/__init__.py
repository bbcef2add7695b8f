"""SELMA stage 2 (images): prompts -> seeded diffusion images in one imagefolder per skill.

``generate`` holds the Ray-free core (seeds, row plan, the diffusers writer); ``stage`` runs the
stage over a run directory through the Ray actor pool in ``selma_ray.distributed.images``.
"""

from selma_ray.images.generate import ImageGenerator, image_seed, plan_rows
from selma_ray.images.stage import run_images_stage

__all__ = ["ImageGenerator", "image_seed", "plan_rows", "run_images_stage"]
