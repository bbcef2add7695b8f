"""The generator state and the vocabulary queries every skill renderer draws from.

Owns :class:`_Gen` (one prompt being composed: its random source, detail level and scene graph,
with the random and graph helpers the renderers call), the cached queries on the vocabulary
(which nouns fit a place, which states and actions suit an agent, which places suit a setting
or an agent, adjectives for a place), nouns made up on the fly (:func:`_ad_hoc`) and the
attributes an entity may get (:func:`_attr_options`, :func:`_compatible`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache
from typing import Any, TypeVar

from selma_ray.prompts.engines.scene_graph import vocabulary as V
from selma_ray.prompts.engines.scene_graph.scene import Attr, Ent, Rel, Scene

T = TypeVar("T")

# --- vocabulary queries (cached: the vocabulary is immutable) -------------------------------------

_POOLS = {"thing": "THINGS", "animal": "ANIMALS", "person": "PEOPLE"}  # -> vocabulary name


@cache
def _place_by_name() -> dict[str, V.Noun]:
    return {p.name: p for p in V.PLACES}


def _fits(n: V.Noun, place: V.Noun | None) -> bool:
    if place is None:
        return True
    if n.kind == "person" and "general" in n.tags:
        return True
    return bool(n.domains & place.domains)


@cache
def _local(place_name: str, pool: str) -> tuple[V.Noun, ...]:
    place = _place_by_name().get(place_name)
    return tuple(n for n in getattr(V, _POOLS[pool]) if _fits(n, place))


@cache
def _states_for(agent: V.Noun, place_name: str) -> tuple[V.Verb, ...]:
    place = _place_by_name().get(place_name)
    return tuple(
        v
        for v in V.STATES
        if v.agents & agent.all_tags
        and (not v.domains or place is None or v.domains & place.domains)
    )


@cache
def _actions_for(agent: V.Noun, place_name: str) -> tuple[tuple[V.Verb, tuple[V.Noun, ...]], ...]:
    out = []
    for v in V.ACTIONS:
        if not v.agents & agent.all_tags:
            continue
        objs = tuple(
            o
            for o in (*_local(place_name, "thing"), *_local(place_name, "animal"))
            if v.objects & o.all_tags and o.name != agent.name and not o.has("fixed", "building")
        )
        if objs:
            out.append((v, objs))
    return tuple(out)


def _ad_hoc(name: str, plural: str | None = None, *tags: str, size: str = "m") -> V.Noun:
    return V.Noun(name, plural or name + "s", "thing", size, frozenset(tags))


# --- the generator state --------------------------------------------------------------------------


class _Gen:
    """One prompt being composed: the random source, the detail level and the scene graph."""

    def __init__(self, rng: random.Random, level: int, max_count: int | None = None) -> None:
        self.r = rng
        self.level = level
        self.max_count = max_count
        self.s = Scene()

    # random helpers
    def p(self, prob: float, min_level: int = 0) -> bool:
        return self.level >= min_level and self.r.random() < prob

    def pick(self, seq: Sequence[T]) -> T:
        return seq[self.r.randrange(len(seq))]

    def wpick(self, options: Sequence[tuple[float, T]]) -> T:
        total = sum(w for w, _ in options)
        x = self.r.random() * total
        for w, o in options:
            x -= w
            if x < 0:
                return o
        return options[-1][1]

    def count(self) -> int:
        top = max(1, self.max_count or 3)
        if top == 1:
            return 1
        weights = [0.6] + [1.0] * (top - 1)
        return self.r.choices(range(1, top + 1), weights)[0]

    # graph helpers
    def add(self, noun: V.Noun, number: int = 1, **kw: Any) -> int:
        self.s.ents.append(Ent(noun, number, **kw))
        return len(self.s.ents) - 1

    def e(self, i: int) -> Ent:
        return self.s.ents[i]

    def rel(self, a: int, b: int, kind: str, pred: str, asked: str | None = None) -> None:
        self.s.rels.append(Rel(a, b, kind, pred, asked or pred))

    def counted(self, noun: V.Noun) -> int:
        """A counted entity (countbench): the number is written in words."""
        n = self.count()
        quant = self.pick(("one", "one", "a single")) if n == 1 else ""
        return self.add(noun, n, counted=True, quant=quant)

    def number(self, noun: V.Noun, plural_p: float = 0.25) -> int:
        """An entity that is one, or an uncounted plural ("some apples", "apples")."""
        if noun.plural != noun.name and self.r.random() < plural_p:
            quant = self.pick(("", "", "some", "several", "a few"))
            return self.add(noun, 0, quant=quant)
        return self.add(noun)

    def decorate(self, i: int, n: int) -> None:
        """Give entity ``i`` up to ``n`` attributes that suit it."""
        e = self.e(i)
        kinds = _attr_options(e.noun)
        order = list(kinds)
        self.r.shuffle(order)
        for kind in order[: max(0, n)]:
            opts = [a for a in kinds[kind] if _compatible(e, a)]
            if opts:
                e.attrs.append(self.pick(opts))

    def attrs_for_level(self, i: int, hi: int = 2) -> None:
        n = self.r.randint(0, hi) if self.level >= 2 else self.r.randint(0, 1)
        if self.level >= 1:
            self.decorate(i, n)

    def place(self, indoor: bool | None = None, domains: Sequence[str] = ()) -> V.Noun:
        return self.pick(_places(indoor, tuple(domains)))

    def place_for(self, kinds: Sequence[str]) -> V.Noun:
        """A place where agents of these kinds (person / animal) are found."""
        return self.pick(_places_with(tuple(kinds)))

    def add_place(self, place: V.Noun, adj_p: float = 0.4) -> int:
        quant = "the" if place.article == "a" and self.r.random() < 0.3 else ""
        i = self.add(place, quant=quant)
        if self.p(adj_p, 1):
            adjs = _place_adjectives(place)
            if adjs:
                self.e(i).attrs.append(Attr("state", self.pick(adjs)))
        return i


@cache
def _places(indoor: bool | None, domains: tuple[str, ...]) -> tuple[V.Noun, ...]:
    out = tuple(
        p
        for p in V.PLACES
        if (indoor is None or p.has("indoor") == indoor) and (not domains or p.has(*domains))
    )
    return out or V.PLACES


@cache
def _places_with(kinds: tuple[str, ...]) -> tuple[V.Noun, ...]:
    return tuple(p for p in V.PLACES if any(_local(p.name, k) for k in kinds))


def _place_adjectives(place: V.Noun) -> tuple[str, ...]:
    out: list[str] = []
    for tag in ("snow", "desert"):
        if place.has(tag):
            out += V.PLACE_ADJECTIVES[tag]
    if not out:
        out += V.PLACE_ADJECTIVES["indoor" if place.has("indoor") else "outdoor"]
        if place.has("street", "travel", "shop", "beach", "restaurant", "sport"):
            out += V.PLACE_ADJECTIVES["busy"]
    return tuple(out)


@cache
def _attr_options(n: V.Noun) -> dict[str, tuple[Attr, ...]]:
    opts: dict[str, tuple[Attr, ...]] = {}
    if n.colors:
        opts["color"] = tuple(Attr("color", c) for c in n.colors)
    if n.materials:
        opts["material"] = tuple(Attr("material", m, V.MATERIALS[m]) for m in n.materials)
    if n.kind in ("thing", "animal") and not n.has("fixed", "building", "scenery"):
        opts["size"] = tuple(Attr("size", w) for w in V.SIZE_WORDS[n.size])
    tex = []
    if n.has("fluffy"):
        tex.append(Attr("texture", "fluffy"))
    if set(n.materials) & V.SHINY or n.has("vehicle"):
        tex.append(Attr("texture", "shiny"))
    if tex:
        opts["texture"] = tuple(tex)
    if set(n.materials) & V.PATTERNABLE or n.has("umbrella", "kite"):
        opts["pattern"] = tuple(Attr("pattern", p) for p in V.PATTERNS)
    st: list[str] = []
    if n.kind == "thing" and not n.has("food", "plant", "ice", "scenery"):
        st.append("old")
    if set(n.materials) & V.METALS and n.has("vehicle", "tool", "fixed", "push", "bucket"):
        st.append("rusty")
    if n.has("container") and not n.has("fixed"):
        st.append("empty")
    if n.has("openable"):
        st += ["open", "closed"]
    if n.has("lightable"):
        st.append("lit")
    if n.has("fruit"):
        st += ["ripe", "fresh"]
    if n.has("bread", "veg"):
        st.append("fresh")
    if n.has("dessert", "meal"):
        baked = n.has("bread", "dessert") and not n.has("ice")
        st += ["half-eaten", "freshly baked"] if baked else ["half-eaten"]
    if n.has("vehicle", "washable") and not n.has("aircraft"):
        st.append("dirty")
    if n.has("electronic", "vehicle", "wear", "camera", "radio") and n.kind == "thing":
        st.append("vintage")
    if n.has("furniture", "clock", "vase", "picture frame"):
        st.append("antique")
    if n.has("pet", "dog", "farm_animal") and n.has("legs") and not n.has("bird"):
        st += ["wet", "muddy"]
    if st:
        opts["state"] = tuple(Attr("state", w) for w in st)
    return opts


def _compatible(e: Ent, a: Attr) -> bool:
    """Whether attribute ``a`` agrees with the attributes ``e`` already has."""
    if e.attr(a.kind) is not None:
        return False
    mat = e.attr("material")
    if a.value == "rusty":
        return (mat is None and all(m in V.METALS for m in e.noun.materials)) or (
            mat is not None and mat.value in V.METALS
        )
    if a.value == "shiny":
        return (mat is None and not e.noun.materials) or (mat is not None and mat.value in V.SHINY)
    if a.kind == "material":
        rusty = any(x.value == "rusty" for x in e.attrs)
        shiny = any(x.value == "shiny" for x in e.attrs)
        return (not rusty or a.value in V.METALS) and (not shiny or a.value in V.SHINY)
    if a.kind == "pattern" and e.attr("color") is not None:
        return False
    return not (a.kind == "color" and e.attr("pattern") is not None)
