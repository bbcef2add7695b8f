"""The self-instruct loop: targets, stats, determinism, resume, and outputs."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from selma_ray.config import load_config
from selma_ray.prompts.dedup import reference_filter
from selma_ray.prompts.engines import make_engine
from selma_ray.prompts.stage import generate_prompts, load_state
from selma_ray.storage import RunDir


def _cfg(*extra):
    return load_config(
        overrides=["prompts.num_prompts=30", "prompts.prompts_per_request=8", *extra]
    ).prompts


def test_reaches_target_with_consistent_stats(tmp_path):
    cfg = _cfg()
    rd = RunDir(str(tmp_path))
    stats = generate_prompts(cfg, rd, make_engine(cfg), seed=0)
    assert set(stats) == {s.name for s in cfg.skills}
    for skill in cfg.skills:
        s = stats[skill.name]
        assert s["accepted"] == 30
        # 8 per request, 1 request per round: at least 4 rounds to reach 30
        assert s["rounds"] >= 4 and s["requested"] == 8 * s["rounds"]
        assert s["parsed"] == s["accepted"] + sum(s["dropped"].values())
        rows = rd.read_jsonl("prompts", f"{skill.name}.jsonl")
        assert [r["id"] for r in rows] == [f"{skill.name}-{i:05d}" for i in range(30)]
        assert all(r["skill"] == skill.name and r["engine"] == "scene-graph" for r in rows)
        assert all(len(r["prompt"].split()) <= skill.word_limit for r in rows)
        # SELMA's rule holds on the output: no prompt is a near-duplicate of an earlier one
        # or of a seed
        texts = [r["prompt"] for r in rows]
        assert all(reference_filter(texts, skill.seeds, threshold=0.8))
        # scene-graph prompts come with their DSG questions
        assert all(r["questions"] and r["questions"][0]["category_broad"] == "entity" for r in rows)
        table = pq.read_table(rd.path("prompts", f"{skill.name}.parquet"))
        assert table.column("prompt").to_pylist() == texts
        assert json.loads(table.column("questions")[0].as_py()) == rows[0]["questions"]
    assert rd.read_json("prompts", "stats.json") == stats


def test_same_seed_same_prompts_other_seed_differs(tmp_path):
    cfg = _cfg("prompts.skills=[coco, countbench]")
    a = generate_prompts(cfg, RunDir(str(tmp_path / "a")), make_engine(cfg), seed=0)
    b = generate_prompts(cfg, RunDir(str(tmp_path / "b")), make_engine(cfg), seed=0)
    c = generate_prompts(cfg, RunDir(str(tmp_path / "c")), make_engine(cfg, seed=1), seed=1)
    assert a.keys() == b.keys() == c.keys()
    read = lambda d: RunDir(str(tmp_path / d)).read_jsonl("prompts", "coco.jsonl")  # noqa: E731
    assert read("a") == read("b")
    assert [r["prompt"] for r in read("a")] != [r["prompt"] for r in read("c")]


def test_resume_continues_from_saved_rounds(tmp_path):
    """Stopping after 2 rounds and going on gives exactly the uninterrupted result."""
    full_cfg = _cfg("prompts.skills=[whoops]")
    whole = RunDir(str(tmp_path / "whole"))
    generate_prompts(full_cfg, whole, make_engine(full_cfg), seed=0)

    parted = RunDir(str(tmp_path / "parted"))
    stopped = _cfg("prompts.skills=[whoops]", "prompts.max_rounds=2")
    stats = generate_prompts(stopped, parted, make_engine(stopped), seed=0)
    assert stats["whoops"]["rounds"] == 2 and stats["whoops"]["accepted"] < 30
    assert load_state(parted, "whoops").rounds == 2
    # a fresh engine, as after a killed process
    stats = generate_prompts(full_cfg, parted, make_engine(full_cfg), seed=0)
    assert stats["whoops"]["accepted"] == 30
    assert parted.read_jsonl("prompts", "whoops.jsonl") == whole.read_jsonl(
        "prompts", "whoops.jsonl"
    )
    assert stats["whoops"]["rounds"] == whole.read_json("prompts", "stats.json")["whoops"]["rounds"]


def test_stops_at_max_rounds_and_says_how_far(tmp_path):
    from selma_ray.prompts.stage import shortfalls

    cfg = _cfg("prompts.skills=[coco]", "prompts.max_rounds=1")
    stats = generate_prompts(cfg, RunDir(str(tmp_path)), make_engine(cfg), seed=0)
    assert stats["coco"]["rounds"] == 1
    (line,) = shortfalls(stats)
    assert line.startswith("coco: reached ") and "of 30 after 1 rounds" in line


def test_works_on_memory_filesystem():
    cfg = _cfg("prompts.skills=[coco]", "prompts.num_prompts=5")
    rd = RunDir("memory://selma-stage-test/run")
    stats = generate_prompts(cfg, rd, make_engine(cfg), seed=0)
    assert stats["coco"]["accepted"] == 5
    assert len(rd.read_jsonl("prompts", "coco.jsonl")) == 5


def test_requests_are_fitted_to_the_model_and_counted(tiny_models, tmp_path):
    """transformers engine on tiny:llm (512 positions), 100 response tokens asked of skills
    whose instructions take more and more of the context: the first's requests keep 2 of 3
    examples, the second's keep 1 with fewer response tokens, the third's are dropped (its
    instruction alone leaves no room); the stage finishes and stats.json counts each."""
    from selma_ray.config import BUILTIN_SKILLS

    seeds = list(BUILTIN_SKILLS["coco"].seeds)
    sentence = "Describe a cat on a red table. "  # 9 tokens
    cfg = load_config(
        data={
            "prompts": {
                "engine": "transformers",
                "skills": [
                    {"name": name, "instruction": sentence * n, "seeds": seeds}
                    for name, n in (("two-examples", 25), ("fewer-tokens", 29), ("too-long", 40))
                ],
                "num_prompts": 2,
                "max_rounds": 1,
                "requests_per_round": 2,
                "prompts_per_request": 3,
                "examples_per_request": 3,
                "max_tokens": 100,
            }
        }
    ).prompts
    rd = RunDir(str(tmp_path))
    engine = make_engine(cfg)
    stats = generate_prompts(cfg, rd, engine, seed=0)
    counts = {name: s["requests"] for name, s in stats.items()}
    # miscounted: the engine fed every request exactly the tokens the budget counted
    sent = {"planned": 2, "sent": 2, "shortened": 2, "miscounted": 0, "dropped": {}}
    assert counts == {
        "two-examples": {**sent, "max_tokens_reduced": 0},
        "fewer-tokens": {**sent, "max_tokens_reduced": 2},
        "too-long": {
            "planned": 2,
            "sent": 0,
            "shortened": 0,
            "max_tokens_reduced": 0,
            "miscounted": 0,
            "dropped": {"request_too_long": 2},
        },
    }
    for name, s in stats.items():
        assert s["rounds"] == 1
        assert s["responses"] == counts[name]["sent"]
        assert s["requested"] == 3 * counts[name]["sent"]
        assert s["parsed"] == s["accepted"] + sum(s["dropped"].values())
    assert stats["too-long"]["accepted"] == 0 and stats["too-long"]["parsed"] == 0
    assert rd.read_json("prompts", "stats.json") == stats
    assert rd.read_jsonl("prompts", "too-long.jsonl") == []
    # the counts are saved with the round (a resumed run goes on from them)
    assert load_state(rd, "too-long").requests_dropped == {"request_too_long": 2}
    engine.close()


def test_transformers_engine_resume_after_a_kill_between_two_skills_saves(tiny_models, tmp_path):
    """A kill after one skill saved a round and before the next did: the resumed run asks only
    the unsaved skill's requests again (a smaller batch) and still gets exactly the texts of
    the uninterrupted run, as each request samples with its own seed."""
    import pytest

    from selma_ray.prompts.stage import _state_path

    cfg = _cfg(
        "prompts.engine=transformers",
        "prompts.skills=[coco, whoops]",
        "prompts.num_prompts=50",
        "prompts.max_rounds=2",
        "prompts.requests_per_round=2",
        "prompts.prompts_per_request=3",
        "prompts.max_tokens=40",
    )

    def engine(answers):
        """The configured engine, recording each answer by (skill, request seed)."""
        eng = make_engine(cfg)
        generate = eng.generate

        def recorded(requests):
            out = generate(requests)
            answers.update({(r.skill, r.seed): c.text for r, c in zip(requests, out, strict=True)})
            return out

        eng.generate = recorded
        return eng

    whole, first_try, resumed = {}, {}, {}
    generate_prompts(cfg, RunDir(str(tmp_path / "whole")), engine(whole), seed=0)

    class KilledBeforeWhoopsRound2(RunDir):
        def write_json(self, obj, *parts):
            if parts == _state_path("whoops") and obj["rounds"] == 2:
                raise KeyboardInterrupt
            super().write_json(obj, *parts)

    parted = str(tmp_path / "parted")
    with pytest.raises(KeyboardInterrupt):
        generate_prompts(cfg, KilledBeforeWhoopsRound2(parted), engine(first_try), seed=0)
    assert load_state(RunDir(parted), "coco").rounds == 2
    assert load_state(RunDir(parted), "whoops").rounds == 1
    generate_prompts(cfg, RunDir(parted), engine(resumed), seed=0)
    # the resume asked whoops' second round alone (2 requests, not the 4 of both skills)
    assert len(resumed) == 2 and {skill for skill, _ in resumed} == {"whoops"}
    assert all(text for text in resumed.values())
    assert resumed == {key: whole[key] for key in resumed}
    assert first_try == whole
    for skill in ("coco", "whoops"):
        done = RunDir(parted).read_jsonl("prompts", f"{skill}.jsonl")
        assert done == RunDir(str(tmp_path / "whole")).read_jsonl("prompts", f"{skill}.jsonl")
        state, uninterrupted = (
            load_state(RunDir(parted), skill),
            load_state(RunDir(str(tmp_path / "whole")), skill),
        )
        assert (state.rounds, state.dropped) == (uninterrupted.rounds, uninterrupted.dropped)
