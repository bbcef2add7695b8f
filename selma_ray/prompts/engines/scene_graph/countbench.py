"""The ``countbench`` skill renderer: captions that state how many of each thing there are.

Owns :func:`_countbench`: counted things on a holder, counted people or animals doing
something, a person with a counted object, a place with counted things. Counts are written in
words (``_Gen.counted``, 1..``max_count``) and each gives a count question.
"""

from __future__ import annotations

from collections.abc import Sequence

from selma_ray.prompts.engines.scene_graph.generator import _Gen
from selma_ray.prompts.engines.scene_graph.phrases import (
    _agent,
    _objects_on_holder,
    _place_phrase,
    _room_scene,
)
from selma_ray.prompts.engines.scene_graph.scene import _be, _there

_COUNT_PREFIXES = (
    "A photo of", "Background photo of", "A picture of", "An image showing", "Close-up of",
    "Top view of", "Stock photo of", "A photograph of", "An image of", "A simple picture of",
    "A studio shot of", "Illustration of", "A drawing of", "A row of",
)  # fmt: skip


def _countbench_objects(g: _Gen) -> str:
    o = _objects_on_holder(
        g,
        fallback="apple",
        entity=lambda g, t: g.counted(t),
        third_p=0.35,
        third=lambda g, t: g.counted(t),
        place_p=0.4,
    )
    A, B, words, key, plural, P = o.A, o.B, o.words, o.key, o.plural, o.P
    there = "There are" if plural else "There is"
    frames = [
        f"{A} {words} {B} {P}",
        f"{A} {words} {B} {P}",
        f"{there} {A} {words} {B} {P}",
        f"{g.pick(_COUNT_PREFIXES)} {A} {words} {B} {P}",
    ]
    if key == "on":
        frames.append(f"{B} with {A} on it {P}")
    if key == "in":
        frames.append(f"{B} holding {A} {P}")
    if P:
        frames.append(f"{P}, {there.lower()} {A} {words} {B}")
    return g.pick(frames)


def _countbench_agents(g: _Gen, kinds: Sequence[str]) -> str:
    place = g.place_for(kinds)
    cl = _agent(g, place, kinds, number="counted")
    e = g.e(cl.subj)
    P = _place_phrase(g, cl.subj, place, 0.7)
    frames = [
        f"{cl.np} {cl.ger} {P}",
        f"{cl.np} {cl.ger} {P}",
        f"{cl.np} {_be(e)} {cl.ger} {P}",
        f"{g.pick(_COUNT_PREFIXES[:11])} {cl.np} {cl.ger} {P}",
        f"{_there(e)} {cl.np} {cl.ger} {P}",
    ]
    if P:
        frames.append(f"{P}, {cl.np} {cl.finite(g)}")
    text = g.pick(frames)
    if g.p(0.25, 2):
        other = _agent(g, place, kinds, number="counted", extra=False, exclude=(e.noun.name,))
        o = g.e(other.subj)
        text += f", while {other.np} {_be(o)} {other.ger} nearby"
    return text


def _countbench_holding(g: _Gen) -> str:
    place = g.place()
    for _ in range(4):
        pi_start = len(g.s.ents)
        cl = _agent(g, place, ("person",), obj_counted=True, extra=False)
        if any(e.counted for e in g.s.ents[pi_start:]):
            break
        del g.s.ents[pi_start:]
        g.s.rels = [r for r in g.s.rels if r.a < pi_start and r.b < pi_start]
    else:
        cl = _agent(g, place, ("person",), number="counted")
    P = _place_phrase(g, cl.subj, place, 0.6)
    e = g.e(cl.subj)
    frames = [
        f"{cl.np} {cl.ger} {P}",
        f"{cl.np} {cl.finite(g)} {P}",
        f"{cl.np} {_be(e)} {cl.ger} {P}",
        f"{g.pick(_COUNT_PREFIXES[:11])} {cl.np} {cl.ger} {P}",
    ]
    return g.pick(frames)


def _countbench_room(g: _Gen) -> str:
    return _room_scene(
        g,
        adj_p=0.6,
        count=lambda g: 1 + (1 if g.p(0.6, 1) else 0) + (1 if g.p(0.3, 2) else 0),
        keep=lambda t: t.plural != t.name,
        entity=lambda g, t: g.counted(t),
        view_words=("View of", "A photo of", "Picture of"),
    )


def _countbench(g: _Gen) -> str:
    kind = g.wpick([(32, "objects"), (20, "people"), (20, "animals"), (14, "holding"),
                    (14, "room")])  # fmt: skip
    if kind == "objects":
        return _countbench_objects(g)
    if kind == "people":
        return _countbench_agents(g, ("person",))
    if kind == "animals":
        return _countbench_agents(g, ("animal",))
    if kind == "holding":
        return _countbench_holding(g)
    return _countbench_room(g)
