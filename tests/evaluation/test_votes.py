"""Human side-by-side ratings: pairs from the eval images, per-rater order, hidden variants,
vote files under concurrency, win rates with Wilson intervals, the report's section."""

from __future__ import annotations

import io
import json
import threading

import pytest

from selma_ray import layout
from selma_ray.evaluation.votes import (
    AlreadyVoted,
    CompareSettings,
    Comparisons,
    UnknownPair,
    default_pairs,
    human_ratings_html,
    parse_pairs,
    read_votes,
    wilson_interval,
    win_rates,
)
from selma_ray.images.generate import image_seed
from selma_ray.storage import RunDir

#: Variant -> the colour of all its eval images (merged is the only green one).
COLORS = {
    "base": (200, 0, 0),
    "merged": (0, 200, 0),
    "expert-a": (0, 0, 200),
    "expert-b": (120, 120, 120),
    "joint": (200, 0, 200),
}
ITEMS = {
    "skill-a-001": ("a red cube on a wooden table", "skills", "a"),
    "skill-b-002": ("two cats under one umbrella", "skills", "b"),
    "vrd_3": ("a bicycle leaning on a lamp post", "dsg1k", "relation"),
    "vrd_4": ("a kite above a lighthouse", "dsg1k", "relation"),
}
#: (item, variant) whose image was never drawn: its pairs are not offered.
MISSING = ("vrd_4", "expert-b")
RUN_SEED = 11


def png(color: tuple[int, int, int], size: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def write_eval_run(path: str, variants=tuple(COLORS)) -> RunDir:
    """A run directory with what stage 5 leaves: eval/report.json and one PNG per (variant,
    item), each variant in its own colour (no models)."""
    rd = RunDir(path)
    entries = {}
    for k, v in enumerate(variants):
        for item in ITEMS:
            if (item, v) != MISSING:
                rd.write_bytes(png(COLORS[v]), *layout.eval_images(v, f"{item}.png"))
        by_bench: dict[str, dict[str, float]] = {}
        for item, (_, bench, _) in ITEMS.items():
            by_bench.setdefault(bench, {})[item] = 40.0 + k
        entries[v] = {
            "dsg": {
                b: {
                    "overall": 40.0 + k,
                    "by_category": {},
                    "n_items": len(its),
                    "n_missing": 0,
                    "items": its,
                }
                for b, its in by_bench.items()
            },
            "tifa": None,
            "clip": None,
        }
    report = {
        "variants": entries,
        "benchmarks": {},
        "items": {i: {"text": t, "benchmark": b, "category": c} for i, (t, b, c) in ITEMS.items()},
        "vqa_model": "tiny:vqa",
        "clip_model": None,
        "rules": "reference",
        "notes": [],
    }
    for item, (_, bench, _) in ITEMS.items():
        report["benchmarks"].setdefault(bench, []).append(item)
    rd.write_json(report, *layout.eval_report())
    return rd


@pytest.fixture
def rd(tmp_path) -> RunDir:
    return write_eval_run(str(tmp_path / "run"))


@pytest.fixture
def settings(rd) -> CompareSettings:
    return CompareSettings(rd.uri, RUN_SEED)


def _key(item_id: str, a: str, b: str) -> tuple[str, frozenset[str]]:
    return item_id, frozenset((a, b))


# --------------------------------------------------------------------------- pairs


def test_default_pairs_put_merged_against_every_other_variant():
    variants = ["base", "expert-a", "merged", "joint"]
    assert default_pairs(variants) == [
        ("merged", "base"),
        ("merged", "expert-a"),
        ("merged", "joint"),
    ]
    assert default_pairs(["base", "x", "y"]) == [("base", "x"), ("base", "y"), ("x", "y")]
    assert parse_pairs("merged:base, joint:merged") == (("merged", "base"), ("joint", "merged"))
    assert parse_pairs([["merged", "base"]]) == (("merged", "base"),)
    for bad in ("merged", "merged:merged", "a:b:c", "merged:base,base:merged", ":base"):
        with pytest.raises(ValueError, match="compare_pairs"):
            parse_pairs(bad)


def test_pairs_are_the_drawn_items_of_each_variant_pair_with_the_items_seed(settings):
    cands = Comparisons(settings).candidates
    expected = {
        (item, "merged", other)
        for item in ITEMS
        for other in ("base", "expert-a", "expert-b", "joint")
        if (item, other) != MISSING
    }
    assert {(c.item_id, c.first, c.second) for c in cands} == expected
    assert len(cands) == len(expected) == 4 * 4 - 1
    for c in cands:
        assert c.seed == image_seed(RUN_SEED, c.item_id, 0)
        assert c.prompt == ITEMS[c.item_id][0] and c.benchmark == ITEMS[c.item_id][1]


def test_configured_pairs_must_name_report_variants(settings):
    chosen = CompareSettings(settings.run_dir, RUN_SEED, parse_pairs("joint:merged"))
    cands = Comparisons(chosen).candidates
    assert {(c.first, c.second) for c in cands} == {("joint", "merged")}
    assert len(cands) == len(ITEMS)
    wrong = CompareSettings(settings.run_dir, RUN_SEED, parse_pairs("merged:nope"))
    with pytest.raises(ValueError, match=r"\['nope'\].*its variants"):
        Comparisons(wrong).candidates  # noqa: B018


def test_rater_order_is_random_reproducible_and_per_rater(settings):
    a = Comparisons(settings)
    order = a.order("ann")
    # the same on another server with another token key: it depends on run seed and rater only
    other_server = Comparisons(CompareSettings(settings.run_dir, RUN_SEED))
    assert other_server.order("ann") == order
    assert len(order) == len(a.candidates) and {c for c, _ in order} == set(a.candidates)
    assert [c for c, _ in order] != a.candidates  # shuffled
    swapped = sum(s for _, s in order)
    assert 0 < swapped < len(order)  # both sides occur
    assert a.order("bob") != order
    assert Comparisons(CompareSettings(settings.run_dir, RUN_SEED + 1)).order("ann") != order


def test_next_pair_follows_the_order_and_never_repeats_a_voted_pair(settings):
    comp = Comparisons(settings)
    order = comp.order("ann")
    seen = []
    while True:
        shown, voted, total = comp.next_pair("ann")
        assert (voted, total) == (len(seen), len(order))
        if shown is None:
            break
        cand, swapped = order[len(seen)]
        assert shown.candidate == cand
        sides = (cand.second, cand.first) if swapped else (cand.first, cand.second)
        assert (shown.left, shown.right) == sides
        comp.vote("ann", shown.token, "A")
        seen.append(_key(cand.item_id, cand.first, cand.second))
    assert len(set(seen)) == len(seen) == len(order)
    # another rater starts from the beginning of their own order
    assert comp.next_pair("bob")[0].candidate == comp.order("bob")[0][0]


def test_what_the_browser_gets_names_no_variant(settings, rd):
    comp = Comparisons(settings)
    for rater in ("ann", "bob", "cy"):
        shown = comp.next_pair(rater)[0]
        public = json.dumps(shown.public())
        assert set(shown.public()) == {"pair", "item_id", "prompt", "seed"}
        for variant in COLORS:
            assert variant not in public.replace(shown.candidate.prompt, "")
        # the token resolves to the pair and sides it was made for, and serves their images
        again = comp.resolve(shown.token)
        assert (again.left, again.right) == (shown.left, shown.right)
        item = f"{shown.candidate.item_id}.png"
        assert comp.image(shown.token, "A") == rd.read_bytes(*layout.eval_images(shown.left, item))
        assert comp.image(shown.token, "b") == rd.read_bytes(*layout.eval_images(shown.right, item))
    token = comp.next_pair("ann")[0].token
    head, mac = token.split(".")
    forged = f"{head}.{'0' * len(mac)}"
    for bad in (forged, "x", "", f"{head}.{mac}0"):
        with pytest.raises(UnknownPair):
            comp.resolve(bad)
    # another key (another server's) does not accept it either
    with pytest.raises(UnknownPair):
        Comparisons(CompareSettings(settings.run_dir, RUN_SEED)).resolve(token)


def test_a_vote_is_one_file_with_the_pair_and_a_second_vote_is_refused(settings, rd):
    comp = Comparisons(settings)
    shown = comp.next_pair("ann")[0]
    vote = comp.vote("ann", shown.token, "B")
    c = shown.candidate
    assert vote["winner"] == shown.right and vote["choice"] == "B"
    assert {k: vote[k] for k in ("rater", "item_id", "prompt", "seed", "left", "right")} == {
        "rater": "ann",
        "item_id": c.item_id,
        "prompt": c.prompt,
        "seed": image_seed(RUN_SEED, c.item_id, 0),
        "left": shown.left,
        "right": shown.right,
    }
    assert vote["pair"] == [c.first, c.second] and vote["time"].endswith("Z")
    assert rd.read_json(*layout.eval_vote("ann", vote["id"])) == vote
    assert rd.listdir(*layout.eval_votes()) == [f"ann-{vote['id']}.json"]
    # the same pair again, on either side, by the same rater: refused; by another: recorded
    for token in (shown.token, comp.shown(c, shown.left == c.first).token):
        with pytest.raises(AlreadyVoted):
            comp.vote("ann", token, "A")
    assert comp.vote("bob", shown.token, "tie")["winner"] == "tie"
    with pytest.raises(ValueError, match="choice"):
        comp.vote("cy", shown.token, "C")
    with pytest.raises(ValueError, match="rater"):
        comp.vote("../x", shown.token, "A")
    assert len(read_votes(rd)) == 2


def test_concurrent_vote_writers_from_threads_all_land(settings, rd):
    """Eight raters vote at once, half through a shared core and half through their own
    (as separate servers would): every vote is its own file and all are read back."""
    shared = Comparisons(settings)
    raters = [f"r{i}" for i in range(8)]
    per_rater = 6
    start = threading.Barrier(len(raters))
    errors: list[BaseException] = []

    def rate(i: int, rater: str) -> None:
        comp = shared if i % 2 else Comparisons(settings)
        try:
            start.wait()
            for k in range(per_rater):
                shown = comp.next_pair(rater)[0]
                comp.vote(rater, shown.token, ("A", "B", "tie")[k % 3])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=rate, args=(i, r)) for i, r in enumerate(raters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    votes = read_votes(rd)
    assert len(votes) == len(raters) * per_rater
    assert len({v["id"] for v in votes}) == len(votes)
    for r in raters:
        mine = [v for v in votes if v["rater"] == r]
        assert len({_key(v["item_id"], v["left"], v["right"]) for v in mine}) == per_rater
    names = rd.listdir(*layout.eval_votes())
    assert len(names) == len(votes) and all(n.endswith(".json") for n in names)


# --------------------------------------------------------------------------- win rates


def _vote(i: int, first: str, second: str, winner: str, rater: str = "ann") -> dict:
    left, right = (first, second) if i % 2 else (second, first)
    return {
        "id": f"{i:04d}",
        "rater": rater,
        "item_id": f"item{i}",
        "pair": [first, second],
        "left": left,
        "right": right,
        "winner": winner,
        "time": "2025-01-01T00:00:00Z",
    }


def test_wilson_interval_matches_a_hand_computation():
    # p = 8/10, z = 1.96: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.71675,
    # half z * sqrt(0.016 + z^2/400) / (1 + z^2/10) = 0.22658
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49016, abs=5e-5) and high == pytest.approx(0.94333, abs=5e-5)
    # 0 of 5: centre = half = (z^2/10) / (1 + z^2/5) = 0.21724
    assert wilson_interval(0, 5) == pytest.approx((0.0, 0.43449), abs=5e-5)
    assert wilson_interval(5, 5) == pytest.approx((0.56551, 1.0), abs=5e-5)


def test_win_rates_count_each_pair_and_leave_ties_out_of_the_rate():
    votes = (
        [_vote(i, "merged", "base", "merged", rater=f"r{i % 3}") for i in range(8)]
        + [_vote(10 + i, "merged", "base", "base") for i in range(2)]
        + [_vote(20 + i, "merged", "base", "tie") for i in range(3)]
        + [_vote(30 + i, "merged", "joint", "tie") for i in range(2)]
        + [_vote(40 + i, "merged", "expert-a", "expert-a") for i in range(5)]
    )
    rows = {(r["first"], r["second"]): r for r in win_rates(votes)}
    assert list(rows) == [("merged", "base"), ("merged", "expert-a"), ("merged", "joint")]
    mb = rows["merged", "base"]
    # raters r0, r1, r2 and ann
    assert (mb["n"], mb["wins"], mb["losses"], mb["ties"], mb["raters"]) == (13, 8, 2, 3, 4)
    assert mb["win_rate"] == pytest.approx(0.8)
    assert (mb["low"], mb["high"]) == pytest.approx((0.49016, 0.94333), abs=5e-5)
    me = rows["merged", "expert-a"]
    assert (me["wins"], me["losses"], me["win_rate"]) == (0, 5, 0.0)
    assert (me["low"], me["high"]) == pytest.approx((0.0, 0.43449), abs=5e-5)
    mj = rows["merged", "joint"]
    assert (mj["n"], mj["ties"], mj["win_rate"], mj["low"]) == (2, 2, None, None)


def test_report_has_a_human_ratings_section_and_report_json_stays_as_it_was(settings, rd):
    from selma_ray.evaluation.report import build_report

    assert human_ratings_html(rd) == ""
    build_report(rd)
    assert "Human ratings" not in rd.read_text(*layout.eval_report_html())
    before = rd.read_bytes(*layout.eval_report())
    comp = Comparisons(settings)
    for rater, choice in (("ann", "A"), ("ann", "B"), ("bob", "tie")):
        comp.vote(rater, comp.next_pair(rater)[0].token, choice)
    build_report(rd)
    page = rd.read_text(*layout.eval_report_html())
    assert "Human ratings" in page and "3 vote(s) by 2 rater(s)" in page
    total = sum(r["n"] for r in win_rates(read_votes(rd)))
    assert total == 3 and page.count("<tr data-first=") == len(win_rates(read_votes(rd)))
    assert rd.read_bytes(*layout.eval_report()) == before
