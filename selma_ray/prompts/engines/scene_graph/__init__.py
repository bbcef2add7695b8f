"""The offline ``scene-graph`` prompt engine: skill prompts and DSG questions from scene graphs.

It stands in for the prompt-writing LLM (the default engine of the tiny CPU preset). For each
prompt it first builds a small scene graph (entities with counts, attributes and states,
relations between them, global styles) from the vocabulary, then renders it as text in one of
several skill-specific templates, and writes DSG-style atomic questions (entities as roots,
attributes / counts / states depending on their entity, relations on both entities) from the
very same graph. A response is a numbered list continuing the request's numbering, as an LLM
would write it.

Skills: ``coco`` (plain photo captions), ``countbench`` (counts in words, 1..max_count),
``whoops`` (commonsense-defying pairings), ``localized_narratives`` ("In this image we can
see ..." paragraphs), ``diffusiondb`` (subject + style / medium / lighting keywords); any other
skill name gets everyday scene captions. Every prompt fits the request's ``word_limit``
(``str.split`` words): detail is dropped until it does.

Modules, by what they own:

- ``vocabulary``: nouns, verbs, word lists and the whoops rules, read lazily from
  ``vocabulary.json`` (package data) the first time the engine needs them;
- ``scene``: the scene graph, its text forms and its DSG questions;
- ``generator``: the state of one prompt being composed, and the vocabulary queries;
- ``phrases``: spatial relations, agents and place phrases every renderer builds from;
- ``coco``, ``countbench``, ``whoops``, ``localized_narratives``, ``diffusiondb``: one renderer
  per SELMA skill;
- ``engine``: fitting prompts to a word limit, and :class:`SceneGraphEngine`.

Names with a leading underscore are internal to this package.
"""

from __future__ import annotations

from selma_ray.prompts.engines.scene_graph.engine import (
    SceneGraphEngine,
    compose,
    compose_scene,
)
from selma_ray.prompts.engines.scene_graph.scene import Attr, Ent, Part, Rel, Scene, scene_questions

__all__ = [
    "Attr",
    "Ent",
    "Part",
    "Rel",
    "Scene",
    "SceneGraphEngine",
    "compose",
    "compose_scene",
    "scene_questions",
]
