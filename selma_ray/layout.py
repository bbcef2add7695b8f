"""The run directory's layout: the one place that spells a path inside a run directory.

Every function returns the path parts relative to the run directory, to be splatted into a
:class:`~selma_ray.storage.RunDir` call (``run_dir.read_json(*layout.expert_meta("coco"))``).
Nothing else in selma-ray names a run-directory folder or file::

    config.yaml  manifest.json
    prompts/<skill>.jsonl  <skill>.parquet  stats.json  state/
    images/<skill>/<prompt_id>_<i>.png  metadata.jsonl      images/stats.json
    images/<skill>/<prompt_id>_<i>.png.nsfw_flagged  (images.safety_checker: flagged, not kept)
    cache/<skill>/inputs.safetensors  cache.json             cache/encode.json
    train/expert-<skill>/                (Ray Train runs: checkpoints for resume)
    experts/<skill>/pytorch_lora_weights.safetensors  expert.json  curves.json
    experts/joint/...   (train.joint: one LoRA on every skill's pairs, the joint baseline)
    merged/pytorch_lora_weights.safetensors  merge.json  README.md  pipeline/
    eval/images/<variant>/<item_id>.png  answers.parquet  report.json  report.html
    eval/answers/part-<hash>.parquet  stats.json    (VQA answers as they come: resume)
    eval/scores/part-<hash>.parquet                 (CLIP / preference scores as they come)
    eval/images/<variant>/<item_id>.png.nsfw_flagged  (flagged by the safety checker, kept)
    eval/table.md  table.csv                        (the paper's comparison table)
    eval/votes/<rater>-<uuid>.json                  (human side-by-side votes, one per file)
    logs/
"""

from __future__ import annotations

Parts = tuple[str, ...]

# ----------------------------------------------------------------------- file names
#: The diffusers LoRA file name (``load_lora_weights`` looks for it by default).
LORA_FILE = "pytorch_lora_weights.safetensors"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
DRIVER_FILE = "driver.json"
STATS_FILE = "stats.json"
#: The Hugging Face imagefolder metadata file of each skill's images.
METADATA_FILE = "metadata.jsonl"
EXPERT_META_FILE = "expert.json"
CURVES_FILE = "curves.json"
MERGE_META_FILE = "merge.json"
MODEL_CARD_FILE = "README.md"
CACHE_FILE = "inputs.safetensors"
CACHE_KEY_FILE = "cache.json"
CACHE_SUMMARY_FILE = "encode.json"
ANSWERS_FILE = "answers.parquet"
REPORT_FILE = "report.json"
REPORT_HTML_FILE = "report.html"
CONTACT_SHEET_FILE = "contact_sheet.png"

# ----------------------------------------------------------------------- stage folders
PROMPTS = "prompts"
IMAGES = "images"
CACHE = "cache"
TRAIN = "train"
EXPERTS = "experts"
MERGED = "merged"
EVAL = "eval"
LOGS = "logs"
#: Folders each stage owns (discarded by ``--redo``).
STAGE_OUTPUTS: dict[str, Parts] = {
    "prompts": (PROMPTS,),
    "images": (IMAGES,),
    "experts": (EXPERTS, CACHE, TRAIN),
    "merge": (MERGED,),
    "eval": (EVAL,),
}


#: Prefix of the empty object the storage check writes and deletes at the run's root.
WRITE_PROBE_PREFIX = ".selma-write-check-"


def write_probe(token: str) -> Parts:
    """The storage check's probe (deleted right after it is written)."""
    return (f"{WRITE_PROBE_PREFIX}{token}",)


def config() -> Parts:
    return (CONFIG_FILE,)


def manifest() -> Parts:
    return (MANIFEST_FILE,)


def logs(*name: str) -> Parts:
    return (LOGS, *name)


def driver_heartbeat() -> Parts:
    """The run's driver: host, pid and its last heartbeat (``selma-ray status``)."""
    return (DRIVER_FILE,)


def driver_log(stamp: str) -> Parts:
    """The full log of one driver session (every library's lines, tracebacks), named by when
    it started: a rerun of the run directory adds its own."""
    return (LOGS, f"driver-{stamp}.log")


# ----------------------------------------------------------------------- stage 1
def prompts_dir() -> Parts:
    return (PROMPTS,)


def prompts_file(skill: str, suffix: str = "jsonl") -> Parts:
    return (PROMPTS, f"{skill}.{suffix}")


def prompts_stats() -> Parts:
    return (PROMPTS, STATS_FILE)


def prompts_state(*name: str) -> Parts:
    return (PROMPTS, "state", *name)


# ----------------------------------------------------------------------- stage 2
def images_dir(*skill_and_file: str) -> Parts:
    return (IMAGES, *skill_and_file)


def images_metadata(skill: str) -> Parts:
    return (IMAGES, skill, METADATA_FILE)


def images_stats() -> Parts:
    return (IMAGES, STATS_FILE)


#: Suffix of the marker an image drawer writes beside (stage 2: instead of) an image that the
#: pipeline's safety checker flagged (``images.safety_checker``).
FLAGGED_SUFFIX = ".nsfw_flagged"


def flagged_marker(file_name: str) -> str:
    """The marker's file name for the image ``file_name``, in the image's own folder (stage 2's
    ``images/<skill>/``, the eval stage's ``eval/images/<variant>/``)."""
    return f"{file_name}{FLAGGED_SUFFIX}"


def flagged_image(marker: str) -> str | None:
    """The image file name a marker (:func:`flagged_marker`) stands for; None if not a marker."""
    return marker[: -len(FLAGGED_SUFFIX)] if marker.endswith(FLAGGED_SUFFIX) else None


# ----------------------------------------------------------------------- stage 3
def cache_dir(skill: str) -> Parts:
    return (CACHE, skill)


def cache_file(skill: str) -> Parts:
    return (CACHE, skill, CACHE_FILE)


def cache_key(skill: str) -> Parts:
    return (CACHE, skill, CACHE_KEY_FILE)


def cache_summary() -> Parts:
    return (CACHE, CACHE_SUMMARY_FILE)


def train_dir() -> Parts:
    return (TRAIN,)


def train_run_name(skill: str) -> str:
    """The Ray Train run name of a skill's expert (``train/<name>/``)."""
    return f"expert-{skill}"


def experts_dir() -> Parts:
    return (EXPERTS,)


def expert_dir(skill: str) -> Parts:
    return (EXPERTS, skill)


def expert_lora(skill: str) -> Parts:
    return (EXPERTS, skill, LORA_FILE)


def expert_meta(skill: str) -> Parts:
    return (EXPERTS, skill, EXPERT_META_FILE)


def expert_curves(skill: str) -> Parts:
    return (EXPERTS, skill, CURVES_FILE)


# ----------------------------------------------------------------------- stage 4
def merged_dir(*name: str) -> Parts:
    return (MERGED, *name)


def merged_lora() -> Parts:
    return (MERGED, LORA_FILE)


def merged_meta() -> Parts:
    return (MERGED, MERGE_META_FILE)


def merged_card() -> Parts:
    return (MERGED, MODEL_CARD_FILE)


def merged_pipeline() -> Parts:
    return (MERGED, "pipeline")


# ----------------------------------------------------------------------- stage 5
def eval_dir(*name: str) -> Parts:
    return (EVAL, *name)


def eval_images(*variant_and_file: str) -> Parts:
    return (EVAL, IMAGES, *variant_and_file)


def eval_answers() -> Parts:
    return (EVAL, ANSWERS_FILE)


def eval_answer_parts(*name: str) -> Parts:
    """The folder (or one file) of answer parts, written per batch as the VQA model answers."""
    return (EVAL, "answers", *name)


def eval_score_parts(*name: str) -> Parts:
    """The folder (or one file) of CLIPScore / preference score parts, written per batch as
    the scorers score (keyed by variant, item, scorer and its model)."""
    return (EVAL, "scores", *name)


def eval_plan() -> Parts:
    """What the eval stage will do (images to draw, questions to answer): its progress total."""
    return (EVAL, "plan.json")


def eval_stats() -> Parts:
    """What the last eval run asked the VQA model and what it found answered before."""
    return (EVAL, STATS_FILE)


def eval_report() -> Parts:
    return (EVAL, REPORT_FILE)


def eval_report_html() -> Parts:
    return (EVAL, REPORT_HTML_FILE)


def eval_contact_sheet() -> Parts:
    return (EVAL, CONTACT_SHEET_FILE)


def eval_table(suffix: str) -> Parts:
    """The paper's comparison table: ``eval/table.md`` or ``eval/table.csv``."""
    return (EVAL, f"table.{suffix}")


def eval_votes(*name: str) -> Parts:
    """The folder (or one file) of human side-by-side votes: one object per vote, never
    rewritten, so concurrent raters (and servers) only ever add files."""
    return (EVAL, "votes", *name)


def eval_vote(rater: str, vote_id: str) -> Parts:
    """One vote of ``rater`` (``vote_id``: a uuid4 hex, no dashes, so the rater is what comes
    before the last ``-``)."""
    return eval_votes(f"{rater}-{vote_id}.json")


# ----------------------------------------------------------------------- variants
#: The joint multi-skill baseline: trained as an "expert" of this reserved name (no skill may
#: take it) on the union of every skill's pairs; its variant name in evaluation and serving.
JOINT = "joint"


def expert_variant(skill: str) -> str:
    """The variant name of a skill's expert in evaluation and serving."""
    return f"expert-{skill}"
