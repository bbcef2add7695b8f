"""Scene graphs, their text forms and their DSG questions: what every skill renderer shares.

Owns the graph types (:class:`Attr`, :class:`Part`, :class:`Ent`, :class:`Rel`, :class:`Scene`),
the small text helpers that render entities (``_indef`` "a red cup", ``_the``, ``_at`` "in a
sunny park", ``_there``, ``_list`` ...) and :func:`scene_questions`, which writes DSG-style
atomic questions from a graph: entities as roots, attributes / counts / states / parts depending
on their entity, relations on both entities, global styles last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from selma_ray.prompts.engines.base import Question
from selma_ray.prompts.engines.scene_graph import vocabulary as V

# --- the graph ------------------------------------------------------------------------------------

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


# --- text -----------------------------------------------------------------------------------------


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


def _there(e: Ent) -> str:
    return "There are" if e.plural else "There is"


def _list(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# --- DSG questions --------------------------------------------------------------------------------


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
