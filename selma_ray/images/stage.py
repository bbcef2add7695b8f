"""SELMA stage 2: every skill's prompts drawn into a Hugging Face imagefolder per skill.

Plan: one row per (prompt, image index), seeded from (run seed, prompt id, index). Rows whose
image already exists are skipped (resume: one listing per skill folder), the rest go to the
executor the stage is handed (``images.pool``), whose actors write each image atomically. Then,
per skill, ``images/<skill>/metadata.jsonl`` (``file_name, text, skill, prompt_id,
image_index, seed, model``, sorted by prompt id and index) is written from the plan, and
``images/stats.json`` with the counts. The stage ends by checking that each skill folder holds
exactly the planned image files, naming any that are missing or unexpected.

With ``images.safety_checker`` on, an image the pipeline's checker flags is dropped: its
drawer writes a marker instead (:func:`selma_ray.layout.flagged_marker`), so a resume does not
draw it again; the plan, the metadata and the check then leave it out, ``images/stats.json``
counts it per skill (``nsfw_flagged``) and the stage logs one warning line.

A skill with ``data`` (existing image-text pairs) is imported instead of drawn
(:func:`selma_ray.images.pairs.import_skill`): same folder, same metadata columns.

Outputs load with ``datasets.load_dataset("imagefolder", data_dir=<run dir>/images/<skill>)``.
The model recorded is ``images.model`` (which may differ from ``train.base_model``:
weak-to-strong).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from selma_ray.config import ActorPool, ImagesConfig, SelmaConfig
from selma_ray.execution import Executor
from selma_ray.images.generate import (
    IMAGE_SUFFIXES,
    METADATA_COLUMNS,
    ImageGenerator,
    pack_groups,
    plan_rows,
    rows_to_draw,
)
from selma_ray.layout import (
    flagged_image,
    flagged_marker,
    images_dir,
    images_metadata,
    images_stats,
    prompts_file,
)
from selma_ray.prompts.stage import read_prompts
from selma_ray.storage import RunDir

log = logging.getLogger(__name__)

TMP_MARKER = ".tmp-"  # RunDir.write_bytes temp files: '<name>.tmp-<hex>'


class ImagesIncompleteError(RuntimeError):
    """The image folders do not hold exactly the planned images."""


def skill_names(cfg: SelmaConfig) -> list[str]:
    """The skills whose prompts stage 2 draws (a skill with ``data`` pairs is imported
    instead; one with ``data.use: captions`` has its captions as prompts, drawn here)."""
    return [s.name for s in cfg.prompts.skills if not s.imports_pairs]


def load_prompt_rows(run_dir: RunDir, skill: str) -> list[dict[str, Any]]:
    """A skill's prompts; errors name the skill and the fix when there are none."""
    if not run_dir.exists(*prompts_file(skill)):
        msg = (
            f"images: skill {skill!r} has no prompts ({run_dir.url(*prompts_file(skill))}"
            " is missing); run the prompts stage first"
        )
        raise FileNotFoundError(msg)
    rows = read_prompts(run_dir, skill)
    if not rows:
        msg = (
            f"images: skill {skill!r} has no prompts ({'/'.join(prompts_file(skill))} is empty); "
            "rerun the prompts stage (--redo prompts) or drop the skill from prompts.skills"
        )
        raise ValueError(msg)
    return rows


def plan(cfg: SelmaConfig, run_dir: RunDir) -> dict[str, list[dict[str, Any]]]:
    """Per skill, the planned image rows (see :func:`~selma_ray.images.generate.plan_rows`)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for skill in skill_names(cfg):
        rows = plan_rows(
            load_prompt_rows(run_dir, skill),
            cfg.images.images_per_prompt,
            cfg.seed,
            cfg.images.image_format,
        )
        bad = sorted({r["skill"] for r in rows} - {skill})
        if bad:
            msg = f"images: prompts/{skill}.jsonl holds rows of other skills {bad}"
            raise ValueError(msg)
        out[skill] = rows
    return out


def list_skill_dir(run_dir: RunDir, skill: str) -> tuple[set[str], list[str]]:
    """(image file names, leftover temp files) in ``images/<skill>``; one listing."""
    names = run_dir.listdir(*images_dir(skill))
    images = {n for n in names if n.endswith(IMAGE_SUFFIXES) and TMP_MARKER not in n}
    temps = [n for n in names if TMP_MARKER in n]
    return images, temps


def list_flagged(run_dir: RunDir, skill: str) -> set[str]:
    """File names of the images in ``images/<skill>`` that have a safety-checker marker."""
    names = (flagged_image(n) for n in run_dir.listdir(*images_dir(skill)))
    return {n for n in names if n is not None}


def _clean_temps(run_dir: RunDir, skill: str, temps: list[str]) -> None:
    """Remove temp files left by writers killed mid-write (never a finished image)."""
    for name in temps:
        try:
            run_dir.remove(*images_dir(skill, name))
        except FileNotFoundError:  # pragma: no cover - removed concurrently
            pass


def metadata_rows(rows: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """Imagefolder metadata lines for planned rows, sorted by (prompt_id, image_index)."""
    ordered = sorted(rows, key=lambda r: (r["prompt_id"], r["image_index"]))
    return [
        dict(
            zip(
                METADATA_COLUMNS,
                (
                    r["file_name"],
                    r["prompt"],
                    r["skill"],
                    r["prompt_id"],
                    r["image_index"],
                    r["seed"],
                    model,
                ),
                strict=True,
            )
        )
        for r in ordered
    ]


def verify(run_dir: RunDir, planned: dict[str, list[dict[str, Any]]]) -> None:
    """Raise naming the missing / unexpected image files unless each folder matches its plan."""
    problems: list[str] = []
    for skill, rows in planned.items():
        present, _ = list_skill_dir(run_dir, skill)
        wanted = {r["file_name"] for r in rows}
        missing = sorted(wanted - present)
        extra = sorted(present - wanted)
        if missing:
            problems.append(f"{skill}: {len(missing)} missing: {_names(missing)}")
        if extra:
            problems.append(f"{skill}: {len(extra)} unexpected: {_names(extra)}")
    if problems:
        lines = "\n  ".join(problems)
        msg = (
            f"images in {run_dir.url(*images_dir())} do not match the plan:\n  {lines}\n"
            "Rerun the images stage to draw missing images; remove unexpected files (or use "
            "--redo images)."
        )
        raise ImagesIncompleteError(msg)


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit})" if len(names) > limit else "")


def run_images_stage(cfg: SelmaConfig, run_dir: RunDir, executor: Executor) -> dict[str, Any]:
    """Draw every planned image not yet on storage (import the skills with ``data``), write
    metadata + stats; counts per skill."""
    from selma_ray.images.pairs import import_skill

    t0 = time.perf_counter()
    imported = {
        s.name: import_skill(run_dir, s.name, s.data)
        for s in cfg.prompts.skills
        if s.imports_pairs and s.data
    }
    planned = plan(cfg, run_dir)
    todo: list[dict[str, Any]] = []
    existing: dict[str, int] = {}
    checker = cfg.images.safety_checker
    for skill, rows in planned.items():
        present, temps = list_skill_dir(run_dir, skill)
        _clean_temps(run_dir, skill, temps)
        existing[skill] = sum(r["file_name"] in present for r in rows)
        done = (present | list_flagged(run_dir, skill)) if checker else present  # dropped: done
        # batched: whole groups of the batch plan, so a resumed image keeps its batch position
        todo.extend(rows_to_draw(rows, lambda r, have=done: r["file_name"] in have, cfg.images))
    n_planned = sum(len(r) for r in planned.values())
    log.info(
        "images: %d planned, %d already drawn, %d to draw",
        n_planned,
        sum(existing.values()),
        n_planned - sum(existing.values()),
    )
    written: dict[str, int] = defaultdict(int)
    flagged_now = 0
    truncated = 0
    t_draw = time.perf_counter()
    if todo:
        results = draw_rows(
            todo, cfg.images, run_dir.url(*images_dir()), executor, cache_dir=cfg.storage.cache_dir
        )
        for r in results:
            written[r["skill"]] += bool(r["written"])
            flagged_now += bool(r.get("nsfw_flagged"))
            truncated += bool(r.get("truncated"))
    if truncated:  # one line for the stage, not diffusers' warning per prompt
        log.warning(
            "images: %d of %d prompts drawn were longer than the text encoder's token limit "
            "and were truncated (only their first tokens shaped the image)",
            truncated,
            sum(written.values()),
        )
    if flagged_now:  # one line for the stage
        log.warning(
            "images: the safety checker flagged %d of %d images drawn; they are dropped (not "
            "trained on; counted as nsfw_flagged in images/stats.json)",
            flagged_now,
            flagged_now + sum(written.values()),
        )
    draw_seconds = time.perf_counter() - t_draw
    dropped: dict[str, set[str]] = {}
    for skill, rows in planned.items():  # a killed writer may have left temp files behind
        images, temps = list_skill_dir(run_dir, skill)
        _clean_temps(run_dir, skill, temps)
        markers = list_flagged(run_dir, skill)
        if not checker:  # markers of an earlier run with the checker: those images are drawn
            for name in markers:
                run_dir.remove(*images_dir(skill, flagged_marker(name)))
            markers = set()
        dropped[skill] = {r["file_name"] for r in rows} & (markers - images)
    kept = {
        skill: [r for r in rows if r["file_name"] not in dropped[skill]]
        for skill, rows in planned.items()
    }
    verify(run_dir, kept)
    for skill, rows in kept.items():
        run_dir.write_jsonl(metadata_rows(rows, cfg.images.model), *images_metadata(skill))
    counts = {skill: len(rows) for skill, rows in kept.items()}
    counts.update({skill: info["pairs"] for skill, info in imported.items()})
    stats = {
        "model": cfg.images.model,
        "images_per_prompt": cfg.images.images_per_prompt,
        "resolution": cfg.images.resolution,
        "steps": cfg.images.steps,
        "guidance_scale": cfg.images.guidance_scale,
        "image_format": cfg.images.image_format,
        "exact_per_image": cfg.images.exact_per_image,
        "safety_checker": checker,
        "skills": {
            skill: {
                "prompts": len({r["prompt_id"] for r in rows}),
                "images": len(kept[skill]),
                "drawn_now": written.get(skill, 0),
                "already_present": existing[skill],
                # dropped by the safety checker (counted while it runs: none can be without)
                **({"nsfw_flagged": len(dropped[skill])} if checker else {}),
            }
            for skill, rows in planned.items()
        },
        "imported": imported,
        "truncated_prompts": truncated,
        "draw_seconds": round(draw_seconds, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    run_dir.write_json(stats, *images_stats())
    return counts


def draw_rows(
    rows: list[dict[str, Any]],
    cfg: ImagesConfig,
    out_uri: str,
    executor: Executor,
    *,
    cache_dir: str | None = None,
    pool: ActorPool | None = None,
    generator_cls: type = ImageGenerator,
    generator_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Draw ``rows`` (from :func:`~selma_ray.images.generate.plan_rows`) into ``out_uri``.

    One result row per input row (metadata + ``written``: False when the image was already
    there). Every task is one whole batch of at most ``cfg.rows_per_task`` rows, and the pool
    (``pool``, default ``cfg.pool``) starts with as many actors as there are tasks, so a small
    input is spread over every actor. ``generator_cls`` (an :class:`ImageGenerator` subclass,
    e.g. the evaluation's LoRA-switching one) takes ``generator_kwargs`` on top of the usual
    constructor arguments. ``out_uri`` must be visible from wherever the executor runs.

    Batched (``exact_per_image`` off): the rows go as whole groups of the batch plan (their
    ``batch`` tags, else :func:`~selma_ray.images.generate.batch_plan` of them), one packed row
    per pipeline call, ``rows_per_task // images_per_call`` calls per task.
    """
    rows_per_task = cfg.rows_per_task
    if not cfg.exact_per_image:
        rows = pack_groups(rows, cfg.images_per_call)
        rows_per_task = max(1, cfg.rows_per_task // cfg.images_per_call)
    return executor.map_rows(
        rows,
        generator_cls,
        fn_kwargs={
            "cfg": cfg,
            "out_uri": out_uri,
            "cache_dir": cache_dir,
            **(generator_kwargs or {}),
        },
        pool=pool or cfg.pool,
        rows_per_task=rows_per_task,
        whole_tasks=True,
    )
