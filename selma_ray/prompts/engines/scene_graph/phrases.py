"""Phrases every skill renderer builds from: spatial relations, agents and what they do, places.

Owns the spatial relations between two entities (which relations their sizes and tags allow,
and the words for them: :func:`_relate`), picking things that fit a place and a predicate
(:func:`_pick_thing`), agents doing something (:func:`_agent`: a person or animal with an
action on an object or a state), place phrases, and the two scenes the COCO and CountBench
renderers share: small things on a holder (:func:`_objects_on_holder`) and a place holding a
few things (:func:`_room_scene`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from selma_ray.prompts.engines.scene_graph import vocabulary as V
from selma_ray.prompts.engines.scene_graph.generator import (
    _actions_for,
    _Gen,
    _local,
    _states_for,
)
from selma_ray.prompts.engines.scene_graph.scene import _a, _at, _core, _indef, _list

# --- spatial relations between two things ---------------------------------------------------------


def _relation_options(a: V.Noun, b: V.Noun) -> list[str]:
    ra, rb = V.SIZE_RANK[a.size], V.SIZE_RANK[b.size]
    opts: list[str] = []
    if a.has("fixed", "building") or a.kind == "place":
        return ["next to", "behind", "in front of"]
    if (b.has("surface") and ra < rb) or (b.has("small_surface") and ra <= 1 and ra < rb):
        opts += ["on"] * 4
    if b.has("container") and ra < rb and not b.has("drink_vessel"):
        opts += ["in"] * 2
    if b.has("shelter") and ra < rb:
        opts.append("under")
    if a.has("lean") and b.has("fixed", "furniture", "building", "tree", "vehicle") and ra <= rb:
        opts += ["against"] * 2
    if a.has("hang", "flyer") and a.kind == "thing":
        opts.append("above")
    if abs(ra - rb) <= 2:
        opts += ["next to", "next to", "behind", "in front of"]
    return opts or ["next to"]


_REL_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "thing": {
        "on": ("on", "on", "on top of", "resting on", "sitting on", "placed on", "lying on"),
        "in": ("in", "inside"),
        "under": ("under", "beneath", "underneath"),
        "next to": ("next to", "beside", "near", "by"),
        "behind": ("behind",),
        "in front of": ("in front of",),
        "above": ("hanging above", "above"),
        "against": ("leaning against", "propped against"),
    },
    "animal": {
        "on": ("on", "sitting on", "lying on", "standing on", "on top of"),
        "in": ("in", "inside", "sitting in"),
        "under": ("under", "hiding under", "beneath"),
        "next to": ("next to", "beside", "near"),
        "behind": ("behind",),
        "in front of": ("in front of",),
        "above": ("above",),
        "against": ("against",),
    },
}
_PLAIN_REL_WORDS: dict[str, tuple[str, ...]] = {
    "on": ("on", "on top of"),
    "in": ("in", "inside"),
    "under": ("under", "beneath"),
    "above": ("above",),
    "against": ("against",),
}
_REL_ASKED = {"against": "leaning against", "above": "above"}


def _relate(g: _Gen, ai: int, bi: int, key: str | None = None, plain: bool = False) -> str:
    """Relate entity ``ai`` to ``bi`` spatially; returns the words to put between them.

    ``plain``: prepositions only (the agent's verb is already in the sentence).
    """
    a, b = g.e(ai).noun, g.e(bi).noun
    key = key or g.pick(_relation_options(a, b))
    words = _REL_WORDS["animal" if a.kind in ("animal", "person") else "thing"][key]
    if plain:
        words = _PLAIN_REL_WORDS.get(key, words)
    if key == "above" and a.kind == "thing":
        words = ("flying above",) if a.has("flyer") else ("hanging above",)
    g.rel(ai, bi, "spatial", key, _REL_ASKED.get(key, key))
    return g.pick(words)


def _pick_thing(
    g: _Gen,
    place: V.Noun | None,
    pred: Callable[[V.Noun], bool],
    exclude: Sequence[str] = (),
) -> V.Noun | None:
    pool = _local(place.name if place else "", "thing")
    cands = [t for t in pool if pred(t) and t.name not in exclude]
    if not cands:
        cands = [t for t in V.THINGS if pred(t) and t.name not in exclude]
    return g.pick(cands) if cands else None


def _small(t: V.Noun) -> bool:
    return t.has("hold") and V.SIZE_RANK[t.size] <= 2 and not t.has("wear")


def _holder(t: V.Noun) -> bool:
    return t.has("surface", "small_surface", "container", "shelter") and not t.has(
        "drink_vessel", "tiny_container", "push"
    )


# --- agents (people and animals) and what they do -------------------------------------------------


@dataclass
class Clause:
    subj: int
    np: str  # "a young woman in a red coat"
    ger: str  # "reading a newspaper"
    third: str  # "reads a newspaper"
    base: str  # "read a newspaper"

    def finite(self, g: _Gen) -> str:
        return self.base if g.e(self.subj).plural else self.third


_UNCOUNTED_OBJECTS = frozenset(
    {"ride", "rideable", "drive", "seat", "soft", "push", "typeable", "phone", "openable",
     "washable", "paintable", "climbable", "drink_vessel", "thing"}
)  # fmt: skip
_GARMENTS = frozenset({"jacket", "raincoat", "sweater", "dress", "coat", "t-shirt", "hoodie",
                       "apron"})  # fmt: skip


def _agents_at(place: V.Noun | None, kinds: Sequence[str]) -> list[V.Noun]:
    out: list[V.Noun] = []
    for k in kinds:
        out += _local(place.name if place else "", k)
    return out


def _agent(
    g: _Gen,
    place: V.Noun | None,
    kinds: Sequence[str] = ("person", "animal"),
    *,
    number: str = "one",  # one | some | counted
    obj_counted: bool = False,
    extra: bool = True,
    exclude: Sequence[str] = (),
) -> Clause:
    """Someone doing something at ``place``: picks the agent, the activity and maybe an object.

    ``extra``: whether the agent may also be put on / under / next to something.
    """
    ai = _add_agent(g, place, kinds, number, exclude)
    subj = _dressed(g, ai)
    pname = place.name if place else ""
    agent = g.e(ai).noun
    acts = _actions_for(agent, pname)
    sts = _states_for(agent, pname)
    if acts and (not sts or g.r.random() < 0.6):
        forms = _action(g, ai, acts, obj_counted)
    else:
        forms, extra = _state(g, ai, place, sts, extra)
    if extra and g.p(0.2, 2):
        tail = _beside(g, ai, place)
        forms = (forms[0] + tail, forms[1] + tail, forms[2] + tail)
    return Clause(ai, subj, *forms)


def _add_agent(
    g: _Gen, place: V.Noun | None, kinds: Sequence[str], number: str, exclude: Sequence[str]
) -> int:
    """Adds an agent of ``kinds`` found at ``place`` (else a general person): one, some
    (an uncounted plural) or a counted number of them."""
    pool = [a for a in _agents_at(place, kinds) if a.name not in exclude] or [
        p for p in V.PEOPLE if "general" in p.tags
    ]
    agent = g.pick(pool)
    if number == "counted":
        ai = g.counted(agent)
    elif number == "some":
        ai = g.number(agent, plural_p=1.0)
    else:
        ai = g.add(agent)
    if agent.kind == "animal":
        g.attrs_for_level(ai, 1)
    return ai


def _dressed(g: _Gen, ai: int) -> str:
    """The agent's noun phrase; a person may be dressed: "a man in a red coat"."""
    e = g.e(ai)
    agent = e.noun
    subj = _indef(e)
    if agent.kind == "person" and g.p(0.3, 1):
        cloth = _pick_thing(
            g, None, lambda t: t.has("wear") and (t.name != "dress" or agent.pronoun == "her")
        )
        if cloth is not None:
            ci = g.add(cloth, 0 if e.plural else 1)
            g.decorate(ci, 1)
            garment = cloth.name in _GARMENTS
            style = g.pick(("in", "wearing", "dressed in")) if garment else "wearing"
            g.rel(ai, ci, "action", "wear", "wearing")
            subj = f"{subj} {style} {_indef(g.e(ci))}"
    return subj


_Forms = tuple[str, str, str]  # gerund, third person, base: "reading a book", "reads ..."


def _action(
    g: _Gen, ai: int, acts: Sequence[tuple[V.Verb, Sequence[V.Noun]]], obj_counted: bool
) -> _Forms:
    """The agent acting on an object (one of ``acts``: verbs with the objects they take)."""
    e = g.e(ai)
    verb, objs = g.pick(acts)
    obj = g.pick(objs)
    if obj_counted and not verb.objects & _UNCOUNTED_OBJECTS:
        oi = g.counted(obj)
    elif verb.objects & _UNCOUNTED_OBJECTS:
        many = e.plural and obj.plural != obj.name and V.SIZE_RANK[obj.size] < 3
        oi = g.add(obj, 0 if many else 1)
    else:
        oi = g.number(obj, 0.2)
    g.attrs_for_level(oi, 2 if obj.kind == "thing" else 1)
    g.rel(ai, oi, "action", verb.lemma, verb.gerund)
    o = _indef(g.e(oi))
    return f"{verb.gerund} {o}", f"{verb.third} {o}", f"{verb.lemma} {o}"


def _state(
    g: _Gen, ai: int, place: V.Noun | None, sts: Sequence[V.Verb], extra: bool
) -> tuple[_Forms, bool]:
    """The agent in a state (one of ``sts``; the first state when none suits), with ``extra``
    maybe on / under / next to something; returns the forms and whether ``extra`` detail is
    still allowed."""
    e = g.e(ai)
    agent = e.noun
    v = g.pick(sts) if sts else V.STATES[0]
    e.states.append((v.lemma, v.gerund))
    ger, third, base = v.gerund, v.third, v.lemma
    # where it does it: on / under / next to something
    if extra and g.p(0.45, 1):
        t = _pick_thing(
            g, place, lambda t: V.SIZE_RANK[t.size] >= V.SIZE_RANK[agent.size] and (
                t.has("seat", "soft", "surface", "shelter", "fixed", "plant", "vehicle")
            ),
        )  # fmt: skip
        if t is not None:
            ti = g.add(t)
            g.attrs_for_level(ti, 1)
            words = _relate(g, ai, ti, plain=True)
            tail = f" {words} {_indef(g.e(ti))}"
            return (ger + tail, third + tail, base + tail), False
    return (ger, third, base), extra


def _beside(g: _Gen, ai: int, place: V.Noun | None) -> str:
    """Something next to / in front of the agent: the words to append ("" when nothing fits)."""
    t = _pick_thing(g, place, lambda t: not t.has("food"))
    if t is None:
        return ""
    ti = g.add(t)
    g.decorate(ti, 1)
    words = g.pick(("next to", "beside", "near", "in front of"))
    key = "in front of" if words == "in front of" else "next to"
    g.rel(ai, ti, "spatial", key)
    return f" {words} {_indef(g.e(ti))}"


# --- place phrases and photo captions -------------------------------------------------------------


def _place_phrase(g: _Gen, subj: int, place: V.Noun, prob: float = 0.75) -> str:
    if not g.p(prob):
        return ""
    pi = g.add_place(place)
    g.rel(subj, pi, "spatial", place.prep)
    return _at(g.e(pi))


_PHOTO_PREFIXES = (
    "A photo of", "A picture of", "An image of", "A close up of", "A view of", "A snapshot of",
    "A shot of", "A photograph of", "A candid shot of", "A wide shot of", "A color photo of",
    "A cropped photo of", "A nice picture of", "A blurry photo of", "An outdoor photo of",
)  # fmt: skip


# --- the scenes the coco and countbench renderers share -------------------------------------------


@dataclass
class _OnHolder:
    """Small things related to a holder (a table, a shelf...): the phrases a frame needs."""

    A: str  # the thing(s), with their article or count: "two red apples and a cup"
    B: str  # the holder: "a wooden table"
    words: str  # the relation as written: "on top of"
    key: str  # the relation key: "on", "in", ...
    plural: bool  # whether A is plural
    P: str  # the place phrase ("" when left out)


def _objects_on_holder(
    g: _Gen,
    *,
    fallback: str,
    entity: Callable[[_Gen, V.Noun], int],
    third_p: float,
    third: Callable[[_Gen, V.Noun], int],
    place_p: float,
) -> _OnHolder:
    """The scene of the COCO and CountBench "objects" renderers: a small thing (``fallback``
    when none fits) related to a holder, a second small thing with probability ``third_p``,
    and a place phrase with probability ``place_p``. ``entity`` / ``third`` add the things
    (``g.number`` or ``g.counted``); the random draws come in the same order for both."""
    place = g.place(indoor=g.r.random() < 0.7)
    b = _pick_thing(g, place, _holder) or V.thing("table")
    a = _pick_thing(g, place, lambda t: _small(t) and V.SIZE_RANK[t.size] < V.SIZE_RANK[b.size])
    a = a or V.thing(fallback)
    ai = entity(g, a)
    g.attrs_for_level(ai, 2)
    bi = g.add(b)
    g.attrs_for_level(bi, 1)
    key = g.pick(_relation_options(a, b))
    words = _relate(g, ai, bi, key)
    A, B = _indef(g.e(ai)), _indef(g.e(bi))
    plural = g.e(ai).plural
    if g.p(third_p, 1):
        c = _pick_thing(
            g, place, lambda t: _small(t) and V.SIZE_RANK[t.size] < V.SIZE_RANK[b.size],
            exclude=(a.name,),
        )  # fmt: skip
        if c is not None:
            ci = third(g, c)
            g.attrs_for_level(ci, 1)
            g.rel(ci, bi, "spatial", key, _REL_ASKED.get(key, key))
            A = f"{A} and {_indef(g.e(ci))}"
            plural = True
    P = _place_phrase(g, bi, place, place_p)
    return _OnHolder(A=A, B=B, words=words, key=key, plural=plural, P=P)


def _room_scene(
    g: _Gen,
    *,
    adj_p: float,
    count: Callable[[_Gen], int],
    keep: Callable[[V.Noun], bool],
    entity: Callable[[_Gen, V.Noun], int],
    view_words: Sequence[str],
    featuring: Sequence[str] = (),
) -> str:
    """A place holding a few things (``count`` of them, each made by ``entity``), in one of
    the room frames; ``featuring`` adds the "<place> featuring <things>" frame. Shared by the
    COCO and CountBench renderers; the random draws come in the same order for both."""
    place = g.place()
    pi = g.add_place(place, adj_p=adj_p)
    k = count(g)
    used: list[str] = []
    items = []
    for _ in range(k):
        t = _pick_thing(g, place, keep, exclude=used)
        if t is None:
            break
        used.append(t.name)
        ti = entity(g, t)
        g.attrs_for_level(ti, 1)
        g.rel(ti, pi, "spatial", place.prep)
        items.append(_indef(g.e(ti)))
    L = _list(items)
    ep = g.e(pi)
    core = _core(ep)
    a_place = f"{_a(core)} {core}" if place.article else core
    if not items:
        return f"{a_place}"
    first = g.e(pi + 1)
    there = "there are" if first.plural or len(items) > 1 else "there is"
    frames = [
        f"{a_place} with {L}",
        f"{_at(ep)} {there} {L}",
        f"{g.pick(view_words)} {a_place} with {L}",
        f"{L} {_at(ep)}",
    ]
    if featuring:
        frames.append(f"{a_place} {g.pick(featuring)} {L}")
    return g.pick(frames)
