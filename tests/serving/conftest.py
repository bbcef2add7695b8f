"""Serving fixtures: a small servable run directory (tiny base model, 2 random experts, merged)."""

from __future__ import annotations

import pytest

SKILLS = ("countbench", "whoops")


@pytest.fixture(scope="session")
def served_run_dir(tiny_models, tmp_path_factory):
    """A run dir with config.yaml, experts/{countbench,whoops} and merged/, random LoRAs.

    Each LoRA is written with ``save_lora`` (safetensors, diffusers format) and differs from
    the others, so every variant draws a different image for the same seed.
    """
    from selma_ray.serving.model import make_random_run_dir

    path = tmp_path_factory.mktemp("served-run") / "run"
    spec = make_random_run_dir(str(path), base_model="tiny:sd", skills=SKILLS, seed=1)
    return {"path": str(path), "spec": spec}
