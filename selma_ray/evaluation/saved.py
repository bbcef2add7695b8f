"""Stage 5's saved work: VQA answers and image scores kept as they come, so a rerun after a kill
or a failure asks and scores only what has no saved result.

One Parquet part file per batch of rows (:func:`write_answer_part`, :func:`write_score_part`),
written by the worker that computed it (:class:`AnswerSaver`, :class:`ScoreSaver` wrap the
scorer), each row tagged with the settings it was computed under (the VQA settings; the scorer
and its model), named by the tag and the rows' keys so a retried batch rewrites the same file.
Readers (:func:`saved_answers`, :func:`saved_scores`) take a key's first row of a tag. When a
stage has all its results, the parts of a tag are folded into one (:func:`compact_answers`,
:func:`compact_scores`): the new file is written before the folded ones are removed. Paths come
from :mod:`selma_ray.layout` (``eval/answers/``, ``eval/scores/``).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from typing import Any

from selma_ray import layout
from selma_ray.execution import batch_to_rows
from selma_ray.storage import RunDir

#: Columns that identify one answer (besides the VQA settings and the question text).
ANSWER_KEY = ("model", "benchmark", "item_id", "question_id")


#: Columns of ``eval/answers.parquet`` (:func:`answer_row`).
ANSWER_COLUMNS = (
    "item_id", "question_id", "answer", "free_answer", "model", "benchmark", "question",
)  # fmt: skip


def answer_row(row: dict[str, Any]) -> dict[str, Any]:
    """A saved or new answer as a row of ``eval/answers.parquet``: ``free_answer`` is the
    VQA model's text as it came back (a part saved before that column: its ``answer``),
    ``answer`` what scoring used (:func:`~selma_ray.evaluation.vqa.scored_answer`)."""
    from selma_ray.evaluation.vqa import parse_choices, scored_answer

    free = row.get("free_answer")
    free = row["answer"] if free is None else free
    out = {c: row[c] for c in ANSWER_COLUMNS if c not in ("answer", "free_answer")}
    out["answer"] = scored_answer(row["answer"], parse_choices(row.get("choices")))
    out["free_answer"] = str(free)
    return {c: out[c] for c in ANSWER_COLUMNS}


def answer_key(row: dict[str, Any]) -> tuple[str, str, str, int]:
    """A row's :data:`ANSWER_KEY` values (variant, benchmark, item id, question id)."""
    model, benchmark, item_id, question_id = (row[c] for c in ANSWER_KEY)
    return str(model), str(benchmark), str(item_id), int(question_id)


def vqa_identity(vqa_kwargs: dict[str, Any]) -> str:
    """The VQA settings an answer was given under (a changed model or matcher asks again)."""
    return json.dumps(vqa_kwargs, sort_keys=True, default=str)


# Saved parts: one Parquet file per batch of rows (answers, scores), each row tagged with the
# settings it was computed under (``tag``: the VQA settings, the scorer and its model); named
# by the tag and the rows' keys, so a retried batch rewrites the same file.


def write_part(
    run_dir: RunDir,
    folder: Callable[..., layout.Parts],
    rows: list[dict[str, Any]],
    tag_column: str,
    tag: str,
    key: Callable[[dict[str, Any]], tuple[Any, ...]],
) -> str:
    """``rows`` (tagged) as one part file in ``folder``, written atomically; its name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = json.dumps(sorted(key(r) for r in rows))
    digest = hashlib.sha256(f"{tag}\n{keys}".encode()).hexdigest()[:20]
    name = f"part-{digest}.parquet"
    columns = dict.fromkeys(c for r in rows for c in r)  # parts from before may lack a column
    table = pa.Table.from_pylist(
        [{**{c: r.get(c) for c in columns}, tag_column: tag} for r in rows]
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    run_dir.write_bytes(buf.getvalue(), *folder(name))
    return name


def read_parts(
    run_dir: RunDir,
    folder: Callable[..., layout.Parts],
    tag_column: str,
    tag: str,
    key: Callable[[dict[str, Any]], tuple[Any, ...]],
) -> tuple[dict[tuple[Any, ...], dict[str, Any]], list[str]]:
    """({key: row} of the rows saved under ``tag``, the first found of a key winning; the
    names of the part files that hold only such rows)."""
    import pyarrow.parquet as pq

    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    names = []
    for name in run_dir.listdir(*folder()):
        if not (name.startswith("part-") and name.endswith(".parquet")):
            continue  # e.g. the temporary file of a write that was killed
        rows = pq.read_table(io.BytesIO(run_dir.read_bytes(*folder(name)))).to_pylist()
        tags = [row.pop(tag_column, None) for row in rows]
        for row, row_tag in zip(rows, tags, strict=True):
            if row_tag == tag:
                out.setdefault(key(row), row)
        if rows and all(t == tag for t in tags):
            names.append(name)
    return out, names


def compact_parts_of(
    run_dir: RunDir,
    folder: Callable[..., layout.Parts],
    tag_column: str,
    tag: str,
    key: Callable[[dict[str, Any]], tuple[Any, ...]],
    rows: list[dict[str, Any]],
) -> int:
    """Fold the part files of ``tag`` into one: every saved row of the tag once per key (the
    run's ``rows`` replace saved ones of their key). The new file is written (atomically)
    before the folded ones are removed: a kill in between leaves rows saved twice, which
    :func:`read_parts` reads once, and the next compaction folds again. Parts of other tags
    stay. How many part files were folded (0: there was at most one)."""
    saved, names = read_parts(run_dir, folder, tag_column, tag, key)
    if len(names) < 2:
        return 0
    merged = {**saved, **{key(r): r for r in rows}}
    name = write_part(run_dir, folder, list(merged.values()), tag_column, tag, key)
    for old in names:
        if old != name:
            run_dir.remove(*folder(old))
    return len(names)


def write_answer_part(run_dir: RunDir, rows: list[dict[str, Any]], vqa: str) -> None:
    """One batch's answered rows as a part file, named by its questions (a retried batch
    rewrites the same file), written atomically."""
    if rows:
        write_part(run_dir, layout.eval_answer_parts, rows, "vqa", vqa, answer_key)


def saved_answers(run_dir: RunDir, vqa: str) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """{answer key: row} of every saved answer given under the VQA settings ``vqa``."""
    return read_parts(run_dir, layout.eval_answer_parts, "vqa", vqa, answer_key)[0]


def compact_answers(run_dir: RunDir, vqa: str, rows: list[dict[str, Any]]) -> int:
    """Fold the answer parts of the VQA settings ``vqa`` into one (:func:`compact_parts_of`;
    ``rows``: the run's answered rows); parts of other VQA settings stay."""
    return compact_parts_of(run_dir, layout.eval_answer_parts, "vqa", vqa, answer_key, rows)


class AnswerSaver:
    """Callable class around a scorer (``scorer_cls(**scorer_kwargs)``, loaded once): answers
    a batch, saves the batch's answers (:func:`write_answer_part`) and then returns them.

    Saving here, in the worker, keeps one map over every question (each model loaded once per
    worker); mapping chunks one after another from the driver would load it once per chunk.
    """

    def __init__(
        self, scorer_cls: type, scorer_kwargs: dict[str, Any], run_dir_uri: str, vqa: str
    ) -> None:
        self.scorer = scorer_cls(**scorer_kwargs)
        self.run_dir = RunDir(run_dir_uri)
        self.vqa = vqa

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = self.scorer(batch)
        write_answer_part(self.run_dir, batch_to_rows(out), self.vqa)
        return out


#: Columns that identify one saved score (besides the scorer, its settings and the text).
SCORE_KEY = ("model", "item_id")


#: Columns of a saved score besides ``score`` (and the scorer identity).
SCORE_COLUMNS = ("model", "item_id", "text")


def score_key(row: dict[str, Any]) -> tuple[str, str]:
    """A row's :data:`SCORE_KEY` values (variant, item id)."""
    return str(row["model"]), str(row["item_id"])


def scorer_identity(scorer: str, scorer_kwargs: dict[str, Any]) -> str:
    """The scorer and settings a score was computed under (another model scores again)."""
    return json.dumps({"scorer": scorer, **scorer_kwargs}, sort_keys=True, default=str)


def write_score_part(run_dir: RunDir, rows: list[dict[str, Any]], scorer: str) -> None:
    """One batch's scores (``model, item_id, text, score``) as a part file under
    ``eval/scores/``, named by its rows (a retried batch rewrites the same file)."""
    if rows:
        write_part(run_dir, layout.eval_score_parts, rows, "scorer", scorer, score_key)


def saved_scores(run_dir: RunDir, scorer: str) -> dict[tuple[str, str], dict[str, Any]]:
    """{score key: row} of every saved score of the scorer identity ``scorer``."""
    return read_parts(run_dir, layout.eval_score_parts, "scorer", scorer, score_key)[0]


class ScoreSaver:
    """Callable class around an image scorer (``scorer_cls(**scorer_kwargs)``, loaded once;
    CLIPScore or a preference model, its score in the column ``scorer_cls.column``): scores a
    batch, saves the batch's scores (:func:`write_score_part`) and then returns them."""

    def __init__(
        self, scorer_cls: type, scorer_kwargs: dict[str, Any], run_dir_uri: str, scorer: str
    ) -> None:
        self.scorer = scorer_cls(**scorer_kwargs)
        self.column = str(scorer_cls.column)
        self.run_dir = RunDir(run_dir_uri)
        self.tag = scorer

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = self.scorer(batch)
        rows = [
            {**{c: r[c] for c in SCORE_COLUMNS}, "score": r[self.column]}
            for r in batch_to_rows(out)
        ]
        write_score_part(self.run_dir, rows, self.tag)
        return out


def compact_scores(run_dir: RunDir, scorer: str, rows: list[dict[str, Any]]) -> int:
    """Fold the score parts of the scorer identity ``scorer`` into one (:func:`compact_parts_of`;
    ``rows``: the run's scores); parts of other scorers stay."""
    return compact_parts_of(run_dir, layout.eval_score_parts, "scorer", scorer, score_key, rows)
