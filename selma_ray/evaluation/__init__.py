"""Stage 5 (evaluation): benchmarks, scoring, the VQA / CLIP scorers, the stage and its report.

* :mod:`selma_ray.evaluation.benchmarks`: DSG-1k (vendored), TIFA v1.0 and our held-out skill
  prompts as typed items, with a :class:`LoadReport` of what each loader cleaned or skipped.
* :mod:`selma_ray.evaluation.scoring`: pure DSG / TIFA / CLIPScore arithmetic over answers.
* :mod:`selma_ray.evaluation.rescore`: re-scoring a saved answers table (CSV or Parquet) into a
  JSON report and a terminal table (``selma-ray evaluate rescore``); imported on demand since it
  needs pandas.
* :mod:`selma_ray.evaluation.vqa`, :mod:`selma_ray.evaluation.clip`,
  :mod:`selma_ray.evaluation.preference` (PickScore, ImageReward, HPS v2): the model-backed
  scorers (Ray Data style callable classes: load once, score batches of rows); imported on
  demand.
* :mod:`selma_ray.evaluation.stage`: the stage (variants drawn, questions answered, scores) on
  the executor it is handed, resuming from :mod:`selma_ray.evaluation.saved` (answers and
  scores saved as they come); :mod:`selma_ray.evaluation.report`: the HTML report, with
  :mod:`~selma_ray.evaluation.table` (the paper's comparison), :mod:`~selma_ray.evaluation.views`
  (skill matrix, merged - base) and :mod:`~selma_ray.evaluation.votes` (human ratings).

This package's ``__init__`` imports only the model-free modules.
"""

from selma_ray.evaluation.benchmarks import (
    DSG1K_CATEGORIES,
    Benchmark,
    BenchmarkItem,
    DependencyFix,
    LoadReport,
    Question,
    TifaItem,
    TifaQuestion,
    dataset_category,
    load_dsg1k,
    load_skill_prompts,
    load_tifa,
)
from selma_ray.evaluation.scoring import (
    DEFAULT_RULES,
    REFERENCE_RULES,
    TRANSITIVE_RULES,
    DSGResult,
    DSGRules,
    TifaResult,
    clip_score,
    is_yes,
    normalize_answer,
    score_dsg,
    score_dsg_item,
    score_tifa,
)

__all__ = [
    "DEFAULT_RULES",
    "TRANSITIVE_RULES",
    "DSG1K_CATEGORIES",
    "REFERENCE_RULES",
    "Benchmark",
    "BenchmarkItem",
    "DSGResult",
    "DSGRules",
    "DependencyFix",
    "LoadReport",
    "Question",
    "TifaItem",
    "TifaQuestion",
    "TifaResult",
    "clip_score",
    "dataset_category",
    "is_yes",
    "load_dsg1k",
    "load_skill_prompts",
    "load_tifa",
    "normalize_answer",
    "score_dsg",
    "score_dsg_item",
    "score_tifa",
]
