"""The ``whoops`` skill renderer: scenes that defy common sense.

Owns :func:`_whoops`, which picks one of the rules of ``vocabulary.WHOOPS_KINDS`` and renders a
pairing that rule says is absurd (``vocabulary.defies``): a polar animal in a desert, a candle
burning underwater, a chair made of jelly, a drink served in a shoe ... The pairing is recorded
as ``Scene.defying``. Also owns the phrasing only whoops uses: adjectives for its places,
climate tails ("under the blazing sun") and bystanders reacting.
"""

from __future__ import annotations

from collections.abc import Callable

from selma_ray.prompts.engines.scene_graph import vocabulary as V
from selma_ray.prompts.engines.scene_graph.generator import _actions_for, _ad_hoc, _Gen
from selma_ray.prompts.engines.scene_graph.phrases import (
    _PHOTO_PREFIXES,
    _holder,
    _pick_thing,
    _place_phrase,
    _relate,
)
from selma_ray.prompts.engines.scene_graph.scene import Attr, _at, _be, _indef, _there


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
