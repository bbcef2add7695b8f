"""The skill registry: SELMA's five skills and the rules for user-defined ones.

A skill is what one LoRA expert learns: an instruction telling the LLM what kind of prompt to
write, a word limit, and seed captions shown as few-shot examples. The five built-in skills
follow the SELMA paper; the seed captions are the public dataset captions the paper used.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from selma_ray.layout import JOINT

_COMMON_RULES = (
    "Each prompt describes everyday objects, animals, people or places, is diverse in style "
    "and content from the examples, and stays under {limit} words."
)


class SkillData(BaseModel):
    """Existing image-text pairs a skill's expert learns from instead of generated ones (the
    paper's ground-truth comparison): stages 1-2 import them, the rest of SELMA is unchanged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(
        description=(
            "Where the pairs are, on any fsspec filesystem: an imagefolder (a folder with "
            "metadata.jsonl or metadata.csv), Parquet (a file or a folder of them) or "
            "WebDataset (a .tar shard, a folder of them or a glob)."
        )
    )
    format: Literal["auto", "imagefolder", "parquet", "webdataset"] = Field(
        "auto", description="auto: from the file extension or the folder's contents."
    )
    image_column: str | None = Field(
        None,
        description=(
            "Column / key of the image. Defaults: imagefolder file_name, parquet image (bytes "
            "or a datasets Image struct), webdataset the first of jpg, jpeg, png, webp."
        ),
    )
    text_column: str | None = Field(
        None, description="Column / key of the caption. Defaults: text (webdataset: txt)."
    )
    max_pairs: int | None = Field(None, ge=1, description="Import at most this many pairs.")
    use: Literal["pairs", "captions"] = Field(
        "pairs",
        description=(
            "pairs: the images and captions are the expert's training pairs (stages 1-2 import "
            "them); captions: the captions are the skill's prompts and stage 2 draws them (the "
            "paper's ground-truth prompts with generated images)."
        ),
    )


class Skill(BaseModel):
    """One skill: the instruction given to the prompt-writing LLM and its seed captions, or
    the existing image-text pairs (``data``) its expert learns from instead."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Identifier used in file names and expert names ([a-z0-9_-]).")
    instruction: str = Field(
        "", description="What kind of prompts to write, in plain words (not with data)."
    )
    word_limit: int = Field(30, ge=3, le=200, description="Prompts longer than this are dropped.")
    seeds: tuple[str, ...] = Field((), description="Seed captions shown as examples (>= 1).")
    data: SkillData | None = Field(
        None,
        description=(
            "Ground-truth pairs instead of generated ones: a URI or {uri, format, image_column, "
            "text_column, max_pairs, use}; the prompts and images stages then import them "
            "(use: captions: only the captions, as the skill's prompts, which stage 2 draws)."
        ),
    )
    max_count: int | None = Field(
        None, ge=1, description="Largest count a prompt may ask for (counting skills)."
    )

    @field_validator("name")
    @classmethod
    def _name_is_a_path_segment(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", v):
            msg = (
                f"skill name {v!r} must be 1-64 characters of lowercase letters, digits, '_' or "
                "'-' (it names files and experts)"
            )
            raise ValueError(msg)
        if v == JOINT:
            msg = f"skill name {v!r} is reserved for the joint multi-skill baseline; rename it"
            raise ValueError(msg)
        return v

    @field_validator("instruction")
    @classmethod
    def _instruction_not_empty(cls, v: str) -> str:
        if not v.strip():
            msg = "instruction is empty: say what kind of prompts the LLM should write"
            raise ValueError(msg)
        return v.strip()

    @field_validator("seeds")
    @classmethod
    def _has_seeds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        seeds = tuple(s.strip() for s in v if s and s.strip())
        if not seeds:
            msg = "a skill needs at least one non-empty seed caption to show the LLM"
            raise ValueError(msg)
        return seeds

    @field_validator("data", mode="before")
    @classmethod
    def _data_uri(cls, v: Any) -> Any:
        return {"uri": v} if isinstance(v, str) else v

    @property
    def imports_pairs(self) -> bool:
        """Its expert learns from existing pairs: no prompts to write, no images to draw."""
        return self.data is not None and self.data.use == "pairs"

    @property
    def prompts_from_captions(self) -> bool:
        """Its prompts are existing captions (``data.use: captions``), drawn by stage 2."""
        return self.data is not None and self.data.use == "captions"

    @model_validator(mode="after")
    def _prompts_or_data(self) -> Skill:
        if self.data is None and not self.instruction:
            msg = f"skill {self.name!r}: give an instruction and seeds, or data (existing pairs)"
            raise ValueError(msg)
        if self.data is None and not self.seeds:
            msg = "a skill needs at least one non-empty seed caption to show the LLM"
            raise ValueError(msg)
        return self


BUILTIN_SKILLS: dict[str, Skill] = {
    s.name: s
    for s in [
        Skill(
            name="localized_narratives",
            instruction=(
                "Write paragraph-style captions that walk through an image the way a person "
                "narrates it while pointing: what is in front, what is behind, what is around. "
                + _COMMON_RULES.format(limit=50)
            ),
            word_limit=50,
            seeds=(
                "In this image we can see a pie on a large spatula. On the backside we can see "
                "some fire.",
                "Here we can see a woman having a football in her hand and behind her we can "
                "see group of people standing and it is snowy.",
                "This image is taken in a store where we can see mirrors, chairs, wall, lights, "
                "ceiling, bottles, tripod stands, frames, jar, table and a cupboard.",
            ),
        ),
        Skill(
            name="diffusiondb",
            instruction=(
                "Write prompts the way real users of text-to-image tools write them: the "
                "subject described in detail, followed by style, medium, lighting and "
                "rendering keywords. " + _COMMON_RULES.format(limit=50)
            ),
            word_limit=50,
            seeds=(
                "a beautiful painting of a pyramid on the moon by nekro and pascal blanche and "
                "syd mead and greg rutkowski and sachin teng and victo ngai and simon stalenhag "
                "and chris voy and tsutomu nihei. in style of cg art. ray tracing, cel shading, "
                "3 d. ue 5. hyper detailed. realistic. maya. octane render.",
                "a highly detailed digital illustration of a cute corgi puppy floating in outer "
                "space, hyperrealistic, stunning, beautiful, cinematic, sci - fi, greg "
                "rutkowski, artgerm, moebius, ruan jia, makoto shinkai, simon stalenhag.",
                "portrait of a beautiful, elegant winged goddess with horns by tom bagshaw.",
            ),
        ),
        Skill(
            name="countbench",
            instruction=(
                "Write captions in which the number of objects matters: each names how many of "
                "something there are, with counts of at most three. "
                + _COMMON_RULES.format(limit=30)
            ),
            word_limit=30,
            max_count=3,
            seeds=(
                "background photo of three light bulbs",
                "A look at style queen Maxima's four inauguration outfits",
                "Image showing four steps of preparing homemade goulash in a pot.",
            ),
        ),
        Skill(
            name="coco",
            instruction=(
                "Write short, plain captions of everyday scenes, like photo captions: who or "
                "what is there and what they are doing. " + _COMMON_RULES.format(limit=30)
            ),
            word_limit=30,
            seeds=(
                "Dogs stick their heads out of car windows.",
                "A brown purse is sitting on a green bench.",
                "A group of motorcycle riders driving past buildings.",
            ),
        ),
        Skill(
            name="whoops",
            instruction=(
                "Write captions of scenes that defy common sense: everyday things combined in "
                "ways that would not happen in real life, stated plainly. "
                + _COMMON_RULES.format(limit=30)
            ),
            word_limit=30,
            seeds=(
                "A man sleeps in the middle of the highway.",
                "Wheat is covered by snow.",
                "A slice of chocolate cake served with cherry tomatoes.",
            ),
        ),
    ]
}

DEFAULT_SKILLS: tuple[str, ...] = tuple(BUILTIN_SKILLS)


def resolve_skill(entry: str | dict | Skill) -> Skill:
    """A skill from a config entry: a built-in name, a full definition, or a partial override.

    A dict whose ``name`` is a built-in skill overrides only the fields it gives.
    """
    if isinstance(entry, Skill):
        return entry
    if isinstance(entry, str):
        if entry not in BUILTIN_SKILLS:
            msg = (
                f"unknown skill {entry!r}: built-in skills are {sorted(BUILTIN_SKILLS)}; define a "
                "new one as a mapping with name, instruction, word_limit and seeds"
            )
            raise ValueError(msg)
        return BUILTIN_SKILLS[entry]
    base = BUILTIN_SKILLS.get(entry.get("name", ""))
    data = {**base.model_dump(), **entry} if base is not None else dict(entry)
    return Skill.model_validate(data)
