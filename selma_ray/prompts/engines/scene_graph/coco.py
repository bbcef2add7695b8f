"""The ``coco`` skill renderer: plain photo captions in the style of COCO.

Owns :func:`_coco`, which picks one of five scene kinds (a person or an animal doing something
somewhere, small things on a holder, a vehicle, a room with a few things) and renders it in one
of several caption frames ("A photo of ...", "There is ...", "In a park, a dog is ...").
"""

from __future__ import annotations

from collections.abc import Sequence

from selma_ray.prompts.engines.scene_graph import vocabulary as V
from selma_ray.prompts.engines.scene_graph.generator import _Gen
from selma_ray.prompts.engines.scene_graph.phrases import (
    _PHOTO_PREFIXES,
    _agent,
    _objects_on_holder,
    _pick_thing,
    _place_phrase,
    _room_scene,
)
from selma_ray.prompts.engines.scene_graph.scene import _be, _indef, _there


def _coco_agent(g: _Gen, kinds: Sequence[str]) -> str:
    place = g.place_for(kinds)
    number = "some" if g.p(0.2) else "one"
    cl = _agent(g, place, kinds, number=number)
    e = g.e(cl.subj)
    P = _place_phrase(g, cl.subj, place)
    be = _be(e)
    frames = [
        f"{cl.np} {cl.ger} {P}",
        f"{cl.np} {cl.ger} {P}",
        f"{cl.np} {be} {cl.ger} {P}",
        f"{cl.np} {cl.finite(g)} {P}",
        f"{_there(e)} {cl.np} {cl.ger} {P}",
        f"{g.pick(_PHOTO_PREFIXES)} {cl.np} {cl.ger} {P}",
    ]
    if P:
        frames += [f"{P}, {cl.np} {be} {cl.ger}", f"{P}, {cl.np} {cl.finite(g)}"]
    text = g.pick(frames)
    if g.p(0.3, 2):
        other = _agent(g, place, ("person", "animal"), extra=False, exclude=(e.noun.name,))
        o = g.e(other.subj)
        text += g.pick(
            (
                f", while {other.np} {_be(o)} {other.ger} nearby",
                f" as {other.np} {other.finite(g)}",
                f" while {other.np} {other.finite(g)} nearby",
            )
        )
    return text


_LEFT_OK = ("on", "in", "under", "next to", "beside", "inside", "on top of", "near", "by")


def _coco_objects(g: _Gen) -> str:
    o = _objects_on_holder(
        g,
        fallback="cup",
        entity=lambda g, t: g.number(t, 0.3),
        third_p=0.3,
        third=lambda g, t: g.number(t, 0.2),
        place_p=0.5,
    )
    A, B, words, key, subj_plural, P = o.A, o.B, o.words, o.key, o.plural, o.P
    be = "are" if subj_plural else "is"
    there = "There are" if subj_plural else "There is"
    frames = [
        f"{A} {words} {B} {P}",
        f"{A} {words} {B} {P}",
        f"{A} {be} {words} {B} {P}",
        f"{there} {A} {words} {B} {P}",
        f"{g.pick(_PHOTO_PREFIXES)} {A} {words} {B} {P}",
        f"{A} left {words} {B} {P}" if words in _LEFT_OK else f"{A} {words} {B} {P}",
    ]
    if P:
        frames.append(f"{P}, {A} {be} {words} {B}")
    if key == "on":
        frames.append(f"{B} with {A} on {g.pick(('it', 'top of it', 'it'))} {P}")
    if key == "in":
        frames.append(f"{B} {g.pick(('filled with', 'full of', 'holding'))} {A} {P}")
    return g.pick(frames)


_DRIVE = {"land": (("drive", "driving"), ("park", "parked"), ("wait", "waiting")),
          "boat": (("float", "floating"), ("sail", "sailing"), ("dock", "docked"))}  # fmt: skip


def _coco_vehicle(g: _Gen) -> str:
    boat = g.r.random() < 0.25
    if boat:
        place = g.place(domains=("water",))
        v = g.pick([t for t in V.THINGS if t.has("boat")])
    else:
        place = g.place(domains=("street", "farm", "travel"))
        v = _pick_thing(g, place, lambda t: t.has("land_vehicle")) or V.thing("car")
    vi = g.number(v, 0.2)
    g.attrs_for_level(vi, 2)
    lemma, ger = g.pick(_DRIVE["boat" if boat else "land"])
    ev = g.e(vi)
    ev.states.append((lemma, ger))
    V_ = _indef(ev)
    tail = ""
    if g.p(0.5, 1):
        t = _pick_thing(g, place, lambda t: t.has("fixed", "building", "plant") or (
            V.SIZE_RANK[t.size] >= 3 and not t.has("vehicle")))  # fmt: skip
        if t is not None:
            ti = g.add(t)
            g.attrs_for_level(ti, 1)
            words = g.pick(("next to", "beside", "near", "in front of", "behind", "past"))
            if words == "past":
                g.rel(vi, ti, "spatial", "next to")
            else:
                g.rel(vi, ti, "spatial", _norm_near(words))
            tail = f" {words} {_indef(g.e(ti))}"
    P = _place_phrase(g, vi, place, 0.8)
    frames = [
        f"{V_} {ger}{tail} {P}",
        f"{V_} {_be(ev)} {ger}{tail} {P}",
        f"{g.pick(_PHOTO_PREFIXES)} {V_} {ger}{tail} {P}",
        f"{_there(ev)} {V_} {ger}{tail} {P}",
    ]
    if P:
        frames.append(f"{P}, {V_} {_be(ev)} {ger}{tail}")
    return g.pick(frames)


def _norm_near(words: str) -> str:
    return {"beside": "next to", "near": "next to", "by": "next to"}.get(words, words)


def _coco_room(g: _Gen) -> str:
    return _room_scene(
        g,
        adj_p=0.7,
        count=lambda g: 2 + (1 if g.p(0.5, 2) else 0),
        keep=lambda t: not t.has("scenery"),
        entity=lambda g, t: g.number(t, 0.35),
        view_words=("View of", "A view of", "Photo of", "Inside of"),
        featuring=("featuring", "that has", "filled with"),
    )


def _coco(g: _Gen) -> str:
    kind = g.wpick([(30, "person"), (20, "animal"), (26, "objects"), (11, "vehicle"), (13, "room")])
    if kind == "person":
        return _coco_agent(g, ("person",))
    if kind == "animal":
        return _coco_agent(g, ("animal",))
    if kind == "objects":
        return _coco_objects(g)
    if kind == "vehicle":
        return _coco_vehicle(g)
    return _coco_room(g)
