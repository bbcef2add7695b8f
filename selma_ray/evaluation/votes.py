"""Human side-by-side ratings, without HTTP or Ray: the pairs, who sees which next, the votes,
and their win rates.

Owns the core of the server's ``/compare`` page (the routes are
:mod:`selma_ray.serving.compare`) and the report's "Human ratings" section.

Pairs come from what stage 5 already drew: every item of ``eval/report.json`` whose images
``eval/images/<variant>/<item_id>.png`` exist for both variants of a variant pair; both were
drawn with the same seed (``image_seed(run seed, item_id, 0)``), so a pair differs only in the
LoRA. The variant pairs are a parameter (:attr:`CompareSettings.pairs`, ``compare_pairs`` of the
server): ordered ``(first, second)``; by default (:func:`default_pairs`) ``merged`` against every
other variant of the report (``base``, each ``expert-<skill>``, ``joint`` and whatever else
stage 5 drew), oriented so that every row of the win-rate table reads "how often merged wins".

A rater's order (:meth:`Comparisons.order`) is a shuffle of all (item, variant pair)
candidates with a random side per candidate, seeded by (run seed, rater): reproducible, and
different per rater. :meth:`Comparisons.next_pair` gives the first candidate of that order the
rater has not voted on yet. What the browser sees is a :class:`Shown`: the prompt, the seed and
an opaque token; the token is ``base64url(item_id).HMAC(key, item, left, right)``, so the
variants and their sides stay on the server (checked by recomputing the HMAC over the few
ordered pairs of that item), and any ingress replica holding the same key can check it.

Votes (:class:`VoteStore`): one JSON object per vote at ``eval/votes/<rater>-<uuid>.json``,
written once and never rewritten. Concurrent raters (threads, processes, servers) only ever
add distinct files, which is safe on a local disk (atomic rename) and on object stores (one PUT
each). A rater's second vote on the same pair is refused (:class:`AlreadyVoted`). Fields:
``id, rater, item_id, benchmark, prompt, seed, pair [first, second], left, right, choice
("A" = left, "B" = right, "tie"), winner (a variant or "tie"), time`` (UTC, ISO 8601).

Win rates (:func:`win_rates`): per variant pair, the first variant's wins / losses / ties; its
win rate is wins / (wins + losses), ties left out, with a 95 % Wilson score interval
(:func:`wilson_interval`) over those decisive votes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import logging
import math
import random
import re
import secrets
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from selma_ray import layout
from selma_ray.images.generate import image_seed
from selma_ray.seeds import derive_seed
from selma_ray.storage import RunDir

log = logging.getLogger(__name__)

__all__ = [
    "CHOICES",
    "TIE",
    "AlreadyVoted",
    "Candidate",
    "CompareSettings",
    "Comparisons",
    "NoEvalResults",
    "Shown",
    "UnknownPair",
    "VoteStore",
    "check_rater",
    "default_pairs",
    "human_ratings_html",
    "parse_pairs",
    "read_votes",
    "wilson_interval",
    "win_rates",
    "win_rates_html",
]

MERGED = "merged"
TIE = "tie"
#: What a rater may answer: the left image (A), the right one (B), or neither.
CHOICES = ("A", "B", TIE)
#: Allowed rater names: they become part of a file name.
RATER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: z of a two-sided 95 % interval.
Z95 = 1.959963984540054
_MAC_HEX = 32  # 128 bits of HMAC-SHA256

Pair = tuple[str, str]


class NoEvalResults(FileNotFoundError):
    """The run directory has no ``eval/report.json`` yet (run the eval stage)."""


class UnknownPair(ValueError):
    """A pair token this server did not hand out (or one made with another key)."""


class AlreadyVoted(ValueError):
    """The rater has already voted on this item and variant pair."""


# --------------------------------------------------------------------------- settings


def default_pairs(variants: Sequence[str]) -> list[Pair]:
    """``merged`` against every other variant, in the report's order; without ``merged``,
    every two variants in the report's order."""
    if MERGED in variants:
        return [(MERGED, v) for v in variants if v != MERGED]
    return [(a, b) for i, a in enumerate(variants) for b in variants[i + 1 :]]


def parse_pairs(text: str | Sequence[str] | Sequence[Sequence[str]] | None) -> tuple[Pair, ...]:
    """``"merged:base,joint:merged"`` (or a list of ``"a:b"`` / ``[a, b]``) -> ordered pairs.

    Raises :class:`ValueError` naming the entry at fault.
    """
    if text is None:
        return ()
    entries: list[Any] = text.split(",") if isinstance(text, str) else list(text)
    out: list[Pair] = []
    for entry in entries:
        parts = entry.split(":") if isinstance(entry, str) else list(entry)
        parts = [str(p).strip() for p in parts]
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            msg = (
                f"compare_pairs: {entry!r} is not a pair of two different variants; write "
                "FIRST:SECOND, comma-separated (e.g. merged:base,merged:expert-coco)"
            )
            raise ValueError(msg)
        pair = (parts[0], parts[1])
        if pair in out or pair[::-1] in out:
            raise ValueError(f"compare_pairs: {entry!r} is given twice")
        out.append(pair)
    return tuple(out)


def check_rater(rater: str) -> str:
    """``rater`` if it can name vote files, else :class:`ValueError` saying what is allowed."""
    if not isinstance(rater, str) or not RATER_RE.match(rater):
        msg = (
            f"rater {rater!r}: give a name of 1-64 letters, digits, '_', '.' or '-' "
            "(starting with a letter or digit)"
        )
        raise ValueError(msg)
    return rater


@dataclass(frozen=True)
class CompareSettings:
    """What the ``/compare`` routes serve (plain, picklable data).

    ``pairs`` empty means :func:`default_pairs` of the report's variants. ``key`` signs the
    pair tokens; every process that checks tokens of the same page must hold the same key, so
    it is drawn once where the settings are made and travels with them.
    """

    run_dir: str
    run_seed: int = 0
    pairs: tuple[Pair, ...] = ()
    key: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)


# --------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """One item and one variant pair (``first``, ``second`` as configured)."""

    item_id: str
    benchmark: str
    prompt: str
    seed: int
    first: str
    second: str


@dataclass(frozen=True)
class Shown:
    """A candidate as one rater sees it: ``left`` is image A, ``right`` image B.

    Only :meth:`public` goes to the browser; it names no variant.
    """

    candidate: Candidate
    left: str
    right: str
    token: str

    def public(self) -> dict[str, Any]:
        c = self.candidate
        return {"pair": self.token, "item_id": c.item_id, "prompt": c.prompt, "seed": c.seed}


def _pair_key(item_id: str, a: str, b: str) -> tuple[str, frozenset[str]]:
    return item_id, frozenset((a, b))


def _vote_key(vote: dict[str, Any]) -> tuple[str, frozenset[str]]:
    return _pair_key(str(vote["item_id"]), str(vote["left"]), str(vote["right"]))


class Comparisons:
    """The pairs of a run's eval results and the votes on them (see the module docstring).

    The report and the image listing are read on first use (a run without eval results raises
    :class:`NoEvalResults` until it has them) and kept: restart the server after re-running
    the eval stage. Thread-safe: the HTTP layer calls it from worker threads.
    """

    def __init__(self, settings: CompareSettings) -> None:
        self.settings = settings
        self.rd = RunDir(settings.run_dir)
        self.store = VoteStore(self.rd)
        self._key = settings.key.encode()
        self._lock = threading.Lock()
        self._candidates: list[Candidate] | None = None
        self._by_item: dict[str, list[Candidate]] = {}
        self._rater_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)

    # loading
    @property
    def candidates(self) -> list[Candidate]:
        with self._lock:
            if self._candidates is None:
                self._candidates = self._load()
                for c in self._candidates:
                    self._by_item.setdefault(c.item_id, []).append(c)
            return self._candidates

    def _load(self) -> list[Candidate]:
        if not self.rd.exists(*layout.eval_report()):
            msg = (
                f"no {self.rd.url(*layout.eval_report())}: run the eval stage "
                "(selma-ray run --stages eval) before rating its images"
            )
            raise NoEvalResults(msg)
        report = self.rd.read_json(*layout.eval_report())
        variants = list(report.get("variants") or {})
        pairs = list(self.settings.pairs) or default_pairs(variants)
        missing = sorted({v for p in pairs for v in p} - set(variants))
        if missing:
            msg = (
                f"compare_pairs: {missing} not in {'/'.join(layout.eval_report())}; its "
                f"variants: {variants}"
            )
            raise ValueError(msg)
        drawn = {v: set(self.rd.listdir(*layout.eval_images(v))) for v in variants}
        out = []
        for item_id, info in (report.get("items") or {}).items():
            name = f"{item_id}.png"
            for first, second in pairs:
                if name in drawn[first] and name in drawn[second]:
                    seed = image_seed(self.settings.run_seed, item_id, 0)
                    bench = str(info.get("benchmark", ""))
                    out.append(Candidate(item_id, bench, str(info["text"]), seed, first, second))
        if not out:
            msg = f"no item of {self.rd.url(*layout.eval_report())} has images for {pairs}"
            raise NoEvalResults(msg)
        return out

    # order
    def order(self, rater: str) -> list[tuple[Candidate, bool]]:
        """Every candidate once, in this rater's order, with ``swapped`` (second on the left)."""
        cands = self.candidates
        rng = random.Random(derive_seed(self.settings.run_seed, "compare", check_rater(rater)))
        idx = list(range(len(cands)))
        rng.shuffle(idx)
        return [(cands[i], rng.random() < 0.5) for i in idx]

    def token(self, item_id: str, left: str, right: str) -> str:
        mac = hmac.new(self._key, "\0".join((item_id, left, right)).encode(), hashlib.sha256)
        head = base64.urlsafe_b64encode(item_id.encode()).decode().rstrip("=")
        return f"{head}.{mac.hexdigest()[:_MAC_HEX]}"

    def shown(self, candidate: Candidate, swapped: bool) -> Shown:
        c = candidate
        left, right = (c.second, c.first) if swapped else (c.first, c.second)
        return Shown(c, left, right, self.token(c.item_id, left, right))

    def resolve(self, token: str) -> Shown:
        """The pair behind ``token``; :class:`UnknownPair` if no candidate matches it."""
        head = str(token).partition(".")[0]
        try:
            item_id = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            item_id = ""
        self.candidates  # noqa: B018 - loads _by_item
        for c in self._by_item.get(item_id, []):
            for swapped in (False, True):
                s = self.shown(c, swapped)
                if hmac.compare_digest(s.token.encode(), str(token).encode()):
                    return s
        msg = "unknown pair token (from another server or session?); load the next pair"
        raise UnknownPair(msg)

    # rating
    def next_pair(self, rater: str) -> tuple[Shown | None, int, int]:
        """(the first pair of the rater's order not voted on yet, or None when all are;
        how many of the pairs the rater voted on; how many pairs there are)."""
        order = self.order(rater)
        done = {_vote_key(v) for v in self.store.read(rater)}
        todo = [
            (c, swapped)
            for c, swapped in order
            if _pair_key(c.item_id, c.first, c.second) not in done
        ]
        shown = self.shown(*todo[0]) if todo else None
        return shown, len(order) - len(todo), len(order)

    def image(self, token: str, side: str) -> bytes:
        """PNG bytes of image ``A`` (left) or ``B`` (right) of a pair token."""
        s = self.resolve(token)
        side = side.upper()
        if side not in ("A", "B"):
            raise ValueError(f"side {side!r}: give A or B")
        variant = s.left if side == "A" else s.right
        return self.rd.read_bytes(*layout.eval_images(variant, f"{s.candidate.item_id}.png"))

    def vote(self, rater: str, token: str, choice: str) -> dict[str, Any]:
        """Record ``choice`` (``A``, ``B`` or ``tie``) of ``rater`` on a pair; returns the
        vote as written. :class:`AlreadyVoted` if the rater has voted on this pair before."""
        check_rater(rater)
        choice = TIE if str(choice).lower() == TIE else str(choice).upper()
        if choice not in CHOICES:
            raise ValueError(f"choice {choice!r}: give one of {', '.join(CHOICES)}")
        s = self.resolve(token)
        c = s.candidate
        with self._rater_lock(rater):
            if _vote_key({"item_id": c.item_id, "left": s.left, "right": s.right}) in {
                _vote_key(v) for v in self.store.read(rater)
            }:
                raise AlreadyVoted(f"{rater} already voted on this pair; load the next one")
            winner = {"A": s.left, "B": s.right, TIE: TIE}[choice]
            vote = {
                "id": uuid.uuid4().hex,
                "rater": rater,
                "item_id": c.item_id,
                "benchmark": c.benchmark,
                "prompt": c.prompt,
                "seed": c.seed,
                "pair": [c.first, c.second],
                "left": s.left,
                "right": s.right,
                "choice": choice,
                "winner": winner,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            self.store.write(vote)
        return vote

    def _rater_lock(self, rater: str) -> threading.Lock:
        with self._lock:
            return self._rater_locks[rater]


# --------------------------------------------------------------------------- votes on storage


class VoteStore:
    """The vote files of a run directory; reads only the files it has not read before."""

    def __init__(self, run_dir: str | RunDir) -> None:
        self.rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self._seen: dict[str, dict[str, Any] | None] = {}
        self._lock = threading.Lock()

    def write(self, vote: dict[str, Any]) -> layout.Parts:
        """Write one vote as a new object; returns its path parts."""
        parts = layout.eval_vote(check_rater(vote["rater"]), vote["id"])
        self.rd.write_json(vote, *parts)
        with self._lock:
            self._seen[parts[-1]] = vote
        return parts

    def read(self, rater: str | None = None) -> list[dict[str, Any]]:
        """Every vote (or ``rater``'s), oldest first; unreadable files are skipped with a
        warning."""
        names = [n for n in self.rd.listdir(*layout.eval_votes()) if n.endswith(".json")]
        if rater is not None:
            names = [n for n in names if n.removesuffix(".json").rpartition("-")[0] == rater]
        with self._lock:
            todo = [n for n in names if n not in self._seen]
        for name in todo:
            try:
                vote = self.rd.read_json(*layout.eval_votes(name))
                _check_vote(vote)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("vote %s skipped: %s", self.rd.url(*layout.eval_votes(name)), e)
                vote = None
            with self._lock:
                self._seen[name] = vote
        with self._lock:
            votes = [self._seen[n] for n in names]
        return sorted((v for v in votes if v is not None), key=lambda v: (v["time"], v["id"]))


def _check_vote(vote: Any) -> None:
    if not isinstance(vote, dict):
        raise TypeError("not a JSON object")
    for key in ("id", "rater", "item_id", "left", "right", "winner", "time"):
        if not isinstance(vote.get(key), str):
            raise ValueError(f"field {key!r} missing or not a string")
    if vote["winner"] not in (vote["left"], vote["right"], TIE):
        raise ValueError(f"winner {vote['winner']!r} is neither side nor {TIE!r}")


def read_votes(run_dir: str | RunDir) -> list[dict[str, Any]]:
    """Every vote of a run directory, oldest first."""
    return VoteStore(run_dir).read()


# --------------------------------------------------------------------------- win rates


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``n`` > 0)."""
    if n <= 0:
        raise ValueError("wilson_interval: n must be positive")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rates(votes: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant pair (as the votes' ``pair`` orders it; else alphabetically): ``first,
    second, n, wins, losses, ties, raters, win_rate, low, high`` where wins are the first
    variant's, ``win_rate = wins / (wins + losses)`` (ties left out) and ``[low, high]`` its
    95 % Wilson score interval; the three are None without a decisive vote."""
    groups: dict[Pair, list[dict[str, Any]]] = defaultdict(list)
    for v in votes:
        pair = v.get("pair")
        if not (isinstance(pair, list) and len(pair) == 2):
            pair = sorted((v["left"], v["right"]))
        groups[(str(pair[0]), str(pair[1]))].append(v)
    rows = []
    for (first, second), vs in sorted(groups.items()):
        wins = sum(v["winner"] == first for v in vs)
        losses = sum(v["winner"] == second for v in vs)
        ties = sum(v["winner"] == TIE for v in vs)
        decisive = wins + losses
        low, high = wilson_interval(wins, decisive) if decisive else (None, None)
        rows.append(
            {
                "first": first,
                "second": second,
                "n": len(vs),
                "wins": wins,
                "losses": losses,
                "ties": ties,
                "raters": len({v["rater"] for v in vs}),
                "win_rate": wins / decisive if decisive else None,
                "low": low,
                "high": high,
            }
        )
    return rows


def win_rates_html(rows: list[dict[str, Any]]) -> str:
    """The win-rate table as HTML (each row's counts also as ``data-`` attributes)."""

    def pct(x: float | None) -> str:
        return "" if x is None else f"{100 * x:.0f} %"

    body = []
    for r in rows:
        a, b = html.escape(r["first"]), html.escape(r["second"])
        ci = "" if r["low"] is None else f"{pct(r['low'])} &ndash; {pct(r['high'])}"
        body.append(
            f'<tr data-first="{a}" data-second="{b}" data-n="{r["n"]}" data-wins="{r["wins"]}" '
            f'data-losses="{r["losses"]}" data-ties="{r["ties"]}"><th>{a} vs {b}</th>'
            f"<td>{r['n']}</td><td>{r['wins']}</td><td>{r['ties']}</td><td>{r['losses']}</td>"
            f"<td>{pct(r['win_rate'])}</td><td>{ci}</td><td>{r['raters']}</td></tr>"
        )
    return (
        '<table class="votes"><thead><tr><th>pair (first vs second)</th><th>votes</th>'
        "<th>first wins</th><th>ties</th><th>second wins</th><th>first's win rate</th>"
        "<th>95 % interval</th><th>raters</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def human_ratings_html(run_dir: str | RunDir) -> str:
    """The report's "Human ratings" section; empty when the run has no votes."""
    votes = read_votes(run_dir)
    if not votes:
        return ""
    raters = len({v["rater"] for v in votes})
    return (
        "<h2>Human ratings (side by side, variants hidden)</h2>"
        f"<p>{len(votes)} vote(s) by {raters} rater(s) from the server's <code>/compare</code> "
        "page. Win rate = first variant's wins / (wins + losses), ties left out; the interval "
        "is the 95 % Wilson score interval over those decisive votes.</p>"
        f"{win_rates_html(win_rates(votes))}"
    )
