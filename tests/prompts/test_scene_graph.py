"""Tests of the offline scene-graph prompt engine (selma_ray.prompts.engines.scene_graph)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections import Counter

import pytest

from selma_ray.prompts.engines.base import GenerationRequest, PromptEngine, Question
from selma_ray.prompts.engines.scene_graph import (
    SceneGraphEngine,
    compose,
    compose_scene,
    scene_questions,
)
from selma_ray.prompts.engines.scene_graph import vocabulary as V
from selma_ray.prompts.fewshot import parse_response
from selma_ray.skills import BUILTIN_SKILLS

SKILLS = tuple(BUILTIN_SKILLS)
_LINE = re.compile(r"^(\d+)\. (.+)$")
_TUPLE = re.compile(r"^(entity|attribute|relation|global|other) - ([a-z ]+) \((.+)\)$")


def _request(skill: str, seed: int, n: int = 20, start: int = 1, limit: int | None = None):
    word_limit = limit if limit is not None else BUILTIN_SKILLS[skill].word_limit
    return GenerationRequest(
        skill=skill, messages=[], prompt="", n_items=n, start_index=start, seed=seed,
        word_limit=word_limit,
    )  # fmt: skip


def _items(text: str) -> list[str]:
    return [_LINE.match(line).group(2) for line in text.split("\n")]  # type: ignore[union-attr]


def _samples(skill: str, n: int, limit: int = 30, seed: int = 0):
    rng = random.Random(seed)
    return [compose_scene(skill, rng, limit) for _ in range(n)]


def test_engine_implements_the_protocol():
    engine = SceneGraphEngine(seed=3)
    assert isinstance(engine, PromptEngine)
    assert engine.name == "scene-graph"
    text, questions = compose("coco", random.Random(0), 30)
    assert isinstance(text, str) and text
    assert questions and all(isinstance(q, Question) for q in questions)
    engine.close()


def test_numbering_continues_from_start_index():
    engine = SceneGraphEngine()
    (text,) = engine.generate([_request("coco", seed=1, n=6, start=7)])
    lines = text.split("\n")
    assert [int(_LINE.match(line).group(1)) for line in lines] == list(range(7, 13))
    parsed = parse_response(text, word_limit=30)
    assert len(parsed.items) == 6 and not parsed.dropped
    assert engine.generate([_request("coco", seed=1, n=0, start=3)]) == [""]


def test_deterministic_and_seed_dependent():
    reqs = [_request(skill, seed=5) for skill in SKILLS]
    a = SceneGraphEngine(seed=0).generate(reqs)
    assert a == SceneGraphEngine(seed=0).generate(reqs)
    b = SceneGraphEngine(seed=0).generate([_request(skill, seed=6) for skill in SKILLS])
    for x, y in zip(a, b, strict=True):
        assert set(_items(x)).isdisjoint(_items(y))
    c = SceneGraphEngine(seed=1).generate(reqs)
    assert all(x != y for x, y in zip(a, c, strict=True))
    rng1, rng2 = random.Random(4), random.Random(4)
    assert [compose("whoops", rng1, 30)[0] for _ in range(20)] == [
        compose("whoops", rng2, 30)[0] for _ in range(20)
    ]


def test_same_text_in_another_process_with_another_hash_seed():
    code = (
        "from selma_ray.prompts.engines.scene_graph import SceneGraphEngine\n"
        "from selma_ray.prompts.engines.base import GenerationRequest\n"
        "reqs = [GenerationRequest(skill=s, messages=[], prompt='', n_items=15, start_index=1,"
        " seed=2, word_limit=50) for s in ('coco', 'countbench', 'whoops',"
        " 'localized_narratives', 'diffusiondb', 'my_skill')]\n"
        "print(repr(SceneGraphEngine().generate(reqs)))\n"
    )
    outs = []
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        res = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        outs.append(res.stdout)
    assert outs[0] == outs[1] and outs[0].strip()


@pytest.mark.parametrize("skill", SKILLS)
def test_builtin_word_limits(skill):
    limit = BUILTIN_SKILLS[skill].word_limit
    (text,) = SceneGraphEngine().generate([_request(skill, seed=0, n=200)])
    for item in _items(text):
        assert 3 <= len(item.split()) <= limit, item


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 8, 12, 20, 45, 80])
def test_any_word_limit_is_respected(limit):
    for skill in (*SKILLS, "my_skill"):
        rng = random.Random(limit)
        for _ in range(40):
            text, questions = compose(skill, rng, limit)
            assert min(3, limit) <= len(text.split()) <= limit, (skill, text)
            assert questions


def test_skill_styles():
    coco = [t for t, _ in _samples("coco", 200)]
    assert max(len(t.split()) for t in coco) <= 30
    narratives = [t for t, _ in _samples("localized_narratives", 200, limit=50)]
    for t in narratives:
        sentences = [s for s in re.split(r"(?<=\.) ", t) if s]
        assert 1 <= len(sentences) <= 3, t
    multi = sum(len(re.split(r"(?<=\.) ", t)) >= 2 for t in narratives)
    assert multi > 150
    assert sum("we can see" in t for t in narratives) > 150
    ddb = _samples("diffusiondb", 200, limit=50)
    keywords = {*V.DDB_LIGHTING, *V.DDB_QUALITY, *V.DDB_STYLES}
    with_kw = sum(any(k in t for k in keywords) for t, _ in ddb)
    assert with_kw > 170
    assert sum(bool(s.styles) for _, s in ddb) > 100


def test_questions_for_generated_prompts():
    engine = SceneGraphEngine()
    texts = engine.generate([_request(skill, seed=3, n=10) for skill in SKILLS])
    for text in texts:
        for item in parse_response(text, word_limit=50).items:
            qs = engine.questions_for(item)
            assert qs, item
            assert engine.questions_for(f"  {item}  ") == qs
    assert engine.questions_for("A prompt this engine never wrote.") is None
    assert SceneGraphEngine().questions_for(item) is None


def _check_structure(qs: list[Question]) -> None:
    by_id = {q.proposition_id: q for q in qs}
    assert [q.proposition_id for q in qs] == list(range(1, len(qs) + 1))
    for q in qs:
        m = _TUPLE.match(q.tuple)
        assert m, q.tuple
        assert m.group(1) == q.category_broad and m.group(2) == q.category_detailed
        assert q.category_broad in {"entity", "attribute", "relation", "global", "other"}
        assert q.question.endswith("?") and q.question[0].isupper()
        assert all(0 < d < q.proposition_id for d in q.dependency), q
        parents = [by_id[d] for d in q.dependency]
        if q.category_detailed == "whole" or q.category_broad == "global":
            assert q.dependency == []
        elif q.category_broad == "relation":
            assert len(parents) == 2
            assert all(p.category_detailed == "whole" for p in parents)
        elif q.category_broad in ("attribute", "other") or q.category_detailed in (
            "state",
            "part",
        ):
            assert len(parents) == 1
            assert parents[0].category_broad == "entity"


def test_question_structure_follows_dsg():
    seen: Counter = Counter()
    for skill in (*SKILLS, "my_skill"):
        limit = BUILTIN_SKILLS[skill].word_limit if skill in BUILTIN_SKILLS else 40
        for _, scene in _samples(skill, 150, limit=limit):
            qs = scene_questions(scene)
            _check_structure(qs)
            seen.update(q.category_detailed for q in qs)
    for detailed in ("whole", "color", "material", "count", "spatial", "action", "state",
                     "style", "size", "part"):  # fmt: skip
        assert seen[detailed] > 0, detailed


def test_questions_mention_only_what_the_prompt_says():
    for skill in (*SKILLS, "my_skill"):
        limit = BUILTIN_SKILLS[skill].word_limit if skill in BUILTIN_SKILLS else 40
        for text, scene in _samples(skill, 300, limit=limit, seed=11):
            low = text.lower()
            for q in scene_questions(scene):
                inside = q.tuple[q.tuple.index("(") + 1 : -1]
                if q.category_broad == "entity":
                    names = inside.split(", ")
                    if q.category_detailed == "state":  # (entity, verb lemma)
                        names = names[:1]
                    for name in names:
                        assert name in low, (q.tuple, text)
                elif q.category_broad == "attribute":
                    value = inside.rsplit(", ", 1)[1]
                    assert value in low, (q.tuple, text)
                elif q.category_broad == "relation":
                    a, b, _pred = inside.split(", ")
                    assert a in low and b in low, (q.tuple, text)
                elif q.category_broad == "other":
                    assert inside.split(", ")[0] in low


def test_count_questions_match_the_number_words():
    for max_count, skill_samples in ((None, 400), (2, 150)):
        rng = random.Random(7)
        for _ in range(skill_samples):
            text, scene = compose_scene("countbench", rng, 30, max_count)
            low = text.lower()
            counts = [q for q in scene_questions(scene) if q.category_detailed == "count"]
            assert counts, text
            for q in counts:
                n = int(q.tuple.split("==")[1].rstrip(")"))
                assert 1 <= n <= (max_count or 3), text
                word = V.NUMBER_WORDS[n]
                assert re.search(rf"\b{word}\b", low) or (n == 1 and "single" in low), text
                assert word in q.question or "exactly one" in q.question
            assert not re.search(r"\b(four|five|six|seven|eight|nine|ten)\b", low), text


def _mentioned(name: str, low: str) -> bool:
    forms = {name}
    try:
        forms.add(V.thing(name).plural)
    except KeyError:
        pass
    return any(f in low for f in forms)


def test_whoops_prompts_come_from_defying_pairings():
    kinds = Counter()
    for text, scene in _samples("whoops", 600, seed=5):
        assert scene.defying is not None, text
        kind, a, b = scene.defying
        assert V.defies(kind, a, b), scene.defying
        kinds[kind] += 1
        low = text.lower()
        if kind in ("habitat", "fire_water", "ice_heat", "material", "vehicle_terrain", "size",
                    "produce_color", "plant_place", "food_pairing", "drink_vessel"):  # fmt: skip
            assert _mentioned(a, low) and _mentioned(b, low), (scene.defying, text)
        elif kind in ("wrong_tool", "place_activity"):
            assert _mentioned(b, low), (scene.defying, text)
        else:  # animal_human: the animal and what it does
            assert _mentioned(a, low), (scene.defying, text)
    assert set(kinds) == set(V.WHOOPS_KINDS)
    # the rules themselves
    assert V.defies("habitat", "penguin", "desert")
    assert not V.defies("habitat", "camel", "desert")
    assert V.defies("ice_heat", "ice cube", "frying pan")
    assert V.defies("fire_water", "candle", "sea")
    assert not V.defies("material", "chair", "wood")
    assert V.defies("material", "chair", "jelly")


def test_user_defined_skill():
    engine = SceneGraphEngine()
    req = _request("coco", seed=9, n=12, start=4, limit=18)
    req = GenerationRequest(**{**req.__dict__, "skill": "street_scenes"})
    (text,) = engine.generate([req])
    items = _items(text)
    assert len(items) == 12
    for item in items:
        assert 3 <= len(item.split()) <= 18
        assert engine.questions_for(item)


def test_vocabulary_is_large():
    sizes = V.vocabulary_sizes()
    assert sizes["things"] + sizes["animals"] + sizes["people"] >= 300
    assert sizes["places"] >= 40 and sizes["colors"] >= 15 and sizes["materials"] >= 30
    assert sizes["states"] + sizes["actions"] >= 40


@pytest.mark.parametrize("skill", SKILLS)
def test_near_duplicate_survival(skill):
    """>= 95% of 1,000 prompts (50 requests x 20, seeds 0..49) survive SELMA's ROUGE-L filter."""
    from selma_ray.prompts.dedup import filter_near_duplicates

    engine = SceneGraphEngine()
    texts = engine.generate([_request(skill, seed=s, n=20) for s in range(50)])
    prompts = [item for text in texts for item in _items(text)]
    assert len(prompts) == 1000
    kept = filter_near_duplicates(prompts, threshold=0.8)
    assert sum(kept) / len(prompts) >= 0.95


def test_vocabulary_is_package_data_read_lazily_once():
    """Importing the engine reads nothing; the first use reads vocabulary.json once."""
    code = (
        "import importlib.resources, threading\n"
        "from selma_ray.prompts.engines.base import GenerationRequest\n"
        "from selma_ray.prompts.engines.scene_graph import SceneGraphEngine, vocabulary as V\n"
        "data = importlib.resources.files(V.__package__).joinpath(V.DATA_FILE)\n"
        "assert data.is_file() and data.name == 'vocabulary.json'\n"
        "assert not hasattr(V, 'NO_SUCH_NAME') and not V.loaded() and 'THINGS' not in vars(V)\n"
        "builds = []\n"
        "build = V._build\n"
        "V._build = lambda raw: builds.append(1) or build(raw)\n"
        "engine = SceneGraphEngine()\n"
        "assert not V.loaded()\n"
        "threads = [threading.Thread(target=V.thing, args=('cup',)) for _ in range(8)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "req = GenerationRequest(skill='coco', messages=[], prompt='', n_items=5,"
        " start_index=1, seed=0)\n"
        "assert engine.generate([req]) == engine.generate([req])\n"
        "assert V.loaded() and 'THINGS' in vars(V) and V.THINGS is V.THINGS\n"
        "print(len(builds))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "1"


def test_vocabulary_types():
    assert isinstance(V.THINGS, tuple) and all(isinstance(n, V.Noun) for n in V.THINGS)
    assert all(isinstance(v, V.Verb) for v in (*V.STATES, *V.ACTIONS))
    assert isinstance(V.DOMAINS, frozenset) and isinstance(V.METALS, frozenset)
    assert V.SIZE_RANK == {s: i for i, s in enumerate(V.SIZES)}
    assert V.thing("cup").colors == V.PALETTE  # "*" in the data: the everyday palette
    assert V.thing("cat").has("animal") and V.thing("baby").size == "s"
    assert V.whoops_place("sea").article == "the" and V.whoops_place("sea").plural == "seas"
    grass = next(s for s in V.SCENERY if s.name == "grass")
    assert grass.plural == "grass" and grass.has("mass", "scenery")
    with pytest.raises(KeyError):
        V.thing("no such thing")
    assert not V.defies("no such rule", "cat", "desert")
