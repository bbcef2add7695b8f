"""SELMA stage 5: generate benchmark images per model variant, answer, score, report.

Variants (``eval.variants``), all drawn with the experts' base model at their training
resolution (``train.base_model``, ``train.resolution``): ``base`` (no LoRA), ``expert-<skill>``
(each skill's expert LoRA), ``merged`` (the merged LoRA) and ``joint`` (the joint baseline:
one LoRA trained on every skill's pairs, with ``train.joint``). Items: DSG-1k (``max_items``,
round-robin over its categories in source order), TIFA (when ``eval.tifa_path``), and our skill
prompts held out from expert training (``held_out_prompts`` of each ``expert.json``, the
trainer's ``split_holdout(prompt ids, train.validation_fraction, seed)``; with a fraction of 0
every prompt is used, and the report says so), each limited to ``max_items`` (round-robin over
skills).

Every variant draws the same items with the same seeds (``image_seed(seed, item_id, 0)``) with
stage 2's drawing (:class:`LoraImageGenerator` swaps the LoRA per variant) on ``eval.pool``,
into ``eval/images/<variant>/<item_id>.png``; existing images are kept (resume). Every question
is answered by the VQA backend on the same pool (through the executor the stage is handed).
Each batch's answers are saved as they come (:class:`AnswerSaver`: one part file per batch under
``eval/answers/``), so a rerun after a kill or a failure asks only the questions with no saved
answer: key (variant, benchmark, item_id, question_id), for the same question text and the same
VQA settings (model, answer matcher); ``eval/stats.json`` says how many were asked now and how
many were answered before. Once every question has its answer, the part files of these VQA
settings are folded into one (written before the folded ones are removed; parts of other
settings stay). The answers are assembled into ``eval/answers.parquet`` (``item_id, question_id,
answer, free_answer, model`` = variant, ``benchmark``, ``question``: ``answer`` is what scoring
used, :func:`~selma_ray.evaluation.vqa.scored_answer`, and ``free_answer`` the VQA model's text
as it came back), which ``selma-ray evaluate rescore --answers eval/answers.parquet`` re-scores
to the same DSG-1k numbers (both use the ``reference`` rules, and the table's ``benchmark``
column makes it score the items asked, not all of DSG-1k). CLIPScore and the human-preference
scorers (``eval.preference_models``: PickScore, ImageReward, HPS v2;
:mod:`selma_ray.evaluation.preference`) score every variant's images on the same pool, one row
per (variant, item), saved as they come like the answers (:class:`ScoreSaver`, under
``eval/scores/``, keyed by variant, item, scorer and its model; folded the same way), so a rerun
scores only images with no saved score (``eval/stats.json``: ``scores``). With
``images.safety_checker`` on, an image the checker flags is kept as drawn (black) and listed per
variant (``nsfw_flagged``). Scores, CLIPScore and the preference scores go to
``eval/report.json``, and the HTML report is rebuilt
(:func:`selma_ray.evaluation.report.build_report`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections import defaultdict
from typing import Any

from selma_ray import layout
from selma_ray.config import ImagesConfig, SelmaConfig
from selma_ray.evaluation.benchmarks import (
    BenchmarkItem,
    TifaItem,
    load_dsg1k,
    load_skill_prompts,
    load_tifa,
)
from selma_ray.evaluation.saved import (
    ANSWER_COLUMNS,
    SCORE_COLUMNS,
    AnswerSaver,
    ScoreSaver,
    answer_key,
    answer_row,
    compact_answers,
    compact_scores,
    saved_answers,
    saved_scores,
    score_key,
    scorer_identity,
    vqa_identity,
)
from selma_ray.evaluation.scoring import REFERENCE_RULES, score_dsg, score_tifa
from selma_ray.execution import Executor, batch_to_rows, rows_to_batch
from selma_ray.images.generate import (
    ImageGenerator,
    image_seed,
    rows_to_draw,
    sync_fused_qkv,
    unpack_row,
)
from selma_ray.images.stage import draw_rows
from selma_ray.layout import eval_images
from selma_ray.rehearsal import describe as describe_rehearsal
from selma_ray.storage import RunDir

log = logging.getLogger(__name__)

#: DSG rules of the stage's numbers (also ``rescore``'s default, so both agree).
RULES = REFERENCE_RULES
_DIGITS = 4


# --------------------------------------------------------------------------- items


def round_robin(items: list[Any], limit: int | None) -> list[Any]:
    """First ``limit`` items taking one per category in turn (categories in first-seen order)."""
    if limit is None or limit >= len(items):
        return list(items)
    by_cat: dict[str, list[Any]] = defaultdict(list)
    for item in items:
        by_cat[item.category].append(item)
    queues = [list(v) for v in by_cat.values()]
    out: list[Any] = []
    while len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def held_out_prompt_ids(cfg: SelmaConfig, run_dir: RunDir, skill: str, ids: list[str]) -> set[str]:
    """Those of ``ids`` the experts trainer held out for ``skill`` (its validation prompts).

    The expert's ``expert.json`` lists them (``held_out_prompts``). For an expert written
    before it did, the trainer's split is redone over what the trainer split: every imaged
    prompt (not only those with questions: the split's at-least-one rules depend on the set).
    """
    from selma_ray.training.data import Pair, split_holdout

    if run_dir.exists(*layout.expert_meta(skill)):
        listed = run_dir.read_json(*layout.expert_meta(skill)).get("held_out_prompts")
        if listed is not None:
            return set(ids) & set(listed)
    trained_on = ids
    if run_dir.exists(*layout.images_metadata(skill)):  # the trainer splits imaged prompts
        rows = run_dir.read_jsonl(*layout.images_metadata(skill))
        trained_on = list(dict.fromkeys(r["prompt_id"] for r in rows)) or ids
    pairs = [Pair(file_name=f"{i}.png", text="", prompt_id=i) for i in trained_on]
    _, val = split_holdout(pairs, cfg.train.validation_fraction, cfg.seed)
    return set(ids) & {p.prompt_id for p in val}


def select_items(
    cfg: SelmaConfig, run_dir: RunDir
) -> tuple[dict[str, list[BenchmarkItem | TifaItem]], list[str]]:
    """{benchmark: items} for ``eval.benchmarks`` and notes on what was chosen."""
    ecfg = cfg.eval
    out: dict[str, list[Any]] = {}
    notes: list[str] = []
    for name in ecfg.benchmarks:
        if name == "dsg1k":
            out[name] = round_robin(load_dsg1k().items, ecfg.max_items)
        elif name == "tifa":
            if not ecfg.tifa_path:
                notes.append("tifa: skipped (eval.tifa_path is not set)")
                continue
            out[name] = round_robin(load_tifa(ecfg.tifa_path).items, ecfg.max_items)
        elif name == "skills":
            skills = [s.name for s in cfg.prompts.skills if s.data is None]
            given = [s.name for s in cfg.prompts.skills if s.data is not None]
            if given:
                notes.append(
                    f"skills: {', '.join(given)} learned from existing data (pairs or "
                    "captions): no generated prompts with DSG questions to hold out"
                )
            if not skills:
                continue
            bench = load_skill_prompts(run_dir, skills)
            held: set[str] = set()
            for skill in skills:
                ids = [i.item_id for i in bench.items if i.category == skill]
                held |= held_out_prompt_ids(cfg, run_dir, skill, ids)
            items = [i for i in bench.items if i.item_id in held]
            if items:
                notes.append(f"skills: {len(items)} held-out prompt(s) (not trained on)")
            else:
                items = list(bench.items)
                notes.append("skills: no held-out prompts; evaluated on training prompts")
            out[name] = round_robin(items, ecfg.max_items)
    ids: dict[str, str] = {}
    for name, items in out.items():
        for item in items:
            other = ids.setdefault(item.item_id, name)
            if other != name:
                msg = f"eval: item id {item.item_id!r} is in both {other} and {name}"
                raise ValueError(msg)
    return out, notes


def variant_loras(cfg: SelmaConfig, run_dir: RunDir) -> dict[str, str | None]:
    """{variant: LoRA file URI or None (base)}; a missing LoRA raises naming the stage."""
    out: dict[str, str | None] = {}
    for v in cfg.eval.variants:
        if v == "base":
            out["base"] = None
        elif v == "experts":
            for skill in (s.name for s in cfg.prompts.skills):
                if not run_dir.exists(*layout.expert_lora(skill)):
                    msg = f"eval: no expert for skill {skill!r}; run the experts stage first"
                    raise FileNotFoundError(msg)
                out[layout.expert_variant(skill)] = run_dir.url(*layout.expert_lora(skill))
        elif v == "merged":
            if not run_dir.exists(*layout.merged_lora()):
                msg = f"eval: no {'/'.join(layout.merged_lora())}; run the merge stage first"
                raise FileNotFoundError(msg)
            out["merged"] = run_dir.url(*layout.merged_lora())
        elif v == "joint":
            if not run_dir.exists(*layout.expert_lora(layout.JOINT)):
                msg = (
                    "eval: no joint baseline LoRA; run the experts stage with train.joint=true "
                    "(--redo experts if it already ran without it)"
                )
                raise FileNotFoundError(msg)
            out[layout.JOINT] = run_dir.url(*layout.expert_lora(layout.JOINT))
    return out


# --------------------------------------------------------------------------- images


class LoraImageGenerator(ImageGenerator):
    """:class:`ImageGenerator` whose rows name a variant (``skill`` column) and whose LoRA is
    loaded before drawing them (swapped when the variant changes; rows come sorted by it).
    An image the safety checker flags is kept as drawn (black), beside its marker: every
    variant is scored on the same items. With ``images.fuse_qkv`` each swap rebuilds the fused
    QKV weights from the base weights and the variant's LoRA
    (:func:`~selma_ray.images.generate.sync_fused_qkv`)."""

    drop_flagged = False

    def __init__(
        self,
        cfg: ImagesConfig | dict[str, Any],
        out_uri: str,
        loras: dict[str, str | None],
        **kw: Any,
    ) -> None:
        super().__init__(cfg, out_uri, **kw)
        self.loras = dict(loras)
        self.current: str | None = "base"
        # local copies of the LoRA files, removed when this generator goes away
        self._tmp = tempfile.TemporaryDirectory(prefix="selma-eval-lora-")
        self.tmp = self._tmp.name

    def use(self, variant: str) -> None:
        if variant == self.current:
            return
        import fsspec

        if self.current not in (None, "base"):
            self.pipe.unload_lora_weights()
        uri = self.loras.get(variant)
        if uri is not None:
            local = os.path.join(self.tmp, variant)
            os.makedirs(local, exist_ok=True)
            with (
                fsspec.open(uri, "rb") as src,
                open(os.path.join(local, layout.LORA_FILE), "wb") as dst,
            ):
                dst.write(src.read())
            self.pipe.load_lora_weights(
                local, weight_name=layout.LORA_FILE, adapter_name="selma_eval"
            )
        # images.fuse_qkv: the fused weights take the new LoRA (or none); no-op when unfused
        sync_fused_qkv(self.pipe)
        self.current = variant

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        rows = batch_to_rows(batch)
        outs: list[dict[str, Any]] = []
        for variant in dict.fromkeys(str(r["skill"]) for r in rows):
            sub = [r for r in rows if str(r["skill"]) == variant]
            members = [m for r in sub for m in unpack_row(r)]  # batched: packed groups
            todo = [m for m in members if not self._exists(variant, str(m["file_name"]))]
            if todo:
                self.use(variant)
            outs.extend(batch_to_rows(super().__call__(rows_to_batch(sub))))
        return {k: np.array([o[k] for o in outs]) for k in outs[0]}


def plan_images(
    cfg: SelmaConfig, items: dict[str, list[Any]], variants: list[str]
) -> list[dict[str, Any]]:
    """One row per (variant, item), sorted by variant; ``skill`` holds the variant."""
    rows = []
    for variant in variants:
        for bench_items in items.values():
            for item in bench_items:
                rows.append(
                    {
                        "prompt_id": item.item_id,
                        "skill": variant,
                        "prompt": item.text,
                        "image_index": 0,
                        "seed": image_seed(cfg.seed, item.item_id, 0),
                        "file_name": f"{item.item_id}.png",
                    }
                )
    return rows


def eval_images_config(cfg: SelmaConfig) -> ImagesConfig:
    """The settings every variant is drawn with: the experts' base model at their training
    resolution (:meth:`~selma_ray.config.SelmaConfig.variant_images`), always PNG."""
    return cfg.variant_images().model_copy(update={"image_format": "png"})


def draw_variants(
    cfg: SelmaConfig,
    run_dir: RunDir,
    rows: list[dict[str, Any]],
    loras: dict[str, str | None],
    executor: Executor,
) -> list[dict[str, Any]]:
    """Draw the rows not yet on storage on ``eval.pool``, swapping LoRAs per variant (batched:
    whole groups of the batch plan, as stage 2 draws)."""
    todo = rows_to_draw(
        rows,
        lambda r: run_dir.exists(*eval_images(r["skill"], r["file_name"])),
        eval_images_config(cfg),
    )
    if not todo:
        return []
    drawn = draw_rows(
        todo,
        eval_images_config(cfg),
        run_dir.url(*eval_images()),
        executor,
        cache_dir=cfg.storage.cache_dir,
        pool=cfg.eval.pool,
        generator_cls=LoraImageGenerator,
        generator_kwargs={"loras": loras},
    )
    truncated = sum(bool(r.get("truncated")) for r in drawn)
    if truncated:  # one line for the stage, not diffusers' warning per prompt
        log.warning(
            "eval: %d of %d images drawn had prompts longer than the text encoder's token "
            "limit (truncated)",
            truncated,
            len(drawn),
        )
    flagged = sum(bool(r.get("nsfw_flagged")) for r in drawn)
    if flagged:  # one line for the stage
        log.warning(
            "eval: the safety checker flagged %d of %d images drawn; they are kept as the "
            "pipeline drew them (black) and listed per variant in eval/report.json",
            flagged,
            sum(bool(r.get("written")) for r in drawn),
        )
    return drawn


def flagged_items(run_dir: RunDir, image_rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """{variant: item ids} of the planned images the safety checker flagged (those with a
    marker, :func:`selma_ray.layout.flagged_marker`), in the plan's order."""
    variants = dict.fromkeys(str(r["skill"]) for r in image_rows)
    marked = {
        v: {layout.flagged_image(n) for n in run_dir.listdir(*eval_images(v))} for v in variants
    }
    out: dict[str, list[str]] = {v: [] for v in variants}
    for r in image_rows:
        if r["file_name"] in marked[str(r["skill"])]:
            out[str(r["skill"])].append(str(r["prompt_id"]))
    return out


# --------------------------------------------------------------------------- answers


def question_rows(
    run_dir: RunDir, items: dict[str, list[Any]], variants: list[str]
) -> list[dict[str, Any]]:
    """One row per (variant, item, question) with the image URI."""
    import json

    rows = []
    for variant in variants:
        for bench, bench_items in items.items():
            for item in bench_items:
                uri = run_dir.url(*eval_images(variant, f"{item.item_id}.png"))
                for q in item.questions:
                    is_tifa = hasattr(q, "choices")
                    rows.append(
                        {
                            "model": variant,
                            "benchmark": bench,
                            "item_id": item.item_id,
                            "question_id": int(q.question_id if is_tifa else q.proposition_id),
                            "question": q.question,
                            "choices": json.dumps(list(q.choices)) if is_tifa else "",
                            "image_uri": uri,
                        }
                    )
    return rows


def score_images(
    cfg: SelmaConfig,
    run_dir: RunDir,
    rows: list[dict[str, Any]],
    name: str,
    scorer_cls: type,
    scorer_kwargs: dict[str, Any],
    executor: Executor,
) -> tuple[dict[tuple[str, str], float], dict[str, Any]]:
    """{(variant, item id): score} of every image row (``model, item_id, text, image_uri``)
    and the counts for ``eval/stats.json``. Saved scores (same key, text, scorer ``name`` and
    settings) are reused; the other rows are scored on ``eval.pool`` and saved as they come
    (:class:`ScoreSaver`); then the scorer's part files are folded into one."""
    tag = scorer_identity(name, scorer_kwargs)
    saved = saved_scores(run_dir, tag)
    scores: dict[tuple[str, str], float] = {}
    todo = []
    for row in rows:
        old = saved.get(score_key(row))
        if old is not None and old["text"] == row["text"]:
            scores[score_key(row)] = float(old["score"])
        else:
            todo.append(row)
    before = len(scores)
    if todo:
        scored = executor.map_rows(
            todo,
            ScoreSaver,
            fn_kwargs={
                "scorer_cls": scorer_cls,
                "scorer_kwargs": {**scorer_kwargs, "cache_dir": cfg.storage.cache_dir},
                "run_dir_uri": run_dir.uri,
                "scorer": tag,
            },
            pool=cfg.eval.pool,
            rows_per_task=cfg.eval.rows_per_task,
        )
        for r in scored:
            scores[score_key(r)] = float(r[scorer_cls.column])
    used = [{**{c: r[c] for c in SCORE_COLUMNS}, "score": scores[score_key(r)]} for r in rows]
    compact_scores(run_dir, tag, used)
    stats = {**scorer_kwargs, "images": len(rows), "scored_before": before, "scored_now": len(todo)}
    return scores, stats


def answer_questions(
    cfg: SelmaConfig,
    run_dir: RunDir,
    rows: list[dict[str, Any]],
    scorer_cls: type,
    scorer_kwargs: dict[str, Any],
    executor: Executor,
) -> list[dict[str, Any]]:
    """Every question row with its answer: saved answers (same key, question text and VQA
    settings) are reused, the other rows are asked on ``eval.pool`` and saved as they come.
    Writes ``eval/stats.json`` (questions, answered_before, asked_now)."""
    vqa = vqa_identity(scorer_kwargs)
    saved = saved_answers(run_dir, vqa)
    done, todo = [], []
    for row in rows:
        old = saved.get(answer_key(row))
        if old is not None and old["question"] == row["question"]:
            done.append(old)
        else:
            todo.append(row)
    if done:
        log.info(
            "eval: %d of %d questions answered before; asking %d", len(done), len(rows), len(todo)
        )
    asked = []
    if todo:
        asked = executor.map_rows(
            todo,
            AnswerSaver,
            fn_kwargs={
                "scorer_cls": scorer_cls,
                "scorer_kwargs": {**scorer_kwargs, "cache_dir": cfg.storage.cache_dir},
                "run_dir_uri": run_dir.uri,
                "vqa": vqa,
            },
            pool=cfg.eval.pool,
            rows_per_task=cfg.eval.rows_per_task,
        )
    stats = {
        "questions": len(rows),
        "answered_before": len(done),
        "asked_now": len(todo),
        "vqa": json.loads(vqa),
    }
    run_dir.write_json(stats, *layout.eval_stats())
    return done + asked


# --------------------------------------------------------------------------- scoring


def score_variant(
    items: dict[str, list[Any]], answers: dict[str, dict[int, str]]
) -> dict[str, Any]:
    """{dsg: {benchmark: result}, tifa: result | None} for one variant's answers."""
    dsg: dict[str, Any] = {}
    tifa: dict[str, Any] | None = None
    for bench, bench_items in items.items():
        if not bench_items:
            continue
        if bench == "tifa":
            r = score_tifa(bench_items, answers)
            tifa = {
                "overall": round(r.overall, _DIGITS),
                "by_category": {k: round(v, _DIGITS) for k, v in r.by_category.items()},
                "by_element_type": {k: round(v, _DIGITS) for k, v in r.by_element_type.items()},
                "n_items": r.n_items,
                "n_missing": r.n_missing,
                "items": {s.item_id: round(100 * s.accuracy, _DIGITS) for s in r.item_scores},
            }
        else:
            r = score_dsg(bench_items, answers, RULES)
            dsg[bench] = {
                "overall": round(r.overall, _DIGITS),
                # the SELMA paper's DSG number: the mean over questions (DSGResult)
                "question_mean": round(r.question_mean, _DIGITS),
                "by_category": {k: round(v, _DIGITS) for k, v in r.by_category.items()},
                "by_broad_category": {k: round(v, _DIGITS) for k, v in r.by_broad_category.items()},
                "n_items": r.n_items,
                "n_missing": r.n_missing,
                "items": {s.item_id: round(100 * s.score, _DIGITS) for s in r.item_scores},
            }
    return {"dsg": dsg, "tifa": tifa}


def run_eval_stage(cfg: SelmaConfig, run_dir: RunDir, executor: Executor) -> dict[str, Any]:
    """Stage 5 (see the module docstring); returns counts + overall scores per variant."""
    import pandas as pd

    from selma_ray.evaluation.clip import ClipScorer
    from selma_ray.evaluation.preference import KINDS as PREFERENCE_KINDS
    from selma_ray.evaluation.preference import preference_scorer
    from selma_ray.evaluation.vqa import VQAScorer

    ecfg = cfg.eval
    items, notes = select_items(cfg, run_dir)
    if not any(items.values()):
        msg = f"eval: no benchmark items to evaluate (eval.benchmarks={ecfg.benchmarks})"
        raise ValueError(msg)
    loras = variant_loras(cfg, run_dir)
    variants = list(loras)
    image_rows = plan_images(cfg, items, variants)
    n_questions = len(question_rows(run_dir, items, variants))
    run_dir.write_json({"images": len(image_rows), "questions": n_questions}, *layout.eval_plan())
    drawn = draw_variants(cfg, run_dir, image_rows, loras, executor)
    n_written = sum(bool(r.get("written")) for r in drawn)

    qrows = question_rows(run_dir, items, variants)
    vqa_kwargs = {"model_ref": ecfg.vqa_model, "answer_matcher": ecfg.answer_matcher}
    answered = answer_questions(cfg, run_dir, qrows, VQAScorer, vqa_kwargs, executor)
    compact_answers(run_dir, vqa_identity(vqa_kwargs), answered)
    answered.sort(
        key=lambda r: (variants.index(str(r["model"])), str(r["item_id"]), int(r["question_id"]))
    )
    df = pd.DataFrame([answer_row(r) for r in answered], columns=list(ANSWER_COLUMNS))
    df["question_id"] = df["question_id"].astype("int64")
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    run_dir.write_bytes(buf.getvalue(), *layout.eval_answers())

    by_variant: dict[str, dict[str, dict[int, str]]] = {v: {} for v in variants}
    for r in df.itertuples(index=False):
        by_variant[str(r.model)].setdefault(str(r.item_id), {})[int(r.question_id)] = str(r.answer)

    clip: dict[str, dict[str, float]] = {v: {} for v in variants}
    crows = [
        {
            "model": r["skill"],
            "item_id": r["prompt_id"],
            "text": r["prompt"],
            "image_uri": run_dir.url(*eval_images(r["skill"], r["file_name"])),
        }
        for r in image_rows
    ]
    score_stats: dict[str, Any] = {}

    def scores_of(name: str, scorer_cls: type, model_ref: str) -> dict[str, dict[str, float]]:
        """{variant: {item_id: score}} of one scorer, in the image plan's order."""
        got, score_stats[name] = score_images(
            cfg, run_dir, crows, name, scorer_cls, {"model_ref": model_ref}, executor
        )
        out: dict[str, dict[str, float]] = {v: {} for v in variants}
        for r in crows:
            out[str(r["model"])][str(r["item_id"])] = round(got[score_key(r)], _DIGITS)
        return out

    if ecfg.clip_model:
        clip = scores_of("clip", ClipScorer, ecfg.clip_model)
    # PickScore / ImageReward / HPS: {kind: {variant: {item_id: score}}}, like CLIPScore
    preference: dict[str, dict[str, dict[str, float]]] = {}
    for kind in (k for k in PREFERENCE_KINDS if k in ecfg.preference_models):
        preference[kind] = scores_of(kind, preference_scorer(kind), ecfg.preference_models[kind])
    stats = run_dir.read_json(*layout.eval_stats())  # the answers' counts (answer_questions)
    run_dir.write_json({**stats, "scores": score_stats}, *layout.eval_stats())
    flagged = flagged_items(run_dir, image_rows)
    if any(flagged.values()):
        notes.append(
            f"safety checker: {sum(map(len, flagged.values()))} image(s) flagged; the pipeline "
            "drew them black and they are scored as drawn (listed per variant in nsfw_flagged)"
        )

    report: dict[str, Any] = {
        "variants": {},
        "benchmarks": {b: [i.item_id for i in its] for b, its in items.items()},
        "items": {
            i.item_id: {"text": i.text, "category": i.category, "benchmark": b}
            for b, its in items.items()
            for i in its
        },
        "vqa_model": ecfg.vqa_model,
        "clip_model": ecfg.clip_model,
        "preference_models": {k: ecfg.preference_models[k] for k in preference},
        "rules": "reference",
        "notes": [*describe_rehearsal(cfg.rehearsal), *notes],
        "rehearsal": cfg.rehearsal,
    }
    for v in variants:
        entry = score_variant(items, by_variant[v])
        scores = list(clip[v].values())
        entry["clip"] = round(sum(scores) / len(scores), _DIGITS) if scores else None
        entry["clip_items"] = clip[v]
        entry["preference"] = {
            kind: {
                "mean": round(sum(by[v].values()) / len(by[v]), _DIGITS) if by[v] else None,
                "items": by[v],
            }
            for kind, by in preference.items()
        }
        entry["lora"] = loras[v]
        entry["nsfw_flagged"] = flagged[v]
        report["variants"][v] = entry
    run_dir.write_json(report, *layout.eval_report())
    try:
        from selma_ray.evaluation.report import build_report

        build_report(run_dir)
    except Exception as e:  # the report is a view; the numbers above are the stage's output
        log.warning("eval: HTML report not built: %s", e)
        notes.append(f"report not built: {e}")
    return {
        "images_written": n_written,
        "images": len(image_rows),
        "answers": len(df),
        "overall": {
            v: {
                **{b: e["overall"] for b, e in report["variants"][v]["dsg"].items()},
                **(
                    {"tifa": report["variants"][v]["tifa"]["overall"]}
                    if report["variants"][v]["tifa"]
                    else {}
                ),
                "clip": report["variants"][v]["clip"],
            }
            for v in variants
        },
    }
