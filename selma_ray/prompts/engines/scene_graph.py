"""The offline ``scene-graph`` prompt engine: skill prompts and DSG questions from scene graphs.

It stands in for the prompt-writing LLM (the default engine of the tiny CPU preset). For each
prompt it first builds a small scene graph — entities with counts, attributes and states,
relations between them, global styles — from the vocabulary in ``_vocabulary``, then renders
it as text in one of several skill-specific templates, and writes DSG-style atomic questions
(entities as roots, attributes / counts / states depending on their entity, relations on both
entities) from the very same graph. A response is a numbered list continuing the request's
numbering, as an LLM would write it.

Skills: ``coco`` (plain photo captions), ``countbench`` (counts in words, 1..max_count),
``whoops`` (commonsense-defying pairings), ``localized_narratives`` ("In this image we can
see ..." paragraphs), ``diffusiondb`` (subject + style / medium / lighting keywords); any other
skill name gets everyday scene captions. Every prompt fits the request's ``word_limit``
(``str.split`` words): detail is dropped until it does.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar

from selma_ray.prompts.engines import _vocabulary as V
from selma_ray.prompts.engines.base import GenerationRequest, Question
from selma_ray.skills import BUILTIN_SKILLS

T = TypeVar("T")

# --- scene graph ------------------------------------------------------------------------------

_ATTR_ORDER = {"": 0, "size": 1, "state": 2, "texture": 3, "pattern": 4, "color": 5, "material": 6}


@dataclass
class Attr:
    """An attribute of an entity. ``kind`` "" is decorative: rendered but not asked about."""

    kind: str  # color | material | size | texture | pattern | state | ""
    value: str  # in the tuple / question
    word: str = ""  # text before the noun (default: value)
    post: str = ""  # text after the noun instead ("made of jelly")


@dataclass
class Part:
    """A part of an entity (DSG "entity - part"), e.g. a beard, with its own attributes."""

    noun: str
    asked: str  # "a beard", "freckles": what the question asks about
    plural: bool = False
    attrs: list[Attr] = field(default_factory=list)


@dataclass
class Ent:
    """An entity of the scene: a noun with a number, attributes, states and parts."""

    noun: V.Noun
    number: int = 1  # 1: one; >= 2: that many; 0: some (uncounted plural); -1: mass noun
    counted: bool = False  # the number is stated in words (asks a count question)
    quant: str = ""  # determiner for uncounted plurals / mass / "a single"; "the" for places
    attrs: list[Attr] = field(default_factory=list)
    states: list[tuple[str, str]] = field(default_factory=list)  # (lemma, gerund)
    parts: list[Part] = field(default_factory=list)
    text: str = ""  # noun text overriding the vocabulary's ("slice of chocolate cake")
    label_: str = ""  # label overriding the noun in questions ("cake")
    label_plural: bool | None = None  # grammatical number of label_ (default: the entity's)

    @property
    def plural(self) -> bool:
        return self.number == 0 or self.number >= 2

    @property
    def qplural(self) -> bool:
        return self.plural if self.label_plural is None else self.label_plural

    @property
    def label(self) -> str:
        if self.label_:
            return self.label_
        return self.noun.plural if self.plural else self.noun.name

    def attr(self, kind: str) -> Attr | None:
        return next((a for a in self.attrs if a.kind == kind), None)


@dataclass
class Rel:
    a: int
    b: int
    kind: str  # spatial | action
    pred: str  # in the tuple
    asked: str  # between "Is the A" and "the B?"


@dataclass
class Scene:
    ents: list[Ent] = field(default_factory=list)
    rels: list[Rel] = field(default_factory=list)
    styles: list[tuple[str, str]] = field(default_factory=list)  # (value, question)
    defying: tuple[str, str, str] | None = None  # whoops: (rule, subject, paired with)


def _a(phrase: str) -> str:
    """The indefinite article for ``phrase``."""
    w = phrase.split()[0].lower() if phrase.split() else ""
    if w.startswith(("hour", "honest", "heir")):
        return "an"
    if w.startswith(("uni", "use", "usu", "uk", "eu", "one", "ure", "uti")):
        return "a"
    return "an" if w[:1] in ("a", "e", "i", "o", "u") else "a"


def _core(e: Ent) -> str:
    noun = e.text or (e.noun.plural if e.plural else e.noun.name)
    attrs = sorted(e.attrs, key=lambda a: _ATTR_ORDER[a.kind])
    pre = [a.word or a.value for a in attrs if not a.post]
    post = [a.post for a in e.attrs if a.post]
    return " ".join([*pre, noun, *post])


def _indef(e: Ent) -> str:
    """``a red cup``, ``two red cups``, ``some cups``, ``coffee``."""
    c = _core(e)
    if e.number == 1:
        return f"{e.quant or 'one'} {c}" if e.counted else f"{_a(c)} {c}"
    if e.number >= 2:
        return f"{V.NUMBER_WORDS[e.number]} {c}"
    return f"{e.quant} {c}".strip()


def _the(e: Ent) -> str:
    if e.noun.kind == "place" and e.noun.article == "":
        return e.label
    return f"the {e.label}"


def _at(e: Ent) -> str:
    """A place phrase: ``in a sunny park``, ``under the sea``, ``in outer space``."""
    c = _core(e)
    art = e.noun.article
    det = "" if art == "" else ("the" if art == "the" or e.quant == "the" else _a(c))
    return " ".join(x for x in (e.noun.prep, det, c) if x)


def _be(e: Ent) -> str:
    return "are" if e.plural else "is"


def _attr_question(e: Ent, a: Attr) -> str:
    be = "Are" if e.qplural else "Is"
    if a.kind == "material":
        return f"{be} {_the(e)} made of {a.value}?"
    return f"{be} {_the(e)} {a.value}?"


def scene_questions(s: Scene) -> list[Question]:
    """DSG questions for a scene graph: entities first, then their details, relations, styles."""
    qs: list[Question] = []

    def add(broad: str, detailed: str, tup: str, text: str, deps: list[int]) -> int:
        qs.append(Question(len(qs) + 1, text, broad, detailed, tup, deps))
        return len(qs)

    ids: dict[int, int] = {}
    for i, e in enumerate(s.ents):
        lab = e.label
        if e.number == -1:
            q = f"Is there {lab}?"
        elif e.qplural:
            q = f"Are there {lab}?"
        else:
            q = f"Is there {_a(lab)} {lab}?"
        eid = ids[i] = add("entity", "whole", f"entity - whole ({lab})", q, [])
        be = "Are" if e.qplural else "Is"
        if e.counted:
            n = e.number
            q = f"Are there {V.NUMBER_WORDS[n]} {lab}?" if n > 1 else f"Is there exactly one {lab}?"
            add("other", "count", f"other - count ({lab}, =={n})", q, [eid])
        for p in e.parts:
            have = "Do" if e.qplural else "Does"
            pid = add(
                "entity", "part", f"entity - part ({lab}, {p.noun})",
                f"{have} {_the(e)} have {p.asked}?", [eid],
            )  # fmt: skip
            for a in p.attrs:
                pbe = "Are" if p.plural else "Is"
                add(
                    "attribute", a.kind, f"attribute - {a.kind} ({p.noun}, {a.value})",
                    f"{pbe} the {p.noun} {a.value}?", [pid],
                )  # fmt: skip
        for a in e.attrs:
            if a.kind:
                add(
                    "attribute", a.kind, f"attribute - {a.kind} ({lab}, {a.value})",
                    _attr_question(e, a), [eid],
                )  # fmt: skip
        for lemma, ger in e.states:
            add("entity", "state", f"entity - state ({lab}, {lemma})", f"{be} {_the(e)} {ger}?",
                [eid])  # fmt: skip
    for r in s.rels:
        x, y = s.ents[r.a], s.ents[r.b]
        be = "Are" if x.qplural else "Is"
        add(
            "relation", r.kind, f"relation - {r.kind} ({x.label}, {y.label}, {r.pred})",
            f"{be} {_the(x)} {r.asked} {_the(y)}?", [ids[r.a], ids[r.b]],
        )  # fmt: skip
    for value, q in s.styles:
        add("global", "style", f"global - style ({value})", q, [])
    return qs


# --- vocabulary queries (cached: the vocabulary is immutable) ----------------------------------

_PLACE_BY_NAME = {p.name: p for p in V.PLACES}
_POOLS: dict[str, tuple[V.Noun, ...]] = {
    "thing": V.THINGS,
    "animal": V.ANIMALS,
    "person": V.PEOPLE,
}


def _fits(n: V.Noun, place: V.Noun | None) -> bool:
    if place is None:
        return True
    if n.kind == "person" and "general" in n.tags:
        return True
    return bool(n.domains & place.domains)


@cache
def _local(place_name: str, pool: str) -> tuple[V.Noun, ...]:
    place = _PLACE_BY_NAME.get(place_name)
    return tuple(n for n in _POOLS[pool] if _fits(n, place))


@cache
def _states_for(agent: V.Noun, place_name: str) -> tuple[V.Verb, ...]:
    place = _PLACE_BY_NAME.get(place_name)
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


# --- the generator state -------------------------------------------------------------------------


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


# --- spatial relations between two things --------------------------------------------------------


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


# --- agents (people and animals) and what they do -----------------------------------------------


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
    """Someone doing something at ``place``: picks the agent, the activity and maybe an object."""
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
    e = g.e(ai)
    if agent.kind == "animal":
        g.attrs_for_level(ai, 1)
    subj = _indef(e)
    # clothing
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
    pname = place.name if place else ""
    acts = _actions_for(agent, pname)
    sts = _states_for(agent, pname)
    if acts and (not sts or g.r.random() < 0.6):
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
        ger, third, base = f"{verb.gerund} {o}", f"{verb.third} {o}", f"{verb.lemma} {o}"
    else:
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
                ger, third, base = ger + tail, third + tail, base + tail
                extra = False
    if extra and g.p(0.2, 2):
        t = _pick_thing(g, place, lambda t: not t.has("food"))
        if t is not None:
            ti = g.add(t)
            g.decorate(ti, 1)
            words = g.pick(("next to", "beside", "near", "in front of"))
            key = "in front of" if words == "in front of" else "next to"
            g.rel(ai, ti, "spatial", key)
            tail = f" {words} {_indef(g.e(ti))}"
            ger, third, base = ger + tail, third + tail, base + tail
    return Clause(ai, subj, ger, third, base)


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


def _there(e: Ent) -> str:
    return "There are" if e.plural else "There is"


# --- coco -------------------------------------------------------------------------------------


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


def _list(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


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


# --- countbench -----------------------------------------------------------------------------

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


# --- whoops -------------------------------------------------------------------------------------


def _wp(name: str) -> V.Noun:
    return V.whoops_place(name)


def _whoops_place_ent(g: _Gen, place: V.Noun) -> int:
    i = g.add(place)
    if g.p(0.45, 1):
        if place.has("hot"):
            adj: tuple[str, ...] = ("scorching", "sunny", "sweltering", "dry")
        elif place.has("cold"):
            adj = ("freezing", "snowy", "icy", "windy")
        elif place.has("traffic"):
            adj = ("busy", "crowded", "noisy")
        elif place.has("underwater"):
            adj = ("deep", "murky", "clear", "dark")
        elif place.has("indoor"):
            adj = ("quiet", "empty", "crowded", "bright", "tidy")
        elif place.has("dry"):
            adj = ("sunny", "empty", "dusty", "quiet")
        else:
            adj = ()
        if adj:
            g.e(i).attrs.append(Attr("state", g.pick(adj)))
    return i


_TAILS = {
    "hot": (
        "under the blazing sun",
        "at noon",
        "on a hot afternoon",
        "in the midday heat",
        "on a summer day",
        "under a cloudless sky",
        "in the heat of the day",
    ),
    "cold": (
        "during a blizzard",
        "on a freezing morning",
        "as snow falls",
        "in the icy wind",
        "on a winter night",
        "in the middle of winter",
    ),
    "wet": (
        "surrounded by bubbles",
        "in the murky water",
        "deep under the surface",
        "among floating seaweed",
        "in the blue water",
        "as bubbles rise",
    ),
    "dry": (
        "in broad daylight",
        "as people walk by",
        "at lunchtime",
        "on a weekday morning",
        "late at night",
        "in the afternoon",
        "on a busy morning",
    ),
    "": ("",),
}


def _tail(g: _Gen, place: V.Noun) -> str:
    if not g.p(0.45, 2):
        return ""
    for tag in ("hot", "cold", "wet", "dry"):
        if place.has(tag):
            return g.pick(_TAILS[tag])
    return ""


def _whoops_frames(g: _Gen, subj: str, be: str, ger: str, third: str, P: str, tail: str) -> str:
    if not tail:
        tail = _witness(g)
    t = f" {tail}" if tail and tail.startswith(("while", "as", "without", "surrounded")) else (
        f", {tail}" if tail else "")  # fmt: skip
    there = "There are" if be == "are" else "There is"
    frames = [
        f"{subj} {ger} {P}{t}",
        f"{subj} {be} {ger} {P}{t}",
        f"{subj} {third} {P}{t}",
        f"{P}, {subj} {be} {ger}{t}",
        f"{g.pick(_PHOTO_PREFIXES[:8])} {subj} {ger} {P}{t}",
        f"{there} {subj} {ger} {P}{t}",
        f"{subj} can be seen {ger} {P}{t}",
    ]
    return g.pick(frames)


_WATCH = (("watch", "watching", "watch", "watches"), ("stare", "staring", "stare", "stares"),
          ("take photos", "taking photos", "take photos", "takes photos"),
          ("laugh", "laughing", "laugh", "laughs"), ("point", "pointing", "point", "points"),
          ("wave", "waving", "wave", "waves"))  # fmt: skip


def _witness(g: _Gen) -> str:
    """Bystanders reacting: "while two tourists take photos" (an entity with a state)."""
    if not g.p(0.4, 1):
        return ""
    person = g.pick([p for p in V.PEOPLE if "general" in p.tags or p.has("tourist")])
    plural = g.r.random() < 0.5
    wi = g.add(person, 0 if plural else 1, quant=g.pick(("", "some", "a few")) if plural else "")
    lemma, ger, base, third = g.pick(_WATCH)
    w = g.e(wi)
    w.states.append((lemma, ger))
    verb = base if plural else third
    return g.pick((f"while {_indef(w)} {verb}", f"as {_indef(w)} {verb}",
                   f"while {_indef(w)} {_be(w)} {ger} nearby"))  # fmt: skip


def _w_habitat(g: _Gen) -> str:
    animal = g.pick([a for a in V.ANIMALS if a.has("polar", "aquatic", "desert_animal")])
    places = [p for p in V.WHOOPS_PLACES if V.defies("habitat", animal.name, p.name)]
    place = g.pick(places)
    ai = g.add(animal)
    g.attrs_for_level(ai, 2)
    pi = _whoops_place_ent(g, place)
    verbs: tuple[tuple[str, str, str], ...]
    if place.has("hot"):
        verbs = (("sunbathe", "sunbathing", "sunbathes"), ("rest", "resting", "rests"),
                 ("sweat", "sweating", "sweats"), ("walk", "walking", "walks"),
                 ("nap", "napping", "naps"))  # fmt: skip
    elif animal.has("aquatic"):
        verbs = (("swim", "swimming", "swims"), ("rest", "resting", "rests"),
                 ("lie", "lying", "lies"), ("wait", "waiting", "waits"),
                 ("sit", "sitting", "sits"))  # fmt: skip
    else:
        verbs = (("walk", "walking", "walks"), ("stand", "standing", "stands"),
                 ("sleep", "sleeping", "sleeps"), ("shiver", "shivering", "shivers"))  # fmt: skip
    lemma, ger, third = g.pick(verbs)
    e = g.e(ai)
    if animal.plural != animal.name and g.p(0.2):
        e.number, e.quant = 0, g.pick(("", "some", "a group of"))
    e.states.append((lemma, ger))
    if e.plural:
        third = lemma
    g.rel(ai, pi, "spatial", place.prep)
    g.s.defying = ("habitat", animal.name, place.name)
    return _whoops_frames(g, _indef(e), _be(e), ger, third, _at(g.e(pi)), _tail(g, place))


def _w_fire_water(g: _Gen) -> str:
    fire = g.pick([t for t in V.THINGS if t.has("burn")])
    place = g.pick([p for p in V.WHOOPS_PLACES if p.has("underwater")])
    fi = g.add(fire)
    if fire.has("candle") and g.p(0.3):
        g.e(fi).number, g.e(fi).quant = 0, g.pick(("", "some", "several"))
    g.attrs_for_level(fi, 1)
    pi = _whoops_place_ent(g, place)
    e = g.e(fi)
    lemma, ger, third = g.pick((("burn", "burning", "burns"), ("glow", "glowing", "glows"),
                                ("flicker", "flickering", "flickers")))  # fmt: skip
    e.states.append((lemma, ger))
    if e.plural:
        third = lemma
    g.rel(fi, pi, "spatial", place.prep)
    g.s.defying = ("fire_water", fire.name, place.name)
    subj = _indef(e)
    if g.p(0.3, 1):
        subj = f"{subj} with a bright flame" if not e.plural else f"{subj} with bright flames"
    tail = ""
    if g.p(0.35, 1):
        fish = g.pick([a for a in V.ANIMALS if a.has("aquatic") and a.size in ("xs", "s")])
        xi = g.add(fish, 0, quant=g.pick(("", "some", "a few")))
        g.e(xi).states.append(("swim", "swimming"))
        g.rel(xi, fi, "spatial", "next to", "next to")
        how = g.pick(("around it", "nearby", "past", "by", "in circles around it"))
        tail = g.pick((f"while {_indef(g.e(xi))} swim {how}", f"as {_indef(g.e(xi))} swim {how}"))
    return _whoops_frames(g, subj, _be(e), ger, third, _at(g.e(pi)), tail or _tail(g, place))


def _w_ice_heat(g: _Gen) -> str:
    ice = g.pick([t for t in V.THINGS if t.has("ice")])
    spots = [h for h in V.HOT_SPOTS if V.SIZE_RANK[h[2]] >= V.SIZE_RANK[ice.size]]
    name, prep, size = g.pick(spots)
    spot = V.Noun(name, name + "s", "place", size, frozenset({"hot"}), prep=prep, article="a")
    ii = g.add(ice, 0 if ice.name == "ice cube" else 1, quant="")
    if ice.name != "ice cube":
        g.attrs_for_level(ii, 1)
    si = g.add(spot)
    if g.p(0.7):
        g.e(si).attrs.append(Attr("state", V.HOT_ADJ[name]))
    e = g.e(ii)
    lemma, ger, third = g.pick(
        (("sit", "sitting", "sits"), ("rest", "resting", "rests"), ("stay frozen",
         "staying frozen", "stays frozen"), ("lie", "lying", "lies"))
    )  # fmt: skip
    if ice.has("snowman", "ice sculpture", "igloo"):
        lemma, ger, third = g.pick(
            (("stand", "standing", "stands"), ("stay frozen", "staying frozen", "stays frozen"))
        )
        if ice.has("snowman") and g.r.random() < 0.4:
            lemma, ger, third = ("smile", "smiling", "smiles")
    e.states.append((lemma, ger))
    if e.plural:
        third = lemma
    g.rel(ii, si, "spatial", prep)
    g.s.defying = ("ice_heat", ice.name, name)
    tail = g.pick(("without melting", "completely unmelted", "not melting at all",
                   "perfectly frozen", "", "without a single drop of water",
                   "still solid", "without melting at all"))  # fmt: skip
    if not g.p(0.8, 1):
        tail = ""
    return _whoops_frames(g, _indef(e), _be(e), ger, third, _at(g.e(si)), tail)


def _w_material(g: _Gen) -> str:
    obj = g.pick([t for t in V.THINGS if t.has(*V.MATERIAL_JOKE_TAGS)])
    mat = g.pick([m for m in V.WEIRD_MATERIALS if m not in obj.materials])
    oi = g.add(obj)
    made = g.pick(("made of", "made of", "made entirely of", "built out of", "carved from"))
    if obj.colors and g.p(0.3, 1):
        g.e(oi).attrs.append(Attr("color", g.pick(obj.colors)))
    g.e(oi).attrs.append(Attr("material", mat, post=f"{made} {mat}"))
    g.s.defying = ("material", obj.name, mat)
    obj_text = _indef(g.e(oi))
    eo = g.e(oi)
    place = g.place(domains=tuple(sorted(obj.domains)) or ())
    users = [
        (v, a)
        for a in V.PEOPLE
        if "general" in a.tags
        for v, objs in _actions_for(a, "")
        if any(o.name == obj.name for o in objs)
    ]
    if users and g.r.random() < 0.5:
        verb, agent = g.pick(users)
        pi = g.add(agent)
        g.rel(pi, oi, "action", verb.lemma, verb.gerund)
        P = _place_phrase(g, pi, place, 0.5)
        s = _indef(g.e(pi))
        return g.pick((
            f"{s} {verb.gerund} {obj_text} {P}",
            f"{s} {verb.third} {obj_text} {P}",
            f"{s} is {verb.gerund} {obj_text} {P}",
        ))  # fmt: skip
    tail = ""
    if g.p(0.5, 1):
        t = _pick_thing(g, place, lambda t: t.name != obj.name and V.SIZE_RANK[t.size] >= 2)
        if t is not None:
            ti = g.add(t)
            g.attrs_for_level(ti, 1)
            tail = f"{_relate(g, oi, ti)} {_indef(g.e(ti))}"
    P = _place_phrase(g, oi, place, 0.5)
    return g.pick((
        f"{obj_text} {tail} {P}",
        f"{_there(eo)} {obj_text} {tail} {P}",
        f"{g.pick(_PHOTO_PREFIXES[:8])} {obj_text} {tail} {P}",
        f"{obj_text} {'stands' if obj.size in ('l', 'xl') else 'sits'} {tail or 'alone'} {P}",
    ))  # fmt: skip


def _w_animal_human(g: _Gen) -> str:
    animal = g.pick(V.ANIMALS)
    lemma, ger, third, obj_name = g.pick(V.HUMAN_ACTIVITIES)
    ai = g.add(animal)
    if animal.plural != animal.name and g.p(0.15):
        g.e(ai).number, g.e(ai).quant = 0, g.pick(("", "some", "a group of"))
    g.attrs_for_level(ai, 2)
    e = g.e(ai)
    g.s.defying = ("animal_human", animal.name, lemma)
    if e.plural:
        ger, lemma_txt = ger.replace(" its ", " their "), lemma.replace(" its ", " their ")
        third = lemma_txt
    if obj_name:
        obj = V.thing(obj_name)
        oi = g.add(obj)
        g.attrs_for_level(oi, 1)
        g.rel(ai, oi, "action", lemma, ger)
        o = _indef(g.e(oi))
        ger, third = f"{ger} {o}", f"{third} {o}"
        place = g.place(domains=tuple(sorted(obj.domains)) or ())
    else:
        e.states.append((lemma, ger))
        place = g.place()
    P = _place_phrase(g, ai, place, 0.6)
    if not P:
        subj = _indef(e)
        return g.pick((f"{subj} {ger}", f"{subj} {_be(e)} {ger}", f"{subj} {third}"))
    return _whoops_frames(g, _indef(e), _be(e), ger, third, P, "")


def _w_vehicle(g: _Gen) -> str:
    kind = g.wpick([(45, "land"), (35, "boat"), (20, "air")])
    if kind == "land":
        v = g.pick([t for t in V.THINGS if t.has("land_vehicle")])
        verbs = (("float", "floating", "floats"), ("drive", "driving", "drives"),
                 ("park", "parked", "is parked"))  # fmt: skip
    elif kind == "boat":
        v = g.pick([t for t in V.THINGS if t.has("boat")])
        verbs = (("sail", "sailing", "sails"), ("float", "floating", "floats"),
                 ("dock", "docked", "is docked"))  # fmt: skip
    else:
        v = g.pick([t for t in V.THINGS if t.has("aircraft") and t.has("vehicle")])
        verbs = (("park", "parked", "is parked"), ("land", "landing", "lands"),
                 ("take off", "taking off", "takes off"))  # fmt: skip
    place = g.pick([p for p in V.WHOOPS_PLACES if V.defies("vehicle_terrain", v.name, p.name)])
    vi = g.add(v)
    g.attrs_for_level(vi, 2)
    pi = _whoops_place_ent(g, place)
    lemma, ger, third = g.pick(verbs)
    e = g.e(vi)
    e.states.append((lemma, ger))
    g.rel(vi, pi, "spatial", place.prep)
    g.s.defying = ("vehicle_terrain", v.name, place.name)
    be = "is"
    if third.startswith("is "):
        return g.pick((f"{_indef(e)} {ger} {_at(g.e(pi))}",
                       f"{_indef(e)} {third} {_at(g.e(pi))}",
                       f"{_at(g.e(pi))}, {_indef(e)} {be} {ger}"))  # fmt: skip
    return _whoops_frames(g, _indef(e), be, ger, third, _at(g.e(pi)), _tail(g, place))


_HEAVE = (("carry", "carrying", "carries"), ("lift", "lifting", "lifts"),
          ("pull", "pulling", "pulls"), ("push", "pushing", "pushes"))  # fmt: skip


def _w_size(g: _Gen) -> str:
    if g.r.random() < 0.5:
        animal = g.pick([a for a in V.ANIMALS if a.has("big_animal")])
        box = g.pick([t for t in V.THINGS if t.has("tiny_container")])
        ai, bi = g.add(animal), g.add(box)
        g.attrs_for_level(ai, 2)
        g.attrs_for_level(bi, 2)
        lemma, ger, third = g.pick((("sit", "sitting", "sits"), ("sleep", "sleeping", "sleeps"),
                                    ("stand", "standing", "stands"),
                                    ("hide", "hiding", "hides")))  # fmt: skip
        e = g.e(ai)
        e.states.append((lemma, ger))
        words = g.pick(("inside", "in", "inside", "in"))
        g.rel(ai, bi, "spatial", "in")
        g.s.defying = ("size", animal.name, box.name)
        A, B = _indef(e), _indef(g.e(bi))
        place = g.place(domains=tuple(sorted(box.domains)) or ())
        P = _place_phrase(g, bi, place, 0.35)
        return g.pick((
            f"{A} {ger} {words} {B} {P}",
            f"{A} {third} {words} {B} {P}",
            f"{A} {_be(e)} {ger} {words} {B} {P}",
            f"{A} squeezed {words} {B} {P}",
        ))  # fmt: skip
    animal = g.pick([a for a in V.ANIMALS if a.has("small_animal")])
    heavy = g.pick([t for t in V.THINGS if t.has("heavy") and t.kind == "thing"])
    ai, hi = g.add(animal), g.add(heavy)
    g.attrs_for_level(ai, 2)
    g.attrs_for_level(hi, 1)
    lemma, ger, third = g.pick(_HEAVE)
    g.rel(ai, hi, "action", lemma, ger)
    g.s.defying = ("size", animal.name, heavy.name)
    back = " on its back" if lemma == "carry" and g.p(0.5) else ""
    A, H = _indef(g.e(ai)), _indef(g.e(hi))
    place = g.place(domains=tuple(sorted(heavy.domains)) or ())
    P = _place_phrase(g, ai, place, 0.5)
    return g.pick((f"{A} {ger} {H}{back} {P}", f"{A} {third} {H}{back} {P}",
                   f"{A} {'easily ' if g.p(0.5) else ''}{third} {H}{back} {P}",
                   f"{A} is {ger} {H}{back} {P}"))  # fmt: skip


_POSSESSIVE = {"him": "his", "her": "her", "them": "their", "it": "its"}


def _w_wrong_tool(g: _Gen) -> str:
    task = g.pick(V.TASKS)
    lemma, ger, third, _tool = task
    tool = g.pick(
        [
            t
            for t in V.ABSURD_TOOLS
            if V.defies("wrong_tool", lemma, t) and t.split()[-1] not in lemma
        ]
    )
    person = g.pick([p for p in V.PEOPLE if "general" in p.tags or p.has("adult")])
    pos = _POSSESSIVE[person.pronoun]
    if lemma == "comb":
        lemma, ger, third = "comb hair", f"combing {pos} hair", f"combs {pos} hair"
    pi = g.add(person)
    tnoun = V.thing(tool) if tool in {n.name for n in V.THINGS} else _ad_hoc(tool, size="xs")
    ti = g.add(tnoun)
    g.attrs_for_level(ti, 1)
    g.rel(pi, ti, "action", f"{lemma} with", f"{ger} with")
    g.s.defying = ("wrong_tool", task[0], tool)
    P_, T = _indef(g.e(pi)), _indef(g.e(ti))
    place = g.place(domains=tuple(sorted(person.domains)) or ())
    P = _place_phrase(g, pi, place, 0.4)
    return g.pick((
        f"{P_} {ger} with {T} {P}",
        f"{P_} {third} with {T} {P}",
        f"{P_} is {ger} with {T} {P}",
        f"{P_} uses {T} to {lemma if lemma != 'comb hair' else 'comb ' + pos + ' hair'} {P}",
    ))  # fmt: skip


_MASS_FOOD = {"ketchup", "mustard", "broccoli", "mayonnaise", "soy sauce", "gravy", "raw fish",
              "mashed potatoes"}  # fmt: skip


def _w_food(g: _Gen) -> str:
    text, label = g.pick(V.DESSERTS)
    savoury = g.pick(V.SAVOURY)
    d = _ad_hoc(text, size="s")
    di = g.add(d, text=text, label_=label, label_plural=label.endswith(("s", "cookies")))
    mass = savoury in _MASS_FOOD
    si = g.add(_ad_hoc(savoury), -1 if mass else 0, text=savoury, label_=savoury,
               label_plural=not mass)  # fmt: skip
    g.s.defying = ("food_pairing", label, savoury)
    how = g.pick((("served with", "served with"), ("topped with", "topped with"),
                  ("covered in", "covered in"), ("garnished with", "garnished with")))  # fmt: skip
    g.rel(di, si, "spatial", how[0], how[1])
    D, S = _indef(g.e(di)), savoury
    tail = ""
    if g.p(0.45, 1):
        plate = _pick_thing(g, None, lambda t: t.has("small_surface", "surface") and t.has(
            "kitchen", "restaurant") and t.name != "frying pan")  # fmt: skip
        if plate is not None:
            pl = g.add(plate)
            g.attrs_for_level(pl, 1)
            tail = f"{_relate(g, di, pl, 'on')} {_indef(g.e(pl))}"
    if g.p(0.3, 1):
        person = g.pick([p for p in V.PEOPLE if "general" in p.tags])
        pi = g.add(person)
        g.rel(pi, di, "action", "eat", "eating")
        return f"{_indef(g.e(pi))} {g.pick(('eating', 'enjoying'))} {D} {how[0]} {S} {tail}"
    last = f"{D} {tail}, {how[0]} {S}" if tail else f"{D} {how[0]} a pile of {S}"
    return g.pick((f"{D} {how[0]} {S} {tail}", f"{D} {how[0]} {S} {tail}",
                   f"{g.pick(_PHOTO_PREFIXES[:8])} {D} {how[0]} {S} {tail}", last))  # fmt: skip


def _w_drink(g: _Gen) -> str:
    drink = g.pick(V.DRINKS)
    vessel = g.pick(V.ABSURD_VESSELS)
    di = g.add(_ad_hoc(drink), -1, text=drink)
    if g.p(0.4, 1):
        hot = drink in ("coffee", "tea", "hot chocolate", "soup")
        g.e(di).attrs.append(
            Attr("state", g.pick(("hot", "steaming") if hot else ("cold", "fresh")))
        )
    vn = V.thing(vessel) if vessel in {n.name for n in V.THINGS} else _ad_hoc(vessel, size="s")
    vi = g.add(vn)
    g.attrs_for_level(vi, 1)
    g.rel(di, vi, "spatial", "in")
    g.s.defying = ("drink_vessel", drink, vessel)
    D, Vv = _indef(g.e(di)), _indef(g.e(vi))
    if g.r.random() < 0.4:
        person = g.pick([p for p in V.PEOPLE if "general" in p.tags and p.has("adult", "teen")])
        pi = g.add(person)
        g.rel(pi, vi, "action", "drink from", "drinking from")
        place = g.place()
        P = _place_phrase(g, pi, place, 0.5)
        return g.pick((f"{_indef(g.e(pi))} drinking {D} from {Vv} {P}",
                       f"{_indef(g.e(pi))} drinks {D} out of {Vv} {P}",
                       f"{_indef(g.e(pi))} is sipping {D} from {Vv} {P}"))  # fmt: skip
    place = g.place(indoor=True)
    P = _place_phrase(g, vi, place, 0.4)
    return g.pick((f"{D} served in {Vv} {P}", f"{Vv} filled to the brim with {D} {P}",
                   f"{D} poured into {Vv} {P}", f"{Vv} full of {D} {P}"))  # fmt: skip


def _w_color(g: _Gen) -> str:
    produce = g.pick([t for t in V.THINGS if t.has("fruit", "veg")])
    color = g.pick([c for c in V.WEIRD_COLORS if c not in produce.colors])
    pi = g.number(produce, 0.5)
    e = g.e(pi)
    bright = "" if color.startswith(("bright", "neon")) else g.pick(("", "bright "))
    e.attrs.append(Attr("color", color, word=bright + color))
    g.s.defying = ("produce_color", produce.name, color)
    place = g.place(domains=("kitchen", "shop", "garden", "farm"))
    if g.p(0.4, 1):
        holder = _pick_thing(g, place, _holder)
        if holder is not None and V.SIZE_RANK[holder.size] > V.SIZE_RANK[produce.size]:
            hi = g.add(holder)
            g.attrs_for_level(hi, 1)
            words = _relate(g, pi, hi)
            P = _place_phrase(g, hi, place, 0.3)
            return f"{_indef(e)} {words} {_indef(g.e(hi))} {P}"
    if g.p(0.3, 1):
        person = g.pick([p for p in V.PEOPLE if "general" in p.tags])
        qi = g.add(person)
        verb = g.pick((("hold", "holding"), ("eat", "eating"), ("cut", "cutting")))
        g.rel(qi, pi, "action", verb[0], verb[1])
        P = _place_phrase(g, qi, place, 0.5)
        return f"{_indef(g.e(qi))} {verb[1]} {_indef(e)} {P}"
    P = _place_phrase(g, pi, place, 0.8)
    return g.pick((f"{_indef(e)} {P}", f"{_indef(e)} for sale {P}",
                   f"{g.pick(_PHOTO_PREFIXES[:8])} {_indef(e)} {P}",
                   f"{_indef(e)} growing {P}" if e.plural else f"{_indef(e)} {P}"))  # fmt: skip


def _w_place_activity(g: _Gen) -> str:
    act = g.pick(V.PLACE_ACTIVITIES)
    lemma, ger, third, _need = act
    places = [p for p in V.WHOOPS_PLACES if V.defies("place_activity", lemma, p.name)]
    place = g.pick(places)
    person = g.pick([p for p in V.PEOPLE if "general" in p.tags or p.has("tourist", "surfer")])
    pi = g.add(person)
    if g.p(0.15):
        g.e(pi).number, g.e(pi).quant = 0, g.pick(("", "some", "a group of"))
        third = lemma
    e = g.e(pi)
    e.states.append((lemma, ger))
    qi = _whoops_place_ent(g, place)
    g.rel(pi, qi, "spatial", place.prep)
    g.s.defying = ("place_activity", lemma, place.name)
    tail = ""
    if place.has("traffic") and g.p(0.5, 1):
        car = g.pick([t for t in V.THINGS if t.has("land_vehicle") and t.has("street")])
        ci = g.add(car, 0, quant="")
        g.e(ci).states.append(("drive", "driving"))
        g.rel(ci, pi, "spatial", "next to")
        tail = f"as {_indef(g.e(ci))} {g.pick(('rush past', 'drive past', 'speed by'))}"
    return _whoops_frames(g, _indef(e), _be(e), ger, third, _at(g.e(qi)), tail or _tail(g, place))


def _w_plant(g: _Gen) -> str:
    plant = g.pick(
        [t for t in V.THINGS if t.has("plant") and not t.has("potted plant", "bouquet of flowers")]
    )
    places = [p for p in V.WHOOPS_PLACES if V.defies("plant_place", plant.name, p.name)]
    place = g.pick(places)
    ti = g.number(plant, 0.4)
    g.attrs_for_level(ti, 1)
    e = g.e(ti)
    lemma, ger, third = g.pick((("grow", "growing", "grows"), ("bloom", "blooming", "blooms"))
                               if plant.has("flower", "rose", "tulip", "sunflower", "cactus")
                               else (("grow", "growing", "grows"), ("stand", "standing",
                                                                    "stands")))  # fmt: skip
    e.states.append((lemma, ger))
    if e.plural:
        third = lemma
    qi = _whoops_place_ent(g, place)
    g.rel(ti, qi, "spatial", place.prep)
    g.s.defying = ("plant_place", plant.name, place.name)
    return _whoops_frames(g, _indef(e), _be(e), ger, third, _at(g.e(qi)), _tail(g, place))


_WHOOPS: dict[str, Callable[[_Gen], str]] = {
    "habitat": _w_habitat,
    "fire_water": _w_fire_water,
    "ice_heat": _w_ice_heat,
    "material": _w_material,
    "animal_human": _w_animal_human,
    "vehicle_terrain": _w_vehicle,
    "size": _w_size,
    "wrong_tool": _w_wrong_tool,
    "food_pairing": _w_food,
    "drink_vessel": _w_drink,
    "produce_color": _w_color,
    "place_activity": _w_place_activity,
    "plant_place": _w_plant,
}


def _whoops(g: _Gen) -> str:
    return _WHOOPS[g.pick(V.WHOOPS_KINDS)](g)


# --- localized narratives ---------------------------------------------------------------------

_LN_OPENERS = (
    "In this image we can see", "In this picture we can see", "In this image I can see",
    "Here we can see", "In the front of the image we can see", "In this picture I can see",
    "In the foreground of the image we can see", "This is an image of", "This picture shows",
    "In the middle of the image we can see", "In this picture there is",
)  # fmt: skip


def _scenery(place: V.Noun) -> list[V.Noun]:
    indoor = place.has("indoor")
    return [
        s
        for s in V.SCENERY
        if (s.has("indoor") and indoor)
        or (not indoor and (s.has("outdoor") or bool(s.domains & place.domains)))
    ]


def _ln_item(g: _Gen, place: V.Noun, used: list[str]) -> int | None:
    if g.r.random() < 0.5:
        pool = [s for s in _scenery(place) if s.name not in used]
        if pool:
            s = g.pick(pool)
            used.append(s.name)
            if s.has("mass"):
                return g.add(s, -1, quant="")
            if g.r.random() < 0.6:
                return g.add(s, 0, quant=g.pick(("", "", "some", "a few", "few")))
            return g.add(s)
    t = _pick_thing(g, place, lambda t: not t.has("food"), exclude=used)
    if t is None:
        return None
    used.append(t.name)
    i = g.number(t, 0.45)
    if g.p(0.3, 2):
        g.decorate(i, 1)
    return i


def _pronoun(g: _Gen, i: int) -> str:
    e = g.e(i)
    if e.plural:
        return "them"
    if e.noun.kind == "person" and e.noun.pronoun in ("him", "her"):
        return e.noun.pronoun
    return _the(e)


def _localized_narratives(g: _Gen) -> str:
    main = g.wpick([(40, "person"), (25, "animal"), (35, "objects")])
    place = g.place() if main == "objects" else g.place_for((main,))
    if main == "objects":
        b = _pick_thing(g, place, _holder) or V.thing("table")
        a = _pick_thing(
            g, place, lambda t: _small(t) and V.SIZE_RANK[t.size] < V.SIZE_RANK[b.size]
        ) or V.thing("cup")  # fmt: skip
        ai = g.number(a, 0.4)
        g.attrs_for_level(ai, 1)
        bi = g.add(b)
        g.attrs_for_level(bi, 1)
        words = _relate(g, ai, bi)
        X = f"{_indef(g.e(ai))} {words} {_indef(g.e(bi))}"
        anchor = bi
    else:
        cl = _agent(g, place, (main,), number="some" if g.p(0.2) else "one")
        X = f"{cl.np} {cl.ger}"
        anchor = cl.subj
        e = g.e(anchor)
        if g.p(0.3, 2) and not e.states and len(g.s.ents) == anchor + 2:
            sts = [v for v in _states_for(e.noun, place.name) if v.lemma not in ("sleep",)]
            if sts:
                v = g.pick(sts)
                e.states.append((v.lemma, v.gerund))
                X = f"{X} and {v.gerund}"
    P = ""
    opener = g.pick(_LN_OPENERS)
    if g.p(0.25):
        pi = g.add_place(place, 0.3)
        g.rel(anchor, pi, "spatial", place.prep)
        P = _at(g.e(pi))
        s1 = g.pick((f"This image is taken {P} where we can see {X}.",
                     f"This picture is clicked {P}. In it we can see {X}.",
                     f"{opener} {X} {P}."))  # fmt: skip
    else:
        s1 = f"{opener} {X}."
    sentences = [s1]
    used: list[str] = [e.noun.name for e in g.s.ents]
    if g.level >= 1:
        k = g.r.randint(1, 3 if g.level >= 2 else 2)
        items = [i for i in (_ln_item(g, place, used) for _ in range(k)) if i is not None]
        if items:
            L = _list([_indef(g.e(i)) for i in items])
            first = g.e(items[0])
            there = "there are" if first.plural or len(items) > 1 else "there is"
            pron = _pronoun(g, anchor)
            form = g.pick(("behind", "behind", "beside", "background", "left", "right", "back",
                           "around"))  # fmt: skip
            if form in ("behind", "beside"):
                key = "behind" if form == "behind" else "next to"
                for i in items:
                    g.rel(i, anchor, "spatial", key)
                word = "Behind" if form == "behind" else g.pick(("Beside", "Next to"))
                s2 = g.pick((f"{word} {pron} we can see {L}.", f"{word} {pron} {there} {L}."))
            elif form == "background":
                s2 = g.pick((f"In the background we can see {L}.",
                             f"In the background {there} {L}.",
                             f"In the background of the image we can see {L}."))  # fmt: skip
            elif form == "left":
                s2 = g.pick((f"On the left side of the image we can see {L}.",
                             f"On the left side {there} {L}."))  # fmt: skip
            elif form == "right":
                s2 = g.pick((f"On the right side of the image we can see {L}.",
                             f"On the right side {there} {L}."))  # fmt: skip
            elif form == "back":
                s2 = f"At the back we can see {L}."
            else:
                s2 = f"Around {pron} we can see {L}."
            sentences.append(s2)
    if len(" ".join(sentences).split(". ")) < 3 and g.p(0.65, 2):
        sentences.append(_ln_closing(g, place, used))
    return " ".join(sentences)


def _ln_closing(g: _Gen, place: V.Noun, used: list[str]) -> str:
    if place.has("indoor"):
        opt = g.r.randint(0, 3)
        if opt == 0:
            ci = g.add(_ad_hoc("ceiling", "ceilings"))
            if g.p(0.5):
                li = g.add(_ad_hoc("light", "lights"), 0, quant="")
                return f"At the top we can see the ceiling and {_indef(g.e(li))}."
            return g.pick(("At the top we can see the ceiling.",
                           f"At the top of the image there is {_indef(g.e(ci))}."))  # fmt: skip
        if opt == 1:
            wi = g.add(_ad_hoc("wall", "walls"))
            t = g.pick([t for t in V.THINGS if t.has("hang")])
            ti = g.number(t, 0.3)
            g.decorate(ti, 1)
            g.rel(ti, wi, "spatial", "on")
            return f"On the wall we can see {_indef(g.e(ti))}."
        if opt == 2:
            return g.pick(("The background is dark.", "The background is blurry.",
                           "The room is brightly lit."))  # fmt: skip
        fi = g.add(_ad_hoc("floor", "floors"))
        item = _pick_thing(g, place, lambda t: t.has("soft", "toy", "ball", "box"))
        if item is None:
            return "The floor is clean."
        ti = g.number(item, 0.3)
        g.rel(ti, fi, "spatial", "on")
        return f"On the floor we can see {_indef(g.e(ti))}."
    opt = g.r.randint(0, 3)
    if opt == 0:
        si = g.add(_ad_hoc("sky", "skies"))
        if g.p(0.5):
            ci = g.add(_ad_hoc("cloud", "clouds"), 0, quant="")
            return g.pick((f"At the top of the image we can see the sky with {_indef(g.e(ci))}.",
                           "At the top we can see the sky with clouds."))  # fmt: skip
        if g.p(0.5):
            g.e(si).attrs.append(Attr("color", "blue"))
            return "At the top we can see the blue sky."
        return g.pick(("At the top of the image we can see the sky.",
                       "In the background we can see the sky."))  # fmt: skip
    if opt == 1:
        if place.has("snow"):
            grounds: tuple[str, ...] = ("snow",)
        elif place.has("beach"):
            grounds = ("sand", "stones", "shells")
        elif place.has("park", "wild", "farm", "garden"):
            grounds = ("grass", "leaves", "stones", "dry leaves")
        else:
            grounds = ("stones", "a road", "paper pieces")
        grounds = tuple(x for x in grounds if not {x, x.split()[-1], x.rstrip("s")} & set(used))
        if not grounds:
            return "The background is blurry."
        ground = g.pick(grounds)
        mass = ground in ("snow", "sand", "grass")
        noun = ground.removeprefix("a ")
        g.add(_ad_hoc(noun, noun), -1 if mass else (1 if ground.startswith("a ") else 0),
              text=noun, label_plural=not mass and not ground.startswith("a "))  # fmt: skip
        return f"On the ground we can see {ground}."
    if opt == 2:
        return g.pick(("It seems to be a sunny day.", "The background is blurry.",
                       "It looks like it is evening.", "It is a bright day."))  # fmt: skip
    return g.pick(("We can also see the sky.", "In the background it is slightly blurred.",
                   "The sky is cloudy."))  # fmt: skip


# --- diffusiondb ----------------------------------------------------------------------------------


def _ddb_place(g: _Gen, subj: int, prob: float = 0.7, outdoor: bool = False) -> str:
    if not g.p(prob):
        return ""
    place = g.pick([p for p in V.DDB_PLACES if not (outdoor and p.has("indoor"))])
    pi = g.add(place)
    g.rel(subj, pi, "spatial", place.prep)
    return _at(g.e(pi))


def _ddb_clothes(g: _Gen, subj: int) -> str:
    cloth = g.pick(V.DDB_CLOTHES)
    mass = cloth.name == "armor"
    ci = g.add(cloth, -1 if mass else 1)
    g.decorate(ci, 1 if g.level < 2 else 2)
    g.e(ci).attrs = [a for a in g.e(ci).attrs if a.kind in ("color", "material", "pattern")]
    g.rel(subj, ci, "action", "wear", "wearing")
    return _indef(g.e(ci))


def _ddb_portrait(g: _Gen) -> str:
    person = g.pick(V.DDB_PEOPLE)
    pi = g.add(person)
    e = g.e(pi)
    if g.p(0.5):
        e.attrs.append(Attr("", g.pick(V.DDB_PERSON_ADJ)))
    bits = []
    if g.p(0.6, 1):
        phrase, part, colors = g.pick(V.DDB_PARTS)
        if colors:
            c = g.pick(colors)
            plural = part in ("eyes", "horns", "wings", "freckles", "tattoos", "ears")
            value = c.split()[-1]
            text = phrase.format(c=c)
            asked = part if plural or part == "hair" else f"a {part}"
            e.parts.append(Part(part, asked, plural, [Attr("color", value)]))
        else:
            text = phrase
            plural = part in ("freckles", "tattoos", "ears")
            e.parts.append(Part(part, text if plural else f"a {part}", plural))
        bits.append(f"with {text}")
    if g.p(0.6, 1):
        bits.append(f"wearing {_ddb_clothes(g, pi)}")
    P = _ddb_place(g, pi, 0.5)
    lead = g.pick(("portrait of", "a portrait of", "close-up portrait of", "a headshot of",
                   "full body portrait of", "an epic portrait of"))  # fmt: skip
    return " ".join([lead, _indef(e), *bits, P])


def _ddb_creature(g: _Gen) -> str:
    c = g.pick(V.DDB_CREATURES)
    ci = g.number(c, 0.15)
    e = g.e(ci)
    if g.p(0.7):
        adj = g.pick(V.DDB_CREATURE_ADJ)
        kind = {"tiny": "size", "giant": "size", "fluffy": "texture", "mechanical": "material",
                "glowing": "state", "sleepy": "state"}.get(adj, "")  # fmt: skip
        e.attrs.append(Attr(kind, adj))
    colors = [x for x in c.colors if x not in c.name]
    if colors and g.p(0.35, 1):
        e.attrs.append(Attr("color", g.pick(colors)))
    if g.r.random() < 0.4:
        lemma, ger, oname = g.pick(V.DDB_ACTIONS)
        oi = g.add(V.thing(oname))
        g.decorate(oi, 1)
        g.rel(ci, oi, "action", lemma, ger)
        act = f"{ger} {_indef(g.e(oi))}"
    else:
        lemma, ger = g.pick(V.DDB_STATES)
        e.states.append((lemma, ger))
        act = ger
    wear = f"wearing {_ddb_clothes(g, ci)}" if g.p(0.3, 2) else ""
    P = _ddb_place(g, ci, 0.8)
    if wear and g.r.random() < 0.5:
        return f"{_indef(e)} {wear} {act} {P}"
    return f"{_indef(e)} {act} {P} {wear}"


def _ddb_building(g: _Gen) -> str:
    b = g.pick(V.DDB_BUILDINGS)
    bi = g.add(b)
    e = g.e(bi)
    if g.p(0.8):
        e.attrs.append(Attr("state", g.pick(V.DDB_BUILDING_ADJ)))
    if b.materials and g.p(0.4, 1):
        m = g.pick(b.materials)
        e.attrs.append(Attr("material", m, V.MATERIALS[m]))
    P = _ddb_place(g, bi, 0.9, outdoor=True)
    tail = ""
    if g.p(0.35, 2):
        t = g.pick([t for t in V.THINGS if t.has("lightable", "plant", "flag", "bench", "vehicle")
                    and V.SIZE_RANK[t.size] <= 3])  # fmt: skip
        ti = g.number(t, 0.4)
        g.decorate(ti, 1)
        g.rel(ti, bi, "spatial", "in front of")
        tail = f"with {_indef(g.e(ti))} in front of it"
    return f"{_indef(e)} {P} {tail}"


def _still_life_item(t: V.Noun) -> bool:
    return (
        _small(t)
        and t.has(
            "food",
            "container",
            "read",
            "candle",
            "instrument",
            "plant",
            "clock",
            "globe",
            "camera",
            "lantern",
        )
        and not t.has(
            "purse", "handbag", "backpack", "shopping bag", "suitcase", "lunch box", "trash can"
        )
    )


def _ddb_still_life(g: _Gen) -> str:
    table = g.pick([t for t in V.THINGS if t.has("table", "dining table", "coffee table", "desk",
                                                 "kitchen counter", "shelf", "windowsill",
                                                 "picnic table")])  # fmt: skip
    ti = g.add(table)
    g.decorate(ti, 1)
    used: list[str] = []
    items = []
    for _ in range(2 + (1 if g.p(0.5, 1) else 0)):
        t = _pick_thing(g, None, _still_life_item, exclude=used)
        if t is None:
            break
        used.append(t.name)
        i = g.number(t, 0.3)
        g.decorate(i, 1)
        g.rel(i, ti, "spatial", "on")
        items.append(_indef(g.e(i)))
    return f"still life of {_list(items)} on {_indef(g.e(ti))}"


def _ddb_landscape(g: _Gen) -> str:
    name = g.pick(V.DDB_LANDSCAPES)
    li = g.add(_ad_hoc(name, size="xl"))
    if g.p(0.8):
        g.e(li).attrs.append(Attr("state", g.pick(V.DDB_LANDSCAPE_ADJ)))
    focus = g.pick([t for t in V.THINGS if t.has("building", "tree", "tent", "boat", "aircraft",
                                                   "cabin", "windmill", "lighthouse", "bridge")
                    or t.name in ("bench", "statue", "train")])  # fmt: skip
    fi = g.add(focus)
    if g.p(0.5):
        g.e(fi).attrs.append(Attr("", g.pick(("lone", "small", "distant", "solitary"))))
    g.rel(fi, li, "spatial", "in")
    text = f"{_a(_core(g.e(li)))} {_core(g.e(li))} with {_indef(g.e(fi))}"
    if g.p(0.6, 1):
        adj, noun = g.pick(V.DDB_SKY)
        si = g.add(_ad_hoc(noun, size="xl"))
        kind = "color" if adj in ("pink", "orange", "purple") else "state"
        g.e(si).attrs.append(Attr(kind, adj))
        g.rel(fi, si, "spatial", "under")
        text += f" under {_indef(g.e(si))}"
    return text


def _ddb_vehicle(g: _Gen) -> str:
    v = g.pick([t for t in V.THINGS if t.has("vehicle", "aircraft")])
    vi = g.add(v)
    if g.p(0.6):
        adj = g.pick(("vintage", "futuristic", "rusty", "retro", "steampunk", "abandoned"))
        g.e(vi).attrs.append(Attr("state", adj))
    if v.colors and g.p(0.5):
        g.e(vi).attrs.append(Attr("color", g.pick(v.colors)))
    lemma, ger = g.pick((("drive", "driving"), ("float", "floating"), ("fly", "flying"),
                         ("park", "parked")))  # fmt: skip
    g.e(vi).states.append((lemma, ger))
    P = _ddb_place(g, vi, 0.9, outdoor=True)
    return f"{_indef(g.e(vi))} {ger} {P}"


def _ddb_interior(g: _Gen) -> str:
    place = g.place(indoor=True)
    pi = g.add(place)
    if g.p(0.7):
        g.e(pi).attrs.append(Attr("state", g.pick(("cozy", "messy", "sunlit", "futuristic",
                                                   "abandoned", "victorian", "minimalist",
                                                   "tiny", "luxurious"))))  # fmt: skip
    used: list[str] = []
    items = []
    for _ in range(2):
        t = _pick_thing(g, place, lambda t: not t.has("food"), exclude=used)
        if t is None:
            break
        used.append(t.name)
        i = g.number(t, 0.5)
        g.decorate(i, 1)
        g.rel(i, pi, "spatial", "in")
        items.append(_indef(g.e(i)))
    lead = g.pick(("the interior of", "the interior of", "an isometric view of"))
    c = _core(g.e(pi))
    return f"{lead} {_a(c)} {c} with {_list(items)}" if items else f"{lead} {_a(c)} {c}"


def _ddb_sculpture(g: _Gen) -> str:
    c = g.pick(V.DDB_CREATURES)
    ci = g.add(c)
    mat = g.pick(("crystal", "gold", "glass", "porcelain", "marble", "bronze", "wood", "clay"))
    form = g.pick(("sculpture", "statue", "figurine"))
    si = g.add(_ad_hoc(form, size="m"))
    g.e(si).attrs.append(Attr("material", mat, V.MATERIALS.get(mat, mat)))
    g.rel(si, ci, "spatial", "depicts", "depicting")
    return f"{_indef(g.e(si))} of {_indef(g.e(ci))}"


_DDB_SUBJECTS: tuple[tuple[float, Callable[[_Gen], str]], ...] = (
    (22, _ddb_portrait), (26, _ddb_creature), (14, _ddb_building), (7, _ddb_still_life),
    (11, _ddb_landscape), (8, _ddb_vehicle), (8, _ddb_interior), (4, _ddb_sculpture),
)  # fmt: skip


def _diffusiondb(g: _Gen) -> str:
    build = g.wpick(_DDB_SUBJECTS)
    subject = build(g)
    subject = " ".join(subject.split())
    head = subject
    if not subject.startswith(("portrait", "a portrait", "close-up", "a headshot", "full body",
                               "an epic", "an isometric")) and g.r.random() < 0.6:  # fmt: skip
        prefix, value, q = g.pick(V.DDB_PREFIXES)
        head = f"{prefix} {subject}"
        g.s.styles.append((value, q))
    n_kw = {3: (3, 9), 2: (2, 5), 1: (1, 3), 0: (0, 1)}[min(g.level, 3)]
    k = g.r.randint(*n_kw)
    kws: list[str] = []
    if k and g.r.random() < 0.45:
        style = g.pick(V.DDB_STYLES)
        kws.append(style)
        g.s.styles.append((style, f"Is this image in {style} style?"))
        k -= 1
    if k and g.r.random() < 0.2:
        artist = g.pick(V.DDB_ARTISTS)
        kws.append(g.pick(("by", "in the style of", "style of")) + " " + artist)
        g.s.styles.append((artist, f"Is this image in the style of {artist.title()}?"))
        k -= 1
    pool = list(V.DDB_LIGHTING[: len(V.DDB_LIGHTING)]) + list(V.DDB_QUALITY)
    extra = g.r.sample(pool, min(k, len(pool)))
    kws += extra
    g.r.shuffle(kws)
    sep = g.pick((", ", ", ", ", ", ". ", " | ", ", "))
    text = head + (sep if kws else "") + sep.join(kws)
    if g.r.random() < 0.35:
        text += "."
    return text


# --- generic (user-defined skills) --------------------------------------------------------------


def _generic(g: _Gen, word_limit: int) -> str:
    text = _coco(g)
    places = [e.noun for e in g.s.ents if e.noun.kind == "place"]
    if places and word_limit >= 40 and g.p(0.6, 3):
        place = places[0]
        used = [e.noun.name for e in g.s.ents]
        items = [i for i in (_ln_item(g, place, used) for _ in range(2)) if i is not None]
        if items:
            L = _list([_indef(g.e(i)) for i in items])
            plural = len(items) > 1 or g.e(items[0]).plural
            lead = g.pick(("In the background there are", "Nearby there are", "Nearby are",
                           "Further back there are") if plural else
                          ("In the background there is", "Nearby there is"))  # fmt: skip
            text = f"{_tidy(text)} {lead} {L}."
    return text


# --- composing and tidying --------------------------------------------------------------------


def _tidy(text: str, capitalize: bool = True, period: bool = True) -> str:
    text = " ".join(text.split())
    text = re.sub(r"\s+([,.!?])", r"\1", text)
    text = re.sub(r",\s*,", ",", text)
    text = re.sub(r"\.\s*\.", ".", text)
    text = text.strip(" ,")
    if capitalize and text:
        text = text[0].upper() + text[1:]
    if period and text and text[-1] not in ".!?":
        text += "."
    return text


def _minimal(rng: random.Random, word_limit: int) -> tuple[str, Scene]:
    """The fallback for tiny word limits: one object, with a colour when it fits."""
    noun = rng.choice([t for t in V.THINGS if t.colors and " " not in t.name])
    color = rng.choice([c for c in noun.colors if " " not in c and "-" not in c] or ["red"])
    with_color = Ent(noun, attrs=[Attr("color", color)])
    for e, text in (  # noqa: B007 - the last e is used below
        (with_color, _indef(with_color)),
        (with_color, _core(with_color)),
        (Ent(noun), _indef(Ent(noun))),
        (Ent(noun), noun.name),
    ):
        if len(text.split()) <= word_limit:
            break
    return _tidy(text), Scene(ents=[e])


_MIN_WORDS = 3  # the response parser drops shorter items


def _builder(skill: str, word_limit: int) -> Callable[[_Gen], str]:
    if skill == "coco":
        return _coco
    if skill == "countbench":
        return _countbench
    if skill == "whoops":
        return _whoops
    if skill == "localized_narratives":
        return _localized_narratives
    if skill == "diffusiondb":
        return _diffusiondb
    return lambda g: _generic(g, word_limit)


def compose_scene(
    skill: str, rng: random.Random, word_limit: int, max_count: int | None = None
) -> tuple[str, Scene]:
    """One prompt for ``skill`` and the scene graph it was rendered from.

    Tries the richest detail level first and drops detail until the prompt fits
    ``word_limit`` (words by ``str.split``).
    """
    if skill == "countbench" and max_count is None:
        max_count = BUILTIN_SKILLS["countbench"].max_count
    build = _builder(skill, word_limit)
    lowercase_ok = skill == "diffusiondb"
    seed = rng.getrandbits(64)
    for level in (3, 2, 1, 0):
        for attempt in range(3):
            g = _Gen(random.Random(seed * 7 + attempt * 1_000_003 + level), level, max_count)
            raw = build(g)
            capitalize = not lowercase_ok or g.r.random() < 0.4
            text = _tidy(raw, capitalize=capitalize, period=not lowercase_ok or raw.endswith("."))
            if min(_MIN_WORDS, word_limit) <= len(text.split()) <= word_limit:
                return text, g.s
    return _minimal(random.Random(seed), word_limit)


def compose(
    skill: str, rng: random.Random, word_limit: int, max_count: int | None = None
) -> tuple[str, list[Question]]:
    """One prompt for ``skill`` (within ``word_limit`` words) and its DSG questions."""
    text, scene = compose_scene(skill, rng, word_limit, max_count)
    return text, scene_questions(scene)


def _key(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


class SceneGraphEngine:
    """Offline prompt engine: numbered lists of compositional prompts, with DSG questions."""

    name = "scene-graph"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._questions: dict[str, list[Question]] = {}

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        out = []
        for req in requests:
            rng = random.Random(
                f"scene-graph|{self.seed}|{req.skill}|{req.seed}|{req.start_index}|{req.n_items}"
            )
            skill = BUILTIN_SKILLS.get(req.skill)
            max_count = skill.max_count if skill is not None else None
            seen: set[str] = set()
            lines = []
            for i in range(max(0, req.n_items)):
                for _ in range(4):
                    text, qs = compose(req.skill, rng, req.word_limit, max_count)
                    if _key(text) not in seen:
                        break
                seen.add(_key(text))
                self._questions[text] = qs
                self._questions[_key(text)] = qs
                lines.append(f"{req.start_index + i}. {text}")
            out.append("\n".join(lines))
        return out

    def questions_for(self, prompt: str) -> list[Question] | None:
        qs = self._questions.get(prompt.strip())
        if qs is None:
            qs = self._questions.get(_key(prompt))
        return None if qs is None else [Question(**q.to_dict()) for q in qs]

    def close(self) -> None:
        return None
