"""The ``diffusiondb`` skill renderer: prompts the way text-to-image users write them.

Owns :func:`_diffusiondb`: a subject (a portrait, a creature, a building, a still life, a
landscape, a vehicle, an interior or a sculpture, each with its own builder), maybe a medium
prefix ("an oil painting of"), then style, artist, lighting and quality keywords. The medium,
style and artist become global style questions.
"""

from __future__ import annotations

from collections.abc import Callable

from selma_ray.prompts.engines.scene_graph import vocabulary as V
from selma_ray.prompts.engines.scene_graph.generator import _ad_hoc, _Gen
from selma_ray.prompts.engines.scene_graph.phrases import _pick_thing, _small
from selma_ray.prompts.engines.scene_graph.scene import Attr, Part, _a, _at, _core, _indef, _list


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
