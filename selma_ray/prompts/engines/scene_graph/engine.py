"""Composing prompts that fit a word limit, and the ``scene-graph`` prompt engine.

Owns the choice of renderer for a skill (:func:`_builder`; a skill without a renderer of its
own gets everyday scene captions from :func:`_generic`), :func:`compose_scene` and
:func:`compose`, which drop detail until a prompt fits the word limit, the fallback for tiny
limits (:func:`_minimal`), and :class:`SceneGraphEngine`, the :class:`PromptEngine` that
writes numbered lists of prompts and remembers each prompt's DSG questions.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from selma_ray.prompts.engines.base import GenerationRequest, Question
from selma_ray.prompts.engines.scene_graph import vocabulary as V
from selma_ray.prompts.engines.scene_graph.coco import _coco
from selma_ray.prompts.engines.scene_graph.countbench import _countbench
from selma_ray.prompts.engines.scene_graph.diffusiondb import _diffusiondb
from selma_ray.prompts.engines.scene_graph.generator import _Gen
from selma_ray.prompts.engines.scene_graph.localized_narratives import (
    _ln_item,
    _localized_narratives,
)
from selma_ray.prompts.engines.scene_graph.scene import (
    Attr,
    Ent,
    Scene,
    _core,
    _indef,
    _list,
    scene_questions,
)
from selma_ray.prompts.engines.scene_graph.whoops import _whoops
from selma_ray.skills import BUILTIN_SKILLS

# --- the renderer of each skill -------------------------------------------------------------------


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


def _generic(g: _Gen, word_limit: int) -> str:
    """Everyday scene captions, for a skill without a renderer of its own: a COCO caption,
    at the richest detail level and a ``word_limit`` of 40 or more maybe with what is nearby."""
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


# --- composing and tidying ------------------------------------------------------------------------

_MIN_WORDS = 3  # the response parser drops shorter items


def _tidy(text: str, capitalize: bool = True, period: bool = True) -> str:
    """Spaces and punctuation tidied; capitalized and ended with a period unless told not to."""
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


# --- the engine -----------------------------------------------------------------------------------


def _key(text: str) -> str:
    """The lookup key of a prompt: lower case, punctuation as spaces, single spaces."""
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
