"""Owns the ROUGE-L near-duplicate prompt filter: SELMA's rule, exact, with few pairs scored.

SELMA's rule: candidates are processed in order; a candidate is rejected when its ROUGE-L
F-measure (``rouge-score``, default tokenizer, no stemming) with ANY earlier kept prompt is
strictly greater than ``threshold`` (default 0.8). The ``existing`` prompts (e.g. seed
captions) count as kept from the start; kept candidates join the kept set.

:func:`reference_filter` is that rule written as the straightforward loop over
``RougeScorer.score``. :func:`filter_near_duplicates` makes exactly the same decisions with
prefix filtering as in set-similarity joins, so only a few pairs per candidate are scored:

* ROUGE-L F = 2*LCS/(m+n) for token counts m, n, and LCS <= multiset token overlap <= min(m, n).
  Token lists become sets of ``(token, occurrence index)`` elements so that set overlap equals
  multiset overlap.
* A pair can only exceed ``t`` if 2*min(m, n) > t'(m+n) (length filter) and its overlap is
  >= alpha(m, n), the smallest integer L with 2L > t'(m+n); t' = t - 1e-9 keeps every bound
  conservative against the rounding of the floating-point score.
* With one global element order (rarest first, by document frequency over ``existing`` and
  ``candidates``), two sets of sizes n, m sharing >= alpha elements share their k <= alpha
  rarest common elements inside their first n - alpha_min(n) + k and m - alpha_min(m) + k
  elements. Kept prompts are indexed under every k-subset (k <= 3, "level") of that prefix and
  a candidate probes its own subsets: k = 3 words together are far rarer than one.
* Every pair the index proposes passes the length and overlap filters (vectorised with numpy
  when there are many), an exact integer LCS (bit-parallel on Python ints) and finally
  rouge-score's own floating-point formula (precision = lcs/len(prediction), recall =
  lcs/len(target), f = 2*p*r/(p+r)) compared with ``> threshold``, so boundary cases (F exactly
  equal to the threshold) match bit for bit.

:func:`dedup_file` applies the filter to a JSONL (``prompt`` field) or plain-text file; it is
the body of ``selma-ray prompts dedup``.
"""

from __future__ import annotations

import itertools
import json
import math
import posixpath
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import fsspec
import numpy as np
from rouge_score import rouge_scorer, tokenizers

DEFAULT_THRESHOLD = 0.8

# Slack that keeps the length / overlap / prefix bounds conservative: rouge-score's float F can
# differ from the exact 2L/(m+n) by a few ulps, far below this.
_SLACK = 1e-9


@lru_cache(maxsize=1)
def _tokenizer() -> tokenizers.DefaultTokenizer:
    return tokenizers.DefaultTokenizer(use_stemmer=False)


def tokenize(text: str) -> list[str]:
    """Tokens exactly as rouge-score's default tokenizer (no stemming) produces them."""
    return _tokenizer().tokenize(text)


def _check_threshold(threshold: Any) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        msg = (
            f"threshold must be a number in [0, 1] (the ROUGE-L F-measure above which a prompt "
            f"is a near-duplicate; SELMA uses 0.8), got {threshold!r}"
        )
        raise ValueError(msg)
    return value


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str):
        msg = f"{name} must be a sequence of prompt strings, not a single string (wrap it: [text])"
        raise TypeError(msg)
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            msg = f"{name}[{i}] must be a string prompt, got {type(text).__name__}: {text!r}"
            raise TypeError(msg)
    return out


def reference_filter(
    candidates: Sequence[str],
    existing: Sequence[str] = (),
    threshold: float = DEFAULT_THRESHOLD,
) -> list[bool]:
    """SELMA's rule as the straightforward loop: score each candidate against every kept prompt.

    Quadratic and slow (pure-Python LCS per pair); it is the reference the fast filter is
    tested and benchmarked against.
    """
    t = _check_threshold(threshold)
    candidates = _check_texts(candidates, "candidates")
    existing = _check_texts(existing, "existing")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept: list[str] = list(existing)
    flags: list[bool] = []
    for candidate in candidates:
        keep = True
        for prompt in kept:
            if scorer.score(prompt, candidate)["rougeL"].fmeasure > t:
                keep = False
                break
        flags.append(keep)
        if keep:
            kept.append(candidate)
    return flags


def _lcs_length(masks: dict[int, int], full: int, m: int, other: tuple[int, ...]) -> int:
    """Exact LCS length of a length-``m`` sequence (given as per-token bit masks) and ``other``.

    Bit-parallel LCS (Hyyrö 2004): V starts all ones over m bits; for each symbol with match
    mask M, U = V & M and V = (V + U) | (V - U). The LCS length is the number of zero bits.
    """
    v = full
    for code in other:
        match = masks.get(code)
        if match:
            u = v & match
            v = ((v + u) | (v - u)) & full
    return m - v.bit_count()


def _rouge_f(lcs: int, target_len: int, prediction_len: int) -> float:
    """rouge-score's ``_score_lcs`` + ``scoring.fmeasure``, the same float operations."""
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


# Signature keys: each kept prompt is indexed under combinations of k elements of its prefix
# (k = 1, 2 or 3, the "level"); a candidate probes its own. Higher levels are far more selective
# (two or three rare-ish words together) but cost comb(prefix, k) keys per prompt.
_MAX_LEVEL = 3
_MAX_KEYS = 256
# Probe results larger than this are filtered with numpy (stored ranks per kept prompt: _WIDTH).
_VECTOR_MIN = 48
_WIDTH = 24


class _Bounds:
    """Conservative length / overlap / prefix bounds for one threshold and the lengths present.

    For a pair of token counts (m, n) whose rouge-score F exceeds ``t``, with L its LCS and O its
    (token, occurrence) overlap (L <= O):

    * ``feasible(m, n)``: 2*min(m, n) > t'(m+n), since 2*min(m, n) >= 2L > t'(m+n);
    * ``alpha(m, n)`` <= L: the smallest integer above t'(m+n)/2;
    * ``amin[n]`` <= L for every partner length (L <= m gives L > t'n/(2-t'));
    * so the k <= alpha(m, n) rarest shared elements lie within the first n - amin[n] + k elements
      of each side, and both sides list the key of those k elements at level ``level(m, n)``.

    t' = t - 1e-9 absorbs the rounding of rouge-score's float F (a few ulps).
    """

    def __init__(self, threshold: float, lengths: set[int]) -> None:
        self.t_low = t_low = threshold - _SLACK
        top = max(lengths, default=0)
        self.amin = [1] * (top + 1)
        self.cap = [1] * (top + 1)
        for n in range(1, top + 1):
            self.amin[n] = max(1, math.floor(t_low * n / (2.0 - t_low) - 1e-7) + 1)
            self.cap[n] = next(
                (
                    k
                    for k in range(_MAX_LEVEL, 1, -1)
                    if math.comb(self.prefix(n, k), k) <= _MAX_KEYS
                ),
                1,
            )
        self._need_rows: dict[int, tuple[list[int], np.ndarray]] = {}
        present = sorted(lengths)
        self.levels: list[tuple[int, ...]] = [()] * (top + 1)
        for n in present:
            self.levels[n] = tuple(
                sorted({self.level(m, n) for m in present if self.feasible(m, n)})
            )

    def feasible(self, m: int, n: int) -> bool:
        return 2 * min(m, n) > self.t_low * (m + n)

    def alpha(self, m: int, n: int) -> int:
        return max(1, math.floor(self.t_low * (m + n) / 2.0) + 1)

    def prefix(self, n: int, k: int) -> int:
        return min(n, n - self.amin[n] + k)

    def level(self, m: int, n: int) -> int:
        return min(self.alpha(m, n), self.cap[m], self.cap[n])

    def need_row(self, m: int) -> tuple[list[int], np.ndarray]:
        """Per partner length n: alpha(m, n), or an impossible overlap if (m, n) is infeasible."""
        row = self._need_rows.get(m)
        if row is None:
            top = len(self.amin) - 1
            values = [
                self.alpha(m, n) if n and self.feasible(m, n) else top + 1 for n in range(top + 1)
            ]
            row = self._need_rows[m] = (values, np.array(values, dtype=np.intp))
        return row


def _keys(ranks: list[int], prefix: int, level: int) -> list[int]:
    """Signature keys of one prompt: each ``level``-subset of its first ``prefix`` ranks.

    A subset's key is the hash of its (sorted) tuple of ranks: deterministic for ints, and a
    collision only merges two posting lists, which costs a verification, never a decision.
    """
    head = ranks[:prefix]
    if level == 1:
        return head
    return list(map(hash, itertools.combinations(head, level)))


def _encode_texts(
    existing: list[str], candidates: list[str]
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], int]:
    """Token sequences as integer codes (``existing`` first), and the vocabulary size (>= 1).

    Each distinct text is tokenized once.
    """
    tok = _tokenizer().tokenize
    vocab: dict[str, int] = {}
    text_codes: dict[str, tuple[int, ...]] = {}

    def encode(text: str) -> tuple[int, ...]:
        codes = text_codes.get(text)
        if codes is None:
            codes = tuple(vocab.setdefault(w, len(vocab)) for w in tok(text))
            text_codes[text] = codes
        return codes

    existing_codes = [encode(x) for x in existing]
    candidate_codes = [encode(x) for x in candidates]
    return existing_codes, candidate_codes, max(len(vocab), 1)


def _order_elements(
    sequences: Sequence[tuple[int, ...]], n_vocab: int
) -> tuple[dict[tuple[int, ...], tuple[int, ...]], dict[int, int]]:
    """``(token, occurrence)`` elements of each distinct non-empty sequence, and their global
    rank: rarest first, by document frequency over every sequence (repeats included)."""
    seq_count = Counter(c for c in sequences if c)
    seq_elements: dict[tuple[int, ...], tuple[int, ...]] = {}
    df: Counter[int] = Counter()
    for codes, count in seq_count.items():
        seen: dict[int, int] = {}
        elems = []
        for c in codes:
            occ = seen.get(c, 0)
            seen[c] = occ + 1
            elems.append(c + occ * n_vocab)
        seq_elements[codes] = tuple(elems)
        for e in elems:
            df[e] += count
    rank = {e: i for i, e in enumerate(sorted(df, key=lambda e: (df[e], e)))}
    return seq_elements, rank


class _KeptIndex:
    """The kept prompts, indexed for :meth:`near_duplicate` queries.

    ``postings[level][key]`` lists the kept ids (one id as a bare int: most keys have one
    prompt) indexed under that signature key. The same prompts are also stored as arrays for
    the vectorised overlap check of large probe results: up to ``_WIDTH`` element ranks per
    prompt (padding = ``n_ranks``, never marked) and the length.
    """

    def __init__(
        self,
        seq_elements: dict[tuple[int, ...], tuple[int, ...]],
        rank: dict[int, int],
        bounds: _Bounds,
    ) -> None:
        self.seq_elements = seq_elements
        self.rank = rank
        self.bounds = bounds
        self.postings: list[dict[int, Any]] = [{} for _ in range(_MAX_LEVEL + 1)]
        self.codes: list[tuple[int, ...]] = []
        self.elements: list[frozenset[int]] = []
        self.seqs: set[tuple[int, ...]] = set()
        n_ranks = len(rank)
        self.ranks = np.full((len(seq_elements), _WIDTH), n_ranks, dtype=np.int32)
        self.lengths = np.zeros(len(seq_elements), dtype=np.intp)
        self.marked = np.zeros(n_ranks + 1, dtype=bool)

    def ranks_of(self, codes: tuple[int, ...]) -> list[int]:
        """The sorted element ranks of a sequence (its prefix comes first)."""
        rank = self.rank
        return sorted(rank[e] for e in self.seq_elements[codes])

    def add(self, codes: tuple[int, ...], ranks: list[int] | None = None) -> None:
        """Keep ``codes``: index it under its signature keys at every level it may need."""
        if not codes or codes in self.seqs:
            # Empty prompts score 0 with everything; an identical copy scores like the original.
            return
        self.seqs.add(codes)
        elems = self.seq_elements[codes]
        if ranks is None:
            ranks = self.ranks_of(codes)
        n = len(codes)
        kid = len(self.codes)
        self.codes.append(codes)
        self.elements.append(frozenset(elems))
        self.ranks[kid, : min(n, _WIDTH)] = ranks[:_WIDTH]
        self.lengths[kid] = n
        prefix, postings = self.bounds.prefix, self.postings
        for k in self.bounds.levels[n]:
            index = postings[k]
            for key in _keys(ranks, prefix(n, k), k):
                ids = index.get(key)
                if ids is None:
                    index[key] = kid
                elif type(ids) is int:
                    index[key] = [ids, kid]
                else:
                    ids.append(kid)

    def near_duplicate(self, codes: tuple[int, ...], ranks: list[int], t: float) -> bool:
        """Whether a kept prompt's ROUGE-L F with the candidate ``codes`` is > ``t``."""
        found = self._probe(ranks, len(codes))
        if not found:
            return False
        survivors = self._filter(found, codes, ranks)
        return bool(survivors) and self._any_above(codes, survivors, t)

    def _probe(self, ranks: list[int], m: int) -> set[int]:
        """Kept ids sharing a signature key with a length-``m`` candidate at its levels."""
        found: set[int] = set()
        prefix, postings = self.bounds.prefix, self.postings
        for k in self.bounds.levels[m]:
            index = postings[k]
            for key in index.keys() & _keys(ranks, prefix(m, k), k):  # hits only, in C
                ids = index[key]
                if type(ids) is int:
                    found.add(ids)
                else:
                    found.update(ids)
        return found

    def _filter(self, found: set[int], codes: tuple[int, ...], ranks: list[int]) -> list[int]:
        """The proposed ids that pass the length and overlap filters."""
        need_list, need_array = self.bounds.need_row(len(codes))
        if len(found) > _VECTOR_MIN:
            # All proposed pairs at once: overlap is counted on the stored ranks, plus every
            # unstored element (an upper bound).
            ids_array = np.fromiter(found, dtype=np.intp, count=len(found))
            own = np.array(ranks, dtype=np.intp)
            marked = self.marked
            marked[own] = True
            overlap = np.count_nonzero(marked.take(self.ranks.take(ids_array, axis=0)), axis=1)
            marked[own] = False
            lens = self.lengths.take(ids_array)
            overlap += np.maximum(lens - _WIDTH, 0)
            return ids_array[overlap >= need_array.take(lens)].tolist()
        elem_set = frozenset(self.seq_elements[codes])
        elements, kept_codes = self.elements, self.codes
        return [
            kid for kid in found if len(elem_set & elements[kid]) >= need_list[len(kept_codes[kid])]
        ]

    def _any_above(self, codes: tuple[int, ...], survivors: list[int], t: float) -> bool:
        """Exact check of the survivors: integer LCS, then rouge-score's float F ``> t``."""
        m = len(codes)
        need_list, _ = self.bounds.need_row(m)
        masks: dict[int, int] = {}
        for i, c in enumerate(codes):
            masks[c] = masks.get(c, 0) | (1 << i)
        full = (1 << m) - 1
        for kid in survivors:
            other = self.codes[kid]
            n = len(other)
            lcs = _lcs_length(masks, full, m, other)
            # target = kept prompt, prediction = candidate, as in reference_filter.
            if lcs >= need_list[n] and _rouge_f(lcs, n, m) > t:
                return True
        return False


def _decide(candidate_codes: list[tuple[int, ...]], index: _KeptIndex, t: float) -> list[bool]:
    """Keep flags, in order; each kept candidate joins ``index`` before the next is decided."""
    identical_rejects = t < 1.0  # F of identical non-empty prompts is exactly 1.0
    rejected_seqs: set[tuple[int, ...]] = set()
    flags: list[bool] = []
    for codes in candidate_codes:
        if not codes:
            flags.append(True)
            continue
        if codes in rejected_seqs or (identical_rejects and codes in index.seqs):
            # Same tokens as a rejected candidate (whose culprit is still kept) or as a kept one.
            flags.append(False)
            continue
        ranks = index.ranks_of(codes)
        keep = not index.near_duplicate(codes, ranks, t)
        flags.append(keep)
        if keep:
            index.add(codes, ranks)
        else:
            rejected_seqs.add(codes)
    return flags


def filter_near_duplicates(
    candidates: Sequence[str],
    existing: Sequence[str] = (),
    threshold: float = DEFAULT_THRESHOLD,
) -> list[bool]:
    """Keep flag per candidate, in input order: exactly :func:`reference_filter`'s decisions.

    ``existing`` prompts count as kept from the start (they are never rejected themselves).
    A candidate is rejected when its ROUGE-L F-measure with any kept prompt is > ``threshold``.
    The steps: tokens to integer codes (:func:`_encode_texts`), one global element order
    (:func:`_order_elements`), the bounds of the threshold (:class:`_Bounds`), the index of
    kept prompts seeded with ``existing`` (:class:`_KeptIndex`), then the candidates in order
    (:func:`_decide`).
    """
    t = _check_threshold(threshold)
    candidates = _check_texts(candidates, "candidates")
    existing = _check_texts(existing, "existing")
    existing_codes, candidate_codes, n_vocab = _encode_texts(existing, candidates)
    seq_elements, rank = _order_elements([*existing_codes, *candidate_codes], n_vocab)
    index = _KeptIndex(seq_elements, rank, _Bounds(t, {len(c) for c in seq_elements}))
    for codes in existing_codes:
        index.add(codes)
    return _decide(candidate_codes, index, t)


# --- files ------------------------------------------------------------------------------------


@dataclass
class _Item:
    line_no: int
    raw: str
    prompt: str


def _read_items(path: str, role: str) -> tuple[list[_Item], str]:
    """Non-blank lines of ``path`` as items and the detected format, ``"jsonl"`` or ``"text"``.

    The file is JSONL when its first non-blank line is a JSON object; then every non-blank line
    must be a JSON object with a string ``prompt``. Otherwise each non-blank line is a prompt.
    """
    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError) as exc:
        msg = f"{role} file {path!r} does not exist or is not a file; check the path (--{role})"
        raise ValueError(msg) from exc
    except UnicodeDecodeError as exc:
        msg = f"{role} file {path!r} is not UTF-8 text; convert it to UTF-8 JSONL or text lines"
        raise ValueError(msg) from exc
    lines = [
        (i, line.rstrip("\r")) for i, line in enumerate(text.split("\n"), start=1) if line.strip()
    ]
    if not lines:
        return [], "text"

    def as_object(line: str) -> Any:
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return None

    if not isinstance(as_object(lines[0][1]), dict):
        return [_Item(i, line, line) for i, line in lines], "text"
    items = []
    for i, line in lines:
        row = as_object(line)
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if isinstance(prompt, str):
            items.append(_Item(i, line, prompt))
            continue
        if not isinstance(row, dict):
            problem = (
                f"not a JSON object, but line {lines[0][0]} is, so the file is read as JSONL; "
                f"make every line a JSON object with a 'prompt' field (or every line a plain-text "
                f"prompt)"
            )
        else:
            what = "has no 'prompt' field" if "prompt" not in row else "has a non-string 'prompt'"
            problem = (
                f"the JSON object {what}; every JSONL row needs 'prompt' set to the prompt text "
                f"(its other fields are kept as they are)"
            )
        msg = f"{role} file {path!r} line {i}: {problem}"
        raise ValueError(msg)
    return items, "jsonl"


def dedup_file(
    input_path: str,
    output_path: str,
    existing_path: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, int]:
    """Drop near-duplicate prompts of ``input_path``; write the kept ones to ``output_path``.

    Input (and ``existing_path``) are JSONL with a ``prompt`` field or plain text, one prompt a
    line, detected per file; blank lines are skipped. Kept items are written in input order in
    the input's format (JSONL rows written back whole, as they were). Paths may be fsspec URIs.
    Returns counts: ``read``, ``kept``, ``rejected`` and ``existing``.
    """
    t = _check_threshold(threshold)
    items, _ = _read_items(input_path, "input")
    existing: list[str] = []
    if existing_path is not None:
        existing = [item.prompt for item in _read_items(existing_path, "existing")[0]]
    flags = filter_near_duplicates([item.prompt for item in items], existing, t)
    fs, out = fsspec.core.url_to_fs(output_path)
    parent = posixpath.dirname(out)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(out, "w", encoding="utf-8") as f:
        for item, keep in zip(items, flags, strict=True):
            if keep:
                f.write(item.raw + "\n")
    kept = sum(flags)
    return {
        "read": len(items),
        "kept": kept,
        "rejected": len(items) - kept,
        "existing": len(existing),
    }
