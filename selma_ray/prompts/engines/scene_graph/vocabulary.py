"""The vocabulary of the scene-graph engine: nouns, verbs, word lists and the whoops rules.

Owns the :class:`Noun` / :class:`Verb` types, the reading of ``vocabulary.json`` (package data
next to this module, described by its ``about`` section) and the queries on it: :func:`thing`,
:func:`whoops_place`, :func:`defies` (which pairings defy common sense) and
:func:`vocabulary_sizes`.

The data is read lazily. Importing this module reads nothing; the first access to a data name
(``vocabulary.THINGS`` ...) or the first query reads and parses the file, once, and binds every
data name as a module attribute, so later accesses are plain attribute lookups.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from types import SimpleNamespace
from typing import Any

DATA_FILE = "vocabulary.json"


@dataclass(frozen=True)
class Noun:
    """One countable thing, animal, person or place of the vocabulary."""

    name: str
    plural: str
    kind: str  # thing | animal | person | place
    size: str = "m"
    tags: frozenset[str] = frozenset()
    materials: tuple[str, ...] = ()
    colors: tuple[str, ...] = ()
    pronoun: str = "it"  # him | her | them | it
    prep: str = ""  # places: "in", "on", "at", "at the bottom of" ...
    article: str = "a"  # places: "a", "the" or "" (no article: "outer space")
    all_tags: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "all_tags", self.tags | {self.kind, self.name})

    def has(self, *tags: str) -> bool:
        """Whether any of ``tags`` is one of its tags, its kind or its name."""
        return any(t in self.all_tags for t in tags)

    @property
    def domains(self) -> frozenset[str]:
        return self.tags & _data().DOMAINS


@dataclass(frozen=True)
class Verb:
    """An activity. ``objects`` empty: intransitive (an entity state); else the object's tags."""

    lemma: str
    gerund: str
    third: str  # third person singular present
    agents: frozenset[str]  # the agent needs one of these tags
    objects: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()  # where it happens (empty: anywhere)

    @property
    def base(self) -> str:
        return self.lemma


# --- the data names: declared here, bound on first access -----------------------------------------
# Each is the upper-cased key of vocabulary.json (SIZE_RANK is derived from SIZES). JSON lists
# become tuples, except the sets declared as such below.

SIZES: tuple[str, ...]
SIZE_RANK: dict[str, int]
DOMAINS: frozenset[str]
PALETTE: tuple[str, ...]
MATERIALS: dict[str, str]  # material noun -> adjective used before a noun
METALS: frozenset[str]
SHINY: frozenset[str]
PATTERNABLE: frozenset[str]
PATTERNS: tuple[str, ...]
SIZE_WORDS: dict[str, tuple[str, ...]]
NUMBER_WORDS: tuple[str, ...]
THINGS: tuple[Noun, ...]
ANIMALS: tuple[Noun, ...]
PEOPLE: tuple[Noun, ...]
PLACES: tuple[Noun, ...]
PLACE_ADJECTIVES: dict[str, tuple[str, ...]]
STATES: tuple[Verb, ...]
ACTIONS: tuple[Verb, ...]
WEAR: str
SPATIAL: dict[str, tuple[str, ...]]
WHOOPS_PLACES: tuple[Noun, ...]
HOT_SPOTS: tuple[tuple[str, str, str], ...]
HOT_ADJ: dict[str, str]
WEIRD_MATERIALS: tuple[str, ...]
MATERIAL_JOKE_TAGS: tuple[str, ...]
HUMAN_ACTIVITIES: tuple[tuple[str, str, str, str], ...]
TASKS: tuple[tuple[str, str, str, str], ...]
ABSURD_TOOLS: tuple[str, ...]
PLAUSIBLE_TOOL_USE: set[tuple[str, str]]
DESSERTS: tuple[tuple[str, str], ...]
SAVOURY: tuple[str, ...]
DRINKS: tuple[str, ...]
ABSURD_VESSELS: tuple[str, ...]
WEIRD_COLORS: tuple[str, ...]
PLACE_ACTIVITIES: tuple[tuple[str, str, str, str], ...]
WHOOPS_KINDS: tuple[str, ...]
SCENERY: tuple[Noun, ...]
DDB_PEOPLE: tuple[Noun, ...]
DDB_CREATURES: tuple[Noun, ...]
DDB_PLACES: tuple[Noun, ...]
DDB_BUILDINGS: tuple[Noun, ...]
DDB_BUILDING_ADJ: tuple[str, ...]
DDB_CREATURE_ADJ: tuple[str, ...]
DDB_LANDSCAPES: tuple[str, ...]
DDB_LANDSCAPE_ADJ: tuple[str, ...]
DDB_SKY: tuple[tuple[str, str], ...]
DDB_CLOTHES: tuple[Noun, ...]
DDB_PARTS: tuple[tuple[str, str, tuple[str, ...]], ...]
DDB_PERSON_ADJ: tuple[str, ...]
DDB_ACTIONS: tuple[tuple[str, str, str], ...]
DDB_STATES: tuple[tuple[str, str], ...]
DDB_PREFIXES: tuple[tuple[str, str, str], ...]
DDB_STYLES: tuple[str, ...]
DDB_ARTISTS: tuple[str, ...]
DDB_LIGHTING: tuple[str, ...]
DDB_QUALITY: tuple[str, ...]

_NAMES = frozenset(k for k in __annotations__ if not k.startswith("_"))  # the names above
_DERIVED = frozenset({"SIZE_RANK"})


# --- reading vocabulary.json ----------------------------------------------------------------------

Record = dict[str, Any]


def _thing(r: Record, palette: tuple[str, ...]) -> Noun:
    colors = palette if r.get("colors") == "*" else tuple(r.get("colors", ()))
    return Noun(r["name"], r["plural"], "thing", r["size"], frozenset(r.get("tags", ())),
                tuple(r.get("materials", ())), colors)  # fmt: skip


def _animal(r: Record, palette: tuple[str, ...]) -> Noun:
    colors = palette if r.get("colors") == "*" else tuple(r.get("colors", ()))
    return Noun(r["name"], r["plural"], "animal", r["size"],
                frozenset({"animal", *r.get("tags", ())}), (), colors)  # fmt: skip


def _person(r: Record, palette: tuple[str, ...]) -> Noun:
    tags = frozenset({"person", *r.get("tags", ())})
    size = "s" if "baby" in tags else "m"
    return Noun(r["name"], r["plural"], "person", size, tags, pronoun=r["pronoun"])


def _place(r: Record, palette: tuple[str, ...]) -> Noun:
    return Noun(r["name"], r["name"] + "s", "place", "xl", frozenset(r.get("tags", ())),
                prep=r["prep"], article=r["article"])  # fmt: skip


def _scenery(r: Record, palette: tuple[str, ...]) -> Noun:
    where = r.get("where", ())
    if r.get("mass", False):
        return Noun(r["name"], r["name"], "thing", "l", frozenset({*where, "scenery", "mass"}))
    return Noun(r["name"], r["plural"], "thing", "l", frozenset({*where, "scenery"}))


def _verb(r: Record, palette: tuple[str, ...]) -> Verb:
    return Verb(r["lemma"], r["gerund"], r["third"], frozenset(r.get("agents", ())),
                frozenset(r.get("objects", ())), frozenset(r.get("domains", ())))  # fmt: skip


_RECORDS: dict[str, Callable[[Record, tuple[str, ...]], Noun | Verb]] = {
    "THINGS": _thing, "DDB_BUILDINGS": _thing, "DDB_CLOTHES": _thing,
    "ANIMALS": _animal, "DDB_CREATURES": _animal,
    "PEOPLE": _person, "DDB_PEOPLE": _person,
    "PLACES": _place, "WHOOPS_PLACES": _place, "DDB_PLACES": _place,
    "SCENERY": _scenery,
    "STATES": _verb, "ACTIONS": _verb,
}  # fmt: skip
_FROZENSETS = frozenset({"DOMAINS", "METALS", "SHINY", "PATTERNABLE"})


def _tuples(value: Any) -> Any:
    """JSON lists as tuples, at any depth (mappings keep their order)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _build(raw: dict[str, Any]) -> dict[str, Any]:
    """The data names' values from the parsed JSON document."""
    data = {k.upper(): v for k, v in raw.items() if k != "about"}
    if set(data) != _NAMES - _DERIVED:
        expected = _NAMES - _DERIVED
        missing, unknown = expected - set(data), set(data) - expected
        msg = f"{DATA_FILE}: missing {sorted(missing)}, unknown {sorted(unknown)}"
        raise ValueError(msg)
    palette = _tuples(data["PALETTE"])
    out: dict[str, Any] = {}
    for name, value in data.items():
        if name in _RECORDS:
            out[name] = tuple(_RECORDS[name](r, palette) for r in value)
        elif name in _FROZENSETS:
            out[name] = frozenset(value)
        elif name == "PLAUSIBLE_TOOL_USE":
            out[name] = {tuple(pair) for pair in value}
        else:
            out[name] = _tuples(value)
    out["SIZE_RANK"] = {s: i for i, s in enumerate(out["SIZES"])}
    return out


_lock = threading.Lock()
_loaded: SimpleNamespace | None = None


def loaded() -> bool:
    """Whether ``vocabulary.json`` has been read."""
    return _loaded is not None


def _data() -> SimpleNamespace:
    """The data (read on the first call), as a namespace of the data names."""
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                path = resources.files(__package__).joinpath(DATA_FILE)
                values = _build(json.loads(path.read_text(encoding="utf-8")))
                values["_BY_NAME"] = {n.name: n for n in (*values["THINGS"], *values["ANIMALS"],
                                                          *values["PEOPLE"])}  # fmt: skip
                globals().update(values)
                _loaded = SimpleNamespace(**values)
    return _loaded


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(_data(), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES})


# --- queries --------------------------------------------------------------------------------------


def thing(name: str) -> Noun:
    """The thing, animal or person called ``name``."""
    n = _data()._BY_NAME.get(name)
    if n is None:
        raise KeyError(name)
    return n


def whoops_place(name: str) -> Noun:
    """The whoops place called ``name``."""
    for p in _data().WHOOPS_PLACES:
        if p.name == name:
            return p
    raise KeyError(name)


def defies(kind: str, a: str, b: str) -> bool:
    """Whether pairing ``a`` with ``b`` under rule ``kind`` defies common sense.

    ``a`` is the subject (animal, thing, person activity ...), ``b`` the place, material,
    colour, tool or companion it is paired with. An unknown ``kind`` defies nothing; a rule
    raises ``KeyError`` for a noun or place it looks up and the vocabulary lacks.
    """
    rule = _RULES.get(kind)
    return False if rule is None else rule(_data(), a, b)


# One predicate per whoops rule: (data, a, b) -> whether the pairing is absurd.


def _habitat(d: SimpleNamespace, a: str, b: str) -> bool:
    animal, place = thing(a), whoops_place(b)
    return (
        (animal.has("polar") and place.has("hot"))
        or (animal.has("aquatic") and place.has("dry"))
        or (animal.has("desert_animal") and place.has("cold", "underwater"))
    )


def _fire_water(d: SimpleNamespace, a: str, b: str) -> bool:
    return thing(a).has("burn") and whoops_place(b).has("underwater")


def _ice_heat(d: SimpleNamespace, a: str, b: str) -> bool:
    return thing(a).has("ice") and b in {h[0] for h in d.HOT_SPOTS}


def _material(d: SimpleNamespace, a: str, b: str) -> bool:
    t = thing(a)
    return b in d.WEIRD_MATERIALS and b not in t.materials and t.has(*d.MATERIAL_JOKE_TAGS)


def _animal_human(d: SimpleNamespace, a: str, b: str) -> bool:
    return thing(a).kind == "animal" and b in {h[0] for h in d.HUMAN_ACTIVITIES}


def _vehicle_terrain(d: SimpleNamespace, a: str, b: str) -> bool:
    v, place = thing(a), whoops_place(b)
    return (
        (v.has("land_vehicle") and place.has("open_water", "underwater"))
        or (v.has("boat") and place.has("dry") and place.has("outdoor"))
        or (v.has("aircraft") and place.has("indoor"))
    )


def _size(d: SimpleNamespace, a: str, b: str) -> bool:
    animal, other = thing(a), thing(b)
    return (animal.has("big_animal") and other.has("tiny_container")) or (
        animal.has("small_animal") and other.has("heavy")
    )


def _wrong_tool(d: SimpleNamespace, a: str, b: str) -> bool:
    tools = {t[0]: t[3] for t in d.TASKS}
    return (
        a in tools
        and b in d.ABSURD_TOOLS
        and b != tools[a]
        and ((a, b) not in d.PLAUSIBLE_TOOL_USE)
    )


def _food_pairing(d: SimpleNamespace, a: str, b: str) -> bool:
    return a in {x[1] for x in d.DESSERTS} and b in d.SAVOURY


def _drink_vessel(d: SimpleNamespace, a: str, b: str) -> bool:
    return a in d.DRINKS and b in d.ABSURD_VESSELS


def _produce_color(d: SimpleNamespace, a: str, b: str) -> bool:
    t = thing(a)
    return t.has("fruit", "veg") and b in d.WEIRD_COLORS and b not in t.colors


def _place_activity(d: SimpleNamespace, a: str, b: str) -> bool:
    needs = {p[0]: p[3] for p in d.PLACE_ACTIVITIES}
    place = whoops_place(b)
    need = needs.get(a)
    if need == "water":
        return place.has("dry") and not place.has("wet")
    if need == "snow":
        return place.has("hot") or (place.has("indoor") and not place.has("cold"))
    if need == "quiet":
        return place.has("traffic")
    return False


def _plant_place(d: SimpleNamespace, a: str, b: str) -> bool:
    plant, place = thing(a), whoops_place(b)
    return plant.has("plant") and (
        place.has("underwater") or (plant.has("warm_plant") and place.has("cold"))
    )


_RULES: dict[str, Callable[[SimpleNamespace, str, str], bool]] = {
    "habitat": _habitat,
    "fire_water": _fire_water,
    "ice_heat": _ice_heat,
    "material": _material,
    "animal_human": _animal_human,
    "vehicle_terrain": _vehicle_terrain,
    "size": _size,
    "wrong_tool": _wrong_tool,
    "food_pairing": _food_pairing,
    "drink_vessel": _drink_vessel,
    "produce_color": _produce_color,
    "place_activity": _place_activity,
    "plant_place": _plant_place,
}


def vocabulary_sizes() -> dict[str, int]:
    """How many entries each part of the vocabulary has (for reports and tests)."""
    d = _data()
    return {
        "things": len(d.THINGS),
        "animals": len(d.ANIMALS),
        "people": len(d.PEOPLE),
        "places": len(d.PLACES),
        "whoops_places": len(d.WHOOPS_PLACES),
        "colors": len(d.PALETTE),
        "materials": len(d.MATERIALS),
        "states": len(d.STATES),
        "actions": len(d.ACTIONS),
        "spatial_phrases": sum(len(v) for v in d.SPATIAL.values()),
        "weird_materials": len(d.WEIRD_MATERIALS),
        "human_activities": len(d.HUMAN_ACTIVITIES),
    }
