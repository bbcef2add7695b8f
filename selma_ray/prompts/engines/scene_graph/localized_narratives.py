"""The ``localized_narratives`` skill renderer: "In this image we can see ..." paragraphs.

Owns :func:`_localized_narratives`: one to three sentences the way the Localized Narratives
annotators spoke them: the main subject (a person, an animal or things on a holder), what is
around it (scenery and things, :func:`_ln_item`), and a closing remark on the room, the sky,
the ground or the light (:func:`_ln_closing`).
"""

from __future__ import annotations

from selma_ray.prompts.engines.scene_graph import vocabulary as V
from selma_ray.prompts.engines.scene_graph.generator import _ad_hoc, _Gen, _states_for
from selma_ray.prompts.engines.scene_graph.phrases import (
    _agent,
    _holder,
    _pick_thing,
    _relate,
    _small,
)
from selma_ray.prompts.engines.scene_graph.scene import Attr, _at, _indef, _list, _the

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
    X, anchor = _ln_subject(g, main, place)
    sentences = [_ln_opening(g, place, X, anchor)]
    used: list[str] = [e.noun.name for e in g.s.ents]
    if g.level >= 1:
        around = _ln_surroundings(g, place, anchor, used)
        if around:
            sentences.append(around)
    if len(" ".join(sentences).split(". ")) < 3 and g.p(0.65, 2):
        sentences.append(_ln_closing(g, place, used))
    return " ".join(sentences)


def _ln_subject(g: _Gen, main: str, place: V.Noun) -> tuple[str, int]:
    """The main subject's words and its entity (the anchor the other sentences refer to)."""
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
        return f"{_indef(g.e(ai))} {words} {_indef(g.e(bi))}", bi
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
    return X, anchor


def _ln_opening(g: _Gen, place: V.Noun, X: str, anchor: int) -> str:
    """The first sentence: an opener and the subject ``X``, sometimes with the place."""
    opener = g.pick(_LN_OPENERS)
    if g.p(0.25):
        pi = g.add_place(place, 0.3)
        g.rel(anchor, pi, "spatial", place.prep)
        P = _at(g.e(pi))
        return g.pick((f"This image is taken {P} where we can see {X}.",
                       f"This picture is clicked {P}. In it we can see {X}.",
                       f"{opener} {X} {P}."))  # fmt: skip
    return f"{opener} {X}."


def _ln_surroundings(g: _Gen, place: V.Noun, anchor: int, used: list[str]) -> str:
    """A sentence on what else is in the image: behind or beside the subject, in the
    background, on one side ... ("" when nothing fits)."""
    k = g.r.randint(1, 3 if g.level >= 2 else 2)
    items = [i for i in (_ln_item(g, place, used) for _ in range(k)) if i is not None]
    if not items:
        return ""
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
        return g.pick((f"{word} {pron} we can see {L}.", f"{word} {pron} {there} {L}."))
    if form == "background":
        return g.pick((f"In the background we can see {L}.",
                       f"In the background {there} {L}.",
                       f"In the background of the image we can see {L}."))  # fmt: skip
    if form == "left":
        return g.pick((f"On the left side of the image we can see {L}.",
                       f"On the left side {there} {L}."))  # fmt: skip
    if form == "right":
        return g.pick((f"On the right side of the image we can see {L}.",
                       f"On the right side {there} {L}."))  # fmt: skip
    if form == "back":
        return f"At the back we can see {L}."
    return f"Around {pron} we can see {L}."


def _ln_closing(g: _Gen, place: V.Noun, used: list[str]) -> str:
    """A closing sentence: the ceiling, a wall, the floor or the light indoors; the sky, the
    ground or the day outdoors."""
    if place.has("indoor"):
        return _ln_closing_indoor(g, place)
    return _ln_closing_outdoor(g, place, used)


def _ln_closing_indoor(g: _Gen, place: V.Noun) -> str:
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


def _ln_closing_outdoor(g: _Gen, place: V.Noun, used: list[str]) -> str:
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
