"""images.safety_checker: pipelines load without their checker by default; with it, stage 2
drops the images it flags (markers, not black images), counts them and never redraws them."""

from __future__ import annotations

import logging

import pytest

from selma_ray import layout
from selma_ray.config import ImagesConfig, load_config
from selma_ray.execution import InProcessExecutor
from selma_ray.images import generate
from selma_ray.images.stage import run_images_stage
from selma_ray.storage import RunDir

SKILLS = ("coco", "whoops")
N_PROMPTS = 3


@pytest.fixture
def checker(monkeypatch, tiny_models, install_flagging_checker):
    """A flagging checker in every pipeline loaded with ``safety_checker=True`` (the tiny
    pipeline ships none)."""
    return install_flagging_checker(monkeypatch)


class SpyExecutor(InProcessExecutor):
    """The in-process executor, recording every row it maps."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def map_rows(self, rows, fn_cls, **kw):
        self.rows.extend(rows)
        return super().map_rows(rows, fn_cls, **kw)


def _cfg(*extra: str):
    return load_config(
        overrides=[
            f"prompts.skills=[{', '.join(SKILLS)}]",
            "images.steps=2",
            "images.rows_per_task=2",
            *extra,
        ]
    )


def _write_prompts(rd: RunDir) -> None:
    for skill in SKILLS:
        rows = [
            {"id": f"{skill}-{i:05d}", "skill": skill, "prompt": f"a red cat {i} {skill}"}
            for i in range(N_PROMPTS)
        ]
        rd.write_jsonl(rows, *layout.prompts_file(skill))


def test_pipelines_load_without_their_safety_checker_unless_asked():
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )

    assert ImagesConfig().safety_checker is False
    dropped = generate.load_pipeline("tiny:sd15", device="cpu", safety_checker=False)
    assert dropped.safety_checker is None
    kept = generate.load_pipeline("tiny:sd15", device="cpu", safety_checker=True)
    assert type(kept.safety_checker) is StableDiffusionSafetyChecker
    assert kept.config.requires_safety_checker is True
    # a stage's drawer loads with images.safety_checker (off by default)
    drawer = generate.ImageGenerator(ImagesConfig(model="tiny:sd15", steps=1), "memory://x")
    assert drawer.pipe.safety_checker is None
    # a pipeline without a checker loads either way (SDXL's has no such component)
    assert generate.load_pipeline("tiny:sd", device="cpu", safety_checker=False).unet is not None


@pytest.mark.parametrize("batched", [False, True], ids=["exact", "batched"])
def test_flagged_images_are_dropped_counted_and_never_drawn_again(
    checker, tmp_path, caplog, batched
):
    rd = RunDir(str(tmp_path / "run"))
    _write_prompts(rd)
    mode = ["images.exact_per_image=false", "images.images_per_call=2"] if batched else []
    cfg = _cfg("images.safety_checker=true", *mode)
    with caplog.at_level(logging.WARNING, logger="selma_ray.images.stage"):
        counts = run_images_stage(cfg, rd, InProcessExecutor())
    planned = {s: {f"{s}-{i:05d}_0.png" for i in range(N_PROMPTS)} for s in SKILLS}
    flagged = {s: {n[: -len(layout.FLAGGED_SUFFIX)] for n in rd.listdir(*layout.images_dir(s))
                   if n.endswith(layout.FLAGGED_SUFFIX)} for s in SKILLS}  # fmt: skip
    kept = {s: {n for n in rd.listdir(*layout.images_dir(s)) if n.endswith(".png")}
            for s in SKILLS}  # fmt: skip
    n_flagged = sum(map(len, flagged.values()))
    assert 0 < n_flagged < 2 * N_PROMPTS
    if not batched:  # batched, the checker also sees the copies padding a short call
        assert n_flagged == checker.flagged
    stats = rd.read_json(*layout.images_stats())
    assert stats["safety_checker"] is True
    for skill in SKILLS:
        assert flagged[skill] | kept[skill] == planned[skill]
        assert not flagged[skill] & kept[skill]  # a flagged image is not written (not black)
        meta = rd.read_jsonl(*layout.images_metadata(skill))
        assert {m["file_name"] for m in meta} == kept[skill]
        assert counts[skill] == len(kept[skill]) == stats["skills"][skill]["images"]
        assert stats["skills"][skill]["nsfw_flagged"] == len(flagged[skill])
    lines = [r.getMessage() for r in caplog.records if "safety checker" in r.getMessage()]
    assert lines == [
        f"images: the safety checker flagged {n_flagged} of {2 * N_PROMPTS} images drawn; "
        "they are dropped (not trained on; counted as nsfw_flagged in images/stats.json)"
    ]

    # a rerun (a resume) draws nothing: the markers stand for the dropped images
    spy, shown = SpyExecutor(), checker.shown
    assert run_images_stage(cfg, rd, spy) == counts
    assert spy.rows == [] and checker.shown == shown
    assert rd.read_json(*layout.images_stats())["skills"]["coco"]["nsfw_flagged"] == len(
        flagged["coco"]
    )

    # with the checker off, the dropped images are drawn and their markers go
    run_images_stage(_cfg(*mode), rd, InProcessExecutor())
    for skill in SKILLS:
        names = set(rd.listdir(*layout.images_dir(skill)))
        assert planned[skill] <= names and not any(n.endswith(layout.FLAGGED_SUFFIX) for n in names)
        assert len(rd.read_jsonl(*layout.images_metadata(skill))) == N_PROMPTS
    assert checker.shown == shown  # loaded without the checker
