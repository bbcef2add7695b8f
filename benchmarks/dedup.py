"""Benchmark: the fast ROUGE-L near-duplicate filter against SELMA's straightforward loop.

    python benchmarks/dedup.py [--n 5000] [--growth 10000,30000,100000] [--threshold 0.8]
                               [--seed 0] [--reference-n N --extrapolate]

Builds realistic text-to-image prompts deterministically (templated scenes over a Zipf-like
vocabulary with a long tail of rare words, plus near-duplicates made by word swaps, insertions,
deletions, substitutions, case and punctuation changes, and exact repeats), times
``reference_filter`` and ``filter_near_duplicates`` on the same N candidates, checks that their
decisions are identical and prints the speed ratio; then times the fast filter alone on the
growth sizes and prints the time per candidate, so near-linear growth is visible.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    from selma_ray.prompts.dedup import filter_near_duplicates, reference_filter
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from selma_ray.prompts.dedup import filter_near_duplicates, reference_filter

# --- a self-contained prompt generator ---------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_NOUNS = _words(
    "cat dog horse bird car bicycle table chair cup bowl apple banana lamp book clock tree "
    "flower house bridge boat train bus umbrella kite bench vase guitar piano robot dragon fox "
    "owl rabbit elephant giraffe zebra bear tiger lion penguin teapot sandwich pizza cake "
    "laptop phone window door mountain river lake forest castle tower street garden beach"
)
_ADJECTIVES = _words(
    "red blue green yellow black white purple orange pink brown small large tiny huge old new "
    "shiny wooden metal glass fluffy striped spotted wet dry glowing ancient modern broken "
    "golden silver round square tall short happy sleepy angry cozy"
)
_VERBS = _words(
    "sitting standing running jumping sleeping flying eating reading playing swimming "
    "dancing resting walking floating hanging leaning"
)
_PREPOSITIONS = (
    "on",
    "under",
    "next to",
    "behind",
    "in front of",
    "above",
    "below",
    "beside",
    "near",
    "inside",
    "on top of",
    "to the left of",
    "to the right of",
)
_PLACES = (
    "a kitchen",
    "a park",
    "the city",
    "a desert",
    "the snow",
    "a library",
    "a meadow",
    "the ocean",
    "a busy street",
    "a quiet room",
    "the mountains",
    "a forest clearing",
)
_STYLES = (
    "a photo of",
    "a painting of",
    "a watercolor of",
    "a sketch of",
    "a 3d render of",
    "an illustration of",
    "a close-up photo of",
    "an oil painting of",
    "a cartoon of",
)
_EXTRAS = (
    "at sunset",
    "in the rain",
    "at night",
    "in the morning",
    "under a blue sky",
    "highly detailed",
    "soft lighting",
    "studio lighting",
    "8k",
    "trending on artstation",
)
_COUNTS = ("two", "three", "four", "five", "six", "seven", "a few", "many")
_SYLLABLES = _words(
    "ka ri to mo na shi el an or ve lu pa zo qui tra bel mon dar sen fi go wen lor ith"
)


class PromptGenerator:
    """Deterministic prompts: templated scenes, a Zipf-like long tail, near-duplicates."""

    def __init__(self, seed: int, tail_words: int = 30000, dup_rate: float = 0.35) -> None:
        self.rng = random.Random(seed)
        self.dup_rate = dup_rate
        words: set[str] = set()
        while len(words) < tail_words:  # pseudo-words: the long tail of a real vocabulary
            k = self.rng.choice((2, 2, 3, 3, 4))
            words.add("".join(self.rng.choice(_SYLLABLES) for _ in range(k)))
        self.tail = sorted(words)
        self.rng.shuffle(self.tail)
        # Zipf-like weights: word of rank r has weight 1 / r**1.07.
        self.tail_cum = list(
            itertools.accumulate(1.0 / (r**1.07) for r in range(1, tail_words + 1))
        )
        self.history: list[str] = []

    def _zipf(self, items: tuple[str, ...] | list[str], s: float = 1.1) -> str:
        weights = [1.0 / (r**s) for r in range(1, len(items) + 1)]
        return self.rng.choices(items, weights=weights)[0]

    def _tail_word(self) -> str:
        x = self.rng.random() * self.tail_cum[-1]
        return self.tail[bisect.bisect_left(self.tail_cum, x)]

    def _noun(self) -> str:
        return self._tail_word() if self.rng.random() < 0.35 else self._zipf(_NOUNS)

    def _adj(self) -> str:
        return self._tail_word() if self.rng.random() < 0.2 else self._zipf(_ADJECTIVES)

    def _fresh(self) -> str:
        r = self.rng
        template = r.randrange(5)
        if template == 0:
            text = (
                f"{self._zipf(_STYLES)} a {self._adj()} {self._noun()} {self._zipf(_VERBS)} "
                f"{self._zipf(_PREPOSITIONS)} a {self._adj()} {self._noun()}"
            )
        elif template == 1:
            text = (
                f"{self._zipf(_COUNTS)} {self._adj()} {self._noun()}s and a {self._noun()} "
                f"in {self._zipf(_PLACES)}"
            )
        elif template == 2:
            text = (
                f"a {self._adj()} {self._noun()} {self._zipf(_PREPOSITIONS)} the {self._noun()}, "
                f"{self._zipf(_EXTRAS)}"
            )
        elif template == 3:
            text = (
                f"{self._zipf(_STYLES)} {self._zipf(_PLACES)} with a {self._adj()} "
                f"{self._noun()} and a {self._adj()} {self._noun()} {self._zipf(_EXTRAS)}"
            )
        else:
            n = r.randrange(4, 16)
            text = " ".join(
                self._tail_word() if r.random() < 0.5 else self._zipf(_NOUNS + _ADJECTIVES)
                for _ in range(n)
            )
        if r.random() < 0.3:
            text += ", " + self._zipf(_EXTRAS)
        return text[0].upper() + text[1:] + ("." if r.random() < 0.5 else "")

    def _near_duplicate(self) -> str:
        r = self.rng
        # Mostly recent prompts (LLM batches repeat themselves), sometimes any earlier one.
        if r.random() < 0.7:
            source = self.history[-r.randrange(1, min(len(self.history), 200) + 1)]
        else:
            source = r.choice(self.history)
        if r.random() < 0.15:
            return source  # exact repeat
        words = source.split()
        for _ in range(r.choice((1, 1, 1, 2, 2, 3))):
            op = r.random()
            if op < 0.25 and len(words) > 1:
                i = r.randrange(len(words) - 1)
                words[i], words[i + 1] = words[i + 1], words[i]
            elif op < 0.5:
                words.insert(r.randrange(len(words) + 1), self._adj())
            elif op < 0.7 and len(words) > 2:
                words.pop(r.randrange(len(words)))
            elif op < 0.9:
                words[r.randrange(len(words))] = self._noun()
            else:
                words.append(self._zipf(_EXTRAS))
        text = " ".join(words)
        if r.random() < 0.1:
            text = text.upper() if r.random() < 0.5 else text.lower()
        if r.random() < 0.1:
            text = text.rstrip(".") + "!"
        return text

    def take(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            if self.history and self.rng.random() < self.dup_rate:
                text = self._near_duplicate()
            else:
                text = self._fresh()
            self.history.append(text)
            out.append(text)
        return out


def make_prompts(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``(existing, candidates)``: 50 seed captions and ``n`` generated candidates."""
    gen = PromptGenerator(seed)
    existing = gen.take(50)
    return existing, gen.take(n)


# --- the benchmark -----------------------------------------------------------------------------


def _timed(
    fn: Callable[[list[str], list[str], float], list[bool]],
    candidates: list[str],
    existing: list[str],
    threshold: float,
) -> tuple[float, list[bool]]:
    t0 = time.perf_counter()
    out = fn(candidates, existing, threshold)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000, help="candidates for the side-by-side timing")
    p.add_argument(
        "--growth",
        default="10000,30000,100000",
        help="comma-separated candidate counts timed with the fast filter only ('' for none)",
    )
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--reference-n",
        type=int,
        default=None,
        help="run the reference loop on the first N candidates only (default: all --n)",
    )
    p.add_argument(
        "--extrapolate",
        action="store_true",
        help="with --reference-n: estimate the reference time on --n (quadratic in kept prompts)",
    )
    args = p.parse_args(argv)
    try:
        growth = [int(x) for x in args.growth.split(",") if x.strip()]
    except ValueError:
        p.error(f"--growth must be comma-separated integers, got {args.growth!r}")
    ref_n = args.n if args.reference_n is None else args.reference_n
    if not 0 < ref_n <= args.n:
        p.error(f"--reference-n must be in [1, --n={args.n}], got {ref_n}")
    if ref_n < args.n and not args.extrapolate:
        p.error("--reference-n below --n needs --extrapolate (the ratio is then an estimate)")

    existing, candidates = make_prompts(max([args.n, *growth]), args.seed)
    cands = candidates[: args.n]
    lengths = sorted(len(c.split()) for c in cands)
    print(
        f"{args.n} candidates + {len(existing)} existing, threshold {args.threshold}, seed "
        f"{args.seed}; words per prompt: median {lengths[len(lengths) // 2]}, max {lengths[-1]}"
    )

    def fast_best_of_3(subset: list[str]) -> tuple[float, list[bool]]:
        runs = [_timed(filter_near_duplicates, subset, existing, args.threshold) for _ in range(3)]
        return min(t for t, _ in runs), runs[0][1]

    t_fast, fast = fast_best_of_3(cands)
    t_ref, ref = _timed(reference_filter, cands[:ref_n], existing, args.threshold)
    if ref != fast[:ref_n]:
        bad = next(i for i, (a, b) in enumerate(zip(ref, fast[:ref_n], strict=True)) if a != b)
        print(
            f"MISMATCH at candidate {bad}: reference {ref[bad]}, fast {fast[bad]}: {cands[bad]!r}"
        )
        return 1
    print(f"decisions identical on {ref_n} candidates ({sum(ref)} kept)")
    print()
    print(f"{'filter':<30} {'candidates':>10} {'seconds':>10} {'kept':>7} {'speed-up':>9}")

    def row(label: str, n: int, seconds: float, kept: object, ratio: float) -> None:
        print(f"{label:<30} {n:>10} {seconds:>10.3f} {kept!s:>7} {ratio:>8.1f}x")

    if ref_n < args.n:
        t_fast_sub, _ = fast_best_of_3(cands[:ref_n])
        row("reference loop (measured)", ref_n, t_ref, sum(ref), 1.0)
        row("fast filter", ref_n, t_fast_sub, sum(ref), t_ref / t_fast_sub)

        # The reference cost is ~ the pairs it scores, ~ sum over candidates of kept-so-far.
        def pairs(flags: list[bool]) -> int:
            kept, total = len(existing), 0
            for f in flags:
                total += kept
                kept += f
            return total

        ref_total = t_ref * pairs(fast) / max(pairs(fast[:ref_n]), 1)
        row("reference loop (extrapolated)", args.n, ref_total, "-", 1.0)
        row("fast filter", args.n, t_fast, sum(fast), ref_total / t_fast)
    else:
        row("reference loop", args.n, t_ref, sum(ref), 1.0)
        row("fast filter", args.n, t_fast, sum(fast), t_ref / t_fast)

    if growth:
        print()
        print(f"{'candidates':>10} {'fast s':>9} {'us/candidate':>13} {'kept':>8}  (fast filter)")
        for n in growth:
            t, flags = _timed(filter_near_duplicates, candidates[:n], existing, args.threshold)
            print(f"{n:>10} {t:>9.3f} {t / n * 1e6:>13.1f} {sum(flags):>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
