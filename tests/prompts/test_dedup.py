"""The fast ROUGE-L near-duplicate filter makes exactly SELMA's (rouge-score's) decisions."""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path

import fsspec
import pytest
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize

from selma_ray.prompts.dedup import (
    _lcs_length,
    dedup_file,
    filter_near_duplicates,
    reference_filter,
    tokenize,
)

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
_SMALL_VOCABULARY = "a the red blue green cat dog bird on under next to table chair big small photo"
_WORDS = tuple((_SMALL_VOCABULARY + " of two three four sits runs").split())


def _rouge_f(target: str, prediction: str) -> float:
    return _SCORER.score(target, prediction)["rougeL"].fmeasure


def _near_duplicate_prompts(n: int, seed: int) -> list[str]:
    """Prompts from a small vocabulary, many of them edits / repeats / variants of earlier ones."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        r = rng.random()
        if out and r < 0.70:
            words = rng.choice(out[-50:] if rng.random() < 0.3 else out).split()
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                op = rng.random()
                if op < 0.25 and len(words) > 1:
                    i = rng.randrange(len(words) - 1)
                    words[i], words[i + 1] = words[i + 1], words[i]
                elif op < 0.5:
                    words.insert(rng.randrange(len(words) + 1), rng.choice(_WORDS))
                elif op < 0.7 and words:
                    words.pop(rng.randrange(len(words)))
                elif op < 0.85 and words:
                    words[rng.randrange(len(words))] = rng.choice(_WORDS)
            text = " ".join(words)
            variant = rng.random()
            if variant < 0.1:
                text = text.upper()
            elif variant < 0.2:
                text = text.replace(" ", ", ", 1) + "!"
            elif variant < 0.25:
                text = f"  {text}...  "
            out.append(text)
        elif out and r < 0.84:
            out.append(rng.choice(out))  # exact repeat
        elif r < 0.90:
            out.append(rng.choice(("", "   ", "!!!", "a", "cat", "a cat", "-- ?")))
        else:
            length = rng.choice((1, 2, 3, 4, 5, 5, 6, 6, 7, 8, 9, 10, 12))
            out.append(" ".join(rng.choice(_WORDS) for _ in range(length)))
    return out


@cache
def _corpus() -> tuple[list[str], list[str]]:
    prompts = _near_duplicate_prompts(2040, seed=7)
    return prompts[:40], prompts[40:]  # existing (seed captions), candidates


# --- tokenizer and LCS ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["A Photo of TWO cats!", "red-and-blue  car,on a\ttable", "", "!!!", "héllo wörld 4x", "a_b"],
)
def test_tokenize_is_rouge_scores_tokenizer(text: str) -> None:
    assert tokenize(text) == rouge_tokenize.tokenize(text, None)


def test_bit_parallel_lcs_matches_dynamic_programming() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        a = tuple(rng.randrange(4) for _ in range(rng.randrange(1, 40)))
        b = tuple(rng.randrange(4) for _ in range(rng.randrange(1, 40)))
        masks: dict[int, int] = {}
        for i, c in enumerate(a):
            masks[c] = masks.get(c, 0) | (1 << i)
        expected = rouge_scorer._lcs_table(a, b)[-1][-1]
        assert _lcs_length(masks, (1 << len(a)) - 1, len(a), b) == expected


# --- same decisions as the reference loop -----------------------------------------------------


@pytest.mark.parametrize("threshold", [0.8, 0.7, 0.5])
def test_same_decisions_as_reference_on_near_duplicates(threshold: float) -> None:
    existing, candidates = _corpus()
    expected = reference_filter(candidates, existing, threshold)
    got = filter_near_duplicates(candidates, existing, threshold)
    assert got == expected
    # The corpus really exercises the rule: many rejections, many keeps.
    assert 0.1 * len(candidates) < expected.count(False) < 0.9 * len(candidates)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.6, 0.75, 0.9, 0.95, 1.0])
def test_same_decisions_as_reference_at_other_thresholds(threshold: float) -> None:
    prompts = _near_duplicate_prompts(400, seed=11)
    expected = reference_filter(prompts[20:], prompts[:20], threshold)
    assert filter_near_duplicates(prompts[20:], prompts[:20], threshold) == expected


def test_same_decisions_on_long_prompts() -> None:
    # Lengths past the stored-rank width and the 3-subset key cap, with few distinct words.
    rng = random.Random(5)
    base = [
        " ".join(rng.choice(_WORDS[:8]) for _ in range(rng.randrange(20, 60))) for _ in range(30)
    ]
    prompts = []
    for _ in range(120):
        words = rng.choice(base).split()
        for _ in range(rng.randrange(0, 8)):
            words[rng.randrange(len(words))] = rng.choice(_WORDS)
        prompts.append(" ".join(words))
    for threshold in (0.8, 0.6):
        assert filter_near_duplicates(prompts, (), threshold) == reference_filter(
            prompts, (), threshold
        )


# Pairs whose exact F (2*LCS/(m+n)) equals the threshold: rouge-score's float F decides, and it
# lands above the threshold for some (0.8000000000000002) and exactly on it for others.
_BOUNDARY = [
    ("a b c d e", "a b c d f", 0.8),  # LCS 4, lengths 5 and 5: float F 0.8000000000000002
    ("a b c d e f g h i j", "a b c d e f g h x y", 0.8),  # LCS 8 of 10 and 10
    ("a b", "a b c", 0.8),  # LCS 2, lengths 2 and 3: float F exactly 0.8
    ("a b c d", "a b c d e f", 0.8),  # LCS 4, lengths 4 and 6
    ("a b c d e f g h i j", "a b c d e f g x y z", 0.7),  # LCS 7 of 10 and 10
    ("a b", "a c", 0.5),  # LCS 1 of 2 and 2
    ("cat dog", "CAT, DOG!", 1.0),  # identical tokens: F is exactly 1.0, not above 1.0
]


@pytest.mark.parametrize(("kept", "candidate", "threshold"), _BOUNDARY)
def test_boundary_f_equal_to_threshold_decided_like_rouge_score(
    kept: str, candidate: str, threshold: float
) -> None:
    rejected = _rouge_f(kept, candidate) > threshold
    assert filter_near_duplicates([candidate], [kept], threshold) == [not rejected]
    assert filter_near_duplicates([kept, candidate], (), threshold) == [True, not rejected]
    assert reference_filter([candidate], [kept], threshold) == [not rejected]


def test_boundary_cases_fall_on_both_sides() -> None:
    # Guards the test above: equal exact F is rejected in some cases and kept in others.
    flags = [filter_near_duplicates([c], [k], t)[0] for k, c, t in _BOUNDARY]
    assert flags[0] is False and flags[1] is False  # float F 0.8000000000000002 > 0.8
    assert flags[2] is True and flags[3] is True and flags[6] is True


def test_existing_prompts_count_as_kept_from_the_start() -> None:
    existing = ["a red cat sitting on a wooden table", "two dogs running in a park"]
    candidates = [
        "A red cat sitting on a wooden table!",  # the tokens of existing[0]: F 1.0
        "a red cat sitting on the wooden table",  # F 14/16 with existing[0] and candidates[0]
        "two dogs running in the park",  # F 10/12 with existing[1]
        "a blue bird flying over the sea",
        "a blue bird flying over the sea at night",  # F 14/16 with candidates[3]
    ]
    assert filter_near_duplicates(candidates, existing) == [False, False, False, True, False]
    assert reference_filter(candidates, existing) == [False, False, False, True, False]
    assert filter_near_duplicates(candidates) == [True, False, True, True, False]


def test_decisions_follow_input_order() -> None:
    a = "a red cat sits on the green mat"
    b = "a red cat sits on the blue mat"  # F(a, b) = F(b, c) = 14/16
    c = "a red cat lies on the blue mat"  # F(a, c) = 12/16
    assert filter_near_duplicates([a, b, c]) == [True, False, True]
    assert filter_near_duplicates([b, a, c]) == [True, False, False]
    assert filter_near_duplicates([c, a, b]) == [True, True, False]
    _, candidates = _corpus()
    reordered = candidates[::-1][:400]
    assert filter_near_duplicates(reordered) == reference_filter(reordered)


def test_empty_and_punctuation_only_prompts_are_never_rejected() -> None:
    candidates = ["", "   ", "!!!", "", "a", "a", "A.", "-- ?"]
    assert filter_near_duplicates(candidates, ["", "!!"]) == [
        True,
        True,
        True,
        True,
        True,
        False,
        False,
        True,
    ]
    assert filter_near_duplicates(candidates, threshold=1.0) == [True] * len(candidates)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "high", None])
def test_bad_threshold_is_a_value_error_naming_threshold(bad: object) -> None:
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\]"):
        filter_near_duplicates(["a cat"], threshold=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        reference_filter(["a cat"], threshold=bad)  # type: ignore[arg-type]


def test_a_single_string_instead_of_a_list_is_rejected() -> None:
    with pytest.raises(TypeError, match="candidates must be a sequence of prompt strings"):
        filter_near_duplicates("a cat on a mat")
    with pytest.raises(TypeError, match=r"existing\[1\] must be a string"):
        filter_near_duplicates(["a cat"], ["a dog", 3])  # type: ignore[list-item]


# --- files ------------------------------------------------------------------------------------


def test_dedup_file_jsonl_round_trip(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a red cat sitting on a wooden table", "skill": "color", "id": 1},
        {"prompt": "A red cat sitting on a wooden table.", "skill": "color", "id": 2},
        {"prompt": "two dogs running in a park", "extra": {"nested": [1, 2]}, "id": 3},
        {"prompt": "a blue bird flying over the sea", "id": 4},
    ]
    lines = [json.dumps(r) for r in rows]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("a blue bird flying over the sea today\n")
    out = tmp_path / "sub" / "out.jsonl"

    counts = dedup_file(str(src), str(out), existing_path=str(seeds))

    assert counts == {"read": 4, "kept": 2, "rejected": 2, "existing": 1}
    assert out.read_text() == lines[0] + "\n" + lines[2] + "\n"  # rows kept whole, in order


def test_dedup_file_plain_text_lines_and_fsspec_uris() -> None:
    lines = ["a red cat on a mat", "A RED CAT ON A MAT!", "", "the quick brown fox"]
    text = "\n".join([*lines, "the quick brown fox jumps"]) + "\n"
    with fsspec.open("memory://dedup-test/in.txt", "w") as f:
        f.write(text)
    with fsspec.open("memory://dedup-test/seeds.jsonl", "w") as f:
        f.write(json.dumps({"prompt": "the lazy dog sleeps"}) + "\n")

    counts = dedup_file(
        "memory://dedup-test/in.txt",
        "memory://dedup-test/out.txt",
        existing_path="memory://dedup-test/seeds.jsonl",
        threshold=0.9,
    )

    assert counts == {"read": 4, "kept": 3, "rejected": 1, "existing": 1}
    with fsspec.open("memory://dedup-test/out.txt", "r") as f:
        assert f.read() == "a red cat on a mat\nthe quick brown fox\nthe quick brown fox jumps\n"


def test_dedup_file_matches_filter_on_a_larger_file(tmp_path: Path) -> None:
    _, candidates = _corpus()
    kept_texts = [c for c in candidates if c.strip()]
    src = tmp_path / "prompts.jsonl"
    src.write_text(
        "".join(json.dumps({"prompt": c, "i": i}) + "\n" for i, c in enumerate(kept_texts))
    )
    counts = dedup_file(str(src), str(tmp_path / "out.jsonl"))
    flags = filter_near_duplicates(kept_texts)
    assert counts["kept"] == sum(flags) and counts["read"] == len(kept_texts)
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["i"] for r in written] == [i for i, keep in enumerate(flags) if keep]


def test_jsonl_line_without_prompt_names_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "a cat"}\n{"prompt": "a dog"}\n{"text": "a bird"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl' line 3: .*no 'prompt' field") as err:
        dedup_file(str(src), str(tmp_path / "out.jsonl"))
    assert "every JSONL row needs 'prompt'" in str(err.value)
    assert not (tmp_path / "out.jsonl").exists()


def test_jsonl_with_a_non_json_line_names_the_line(tmp_path: Path) -> None:
    src = tmp_path / "mixed.jsonl"
    src.write_text('{"prompt": "a cat"}\n\nnot json at all\n')
    with pytest.raises(ValueError, match=r"mixed\.jsonl' line 3: not a JSON object, but line 1"):
        dedup_file(str(src), str(tmp_path / "out.jsonl"))


def test_bad_existing_file_and_missing_files_are_value_errors(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("a cat\n")
    with pytest.raises(ValueError, match=r"input file .*nope\.txt.* check the path \(--input\)"):
        dedup_file(str(tmp_path / "nope.txt"), str(tmp_path / "out.txt"))
    with pytest.raises(ValueError, match=r"existing file .*seeds\.txt.*--existing"):
        dedup_file(str(src), str(tmp_path / "out.txt"), existing_path=str(tmp_path / "seeds.txt"))
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"prompt": 3}\n')
    with pytest.raises(ValueError, match=r"existing file .*seeds\.jsonl' line 1: .*non-string"):
        dedup_file(str(src), str(tmp_path / "out.txt"), existing_path=str(seeds))
    with pytest.raises(ValueError, match="threshold"):
        dedup_file(str(src), str(tmp_path / "out.txt"), threshold=2)
