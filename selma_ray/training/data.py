"""Owns stage 3's raw inputs: a skill's imagefolder as (image, caption) pairs, the held-out
split and the pixel recipe.

``load_pairs`` reads the skill's imagefolder metadata (:func:`selma_ray.layout.images_metadata`)
and the image files it names (under :func:`selma_ray.layout.images_dir`) through fsspec (local
paths, ``memory://``, cloud URIs). A bad input never stops training: a missing file, an image
that does not decode, a metadata line that is not JSON or lacks a field, a repeated file name or
a line of another skill is skipped and counted by reason. Only a skill with nothing usable
raises, naming the skill and the folder.

``split_holdout`` is a pure function of ``(prompt_id, seed)``: all images of one prompt land on
the same side, so the validation loss never scores a prompt the expert trained on.

``preprocess`` is the pixel recipe of diffusers' text-to-image scripts written with PIL + numpy
(no torchvision): resize the shorter side to ``resolution`` (bilinear, antialiased), crop a
``resolution`` square (center, or a seeded random offset), scale to ``[-1, 1]``, CHW float32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from selma_ray import layout
from selma_ray.seeds import subseed

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from selma_ray.storage import RunDir

__all__ = [
    "CropInfo",
    "Pair",
    "files_hash",
    "load_job_pairs",
    "load_pairs",
    "preprocess",
    "resize_and_crop",
    "split_holdout",
    "subseed",
    "to_tensor",
    "validation_slice",
    "write_synthetic_skill",
]

#: Concurrent image reads on remote filesystems (object stores are latency-bound).
_FETCH_THREADS = 16


@dataclass(frozen=True)
class Pair:
    """One training example: an image file of a skill's imagefolder and its caption."""

    file_name: str
    text: str
    prompt_id: str
    image_index: int = 0
    seed: int | None = None
    model: str | None = None
    #: sha256 of the encoded image bytes (part of the cache key).
    digest: str = ""
    data: bytes = field(default=b"", repr=False, compare=False)

    def image(self) -> Image.Image:
        """The decoded image, converted to RGB."""
        from PIL import Image

        with Image.open(io.BytesIO(self.data)) as img:
            return img.convert("RGB")


def files_hash(pairs: list[Pair]) -> str:
    """A digest of what the pairs are: file names, captions and image contents, in order."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.file_name, p.text, p.digest]).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _decode_ok(data: bytes) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # full decode: catches truncated files that verify() lets through
            return img.width > 0 and img.height > 0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def _escapes(file_name: str) -> bool:
    """Whether a metadata file name points outside its folder (absolute, or with ``..``)."""
    return file_name.startswith("/") or ".." in file_name.replace("\\", "/").split("/")


def _fetch_all(run_dir: RunDir, paths: list[str]) -> list[bytes | None]:
    """The bytes of each path, or None where it cannot be read (threads on remote stores)."""

    def fetch(path: str) -> bytes | None:
        try:
            return run_dir.fs.cat_file(path)
        except (OSError, ValueError):  # FileNotFoundError, permission, a directory ...
            return None

    if run_dir.is_local or len(paths) < 2:
        return [fetch(p) for p in paths]
    with ThreadPoolExecutor(max_workers=_FETCH_THREADS) as pool:
        return list(pool.map(fetch, paths))


def _read_rows(run_dir: RunDir, skill: str, skipped: Counter[str]) -> list[dict[str, Any]]:
    """The usable metadata rows of ``skill``, in file order; counts the others in ``skipped``."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line in run_dir.read_text(*layout.images_metadata(skill)).splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped["bad_metadata"] += 1
            continue
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("file_name"), str)
            or not row["file_name"]
            or not isinstance(row.get("text"), str)
            or _escapes(row["file_name"])
        ):
            skipped["bad_metadata"] += 1
            continue
        if row.get("skill") not in (None, skill):
            skipped["other_skill"] += 1
            continue
        if row["file_name"] in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(row["file_name"])
        rows.append(row)
    return rows


def _to_pairs(
    rows: list[dict[str, Any]], fetched: list[bytes | None], skipped: Counter[str]
) -> list[Pair]:
    """Pairs of the rows whose image bytes were read and decode; counts the others."""
    pairs: list[Pair] = []
    for row, data in zip(rows, fetched, strict=True):
        if not isinstance(data, bytes):
            skipped["missing"] += 1
            continue
        if not _decode_ok(data):
            skipped["corrupt"] += 1
            continue
        prompt_id = row.get("prompt_id")
        pairs.append(
            Pair(
                file_name=row["file_name"],
                text=row["text"],
                prompt_id=str(prompt_id) if prompt_id is not None else row["text"],
                image_index=int(row.get("image_index") or 0),
                seed=row.get("seed"),
                model=row.get("model"),
                digest=hashlib.sha256(data).hexdigest(),
                data=data,
            )
        )
    return pairs


def load_pairs(run_dir: RunDir, skill: str) -> tuple[list[Pair], dict[str, int]]:
    """All usable (image, caption) pairs of ``skill``, sorted by file name, and the skips by reason.

    Reasons: ``bad_metadata`` (not JSON, or no ``file_name`` / ``text``), ``other_skill``,
    ``duplicate`` (file name seen before), ``missing`` (file absent or unreadable), ``corrupt``
    (does not decode as an image). Raises :class:`ValueError` naming the skill and the folder
    when nothing is usable.
    """
    where = f"skill {skill!r}: imagefolder {run_dir.url(*layout.images_dir(skill))}"
    if not run_dir.exists(*layout.images_metadata(skill)):
        msg = (
            f"{where} has no {layout.METADATA_FILE}; run the images stage for this skill first "
            "(or remove the skill from prompts.skills)"
        )
        raise ValueError(msg)
    skipped: Counter[str] = Counter()
    rows = _read_rows(run_dir, skill, skipped)
    paths = [run_dir.path(*layout.images_dir(skill, r["file_name"])) for r in rows]
    pairs = _to_pairs(rows, _fetch_all(run_dir, paths), skipped)
    if not pairs:
        listed = f"; {layout.METADATA_FILE} lists no images"
        detail = f"; skipped {dict(skipped)}" if skipped else listed
        msg = f"{where} has no usable image/caption pairs{detail}. Regenerate the images stage"
        raise ValueError(msg)
    pairs.sort(key=lambda p: p.file_name)
    return pairs, dict(skipped)


def load_job_pairs(
    run_dir: RunDir, skill: str, sources: Sequence[str] = ()
) -> tuple[list[Pair], dict[str, int]]:
    """The pairs one training job learns from: ``skill``'s own (:func:`load_pairs`), or, with
    ``sources`` (the joint multi-skill baseline), the union of those skills' pairs, each file
    name prefixed with its skill (``<skill>/<file>``, unique across skills). Skips are summed
    over the sources."""
    if not sources:
        return load_pairs(run_dir, skill)
    pairs: list[Pair] = []
    skipped: Counter[str] = Counter()
    for src in sources:
        got, src_skipped = load_pairs(run_dir, src)
        skipped.update(src_skipped)
        pairs.extend(dataclasses.replace(p, file_name=f"{src}/{p.file_name}") for p in got)
    return pairs, dict(skipped)


def job_holdout(
    pairs: list[Pair], fraction: float, seed: int, sources: Sequence[str] = ()
) -> tuple[list[Pair], list[Pair]]:
    """:func:`split_holdout` of a job's pairs; with ``sources``, split each source skill's
    pairs on its own and join the sides, so the joint baseline holds out exactly the prompts
    every expert holds out."""
    if not sources:
        return split_holdout(pairs, fraction, seed)
    train: list[Pair] = []
    val: list[Pair] = []
    for src in sources:
        own = [p for p in pairs if p.file_name.startswith(f"{src}/")]
        t, v = split_holdout(own, fraction, seed)
        train.extend(t)
        val.extend(v)
    return train, val


def split_holdout(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Deterministic (train, held-out) split, grouped by ``prompt_id``.

    A prompt is held out when a hash of ``(seed, prompt_id)`` falls below ``fraction``, so the
    split of a prompt never changes when other prompts are added. With ``fraction > 0`` and at
    least two prompts, at least one prompt is held out and at least one is trained on.
    """
    if not 0 <= fraction < 1:
        msg = f"validation fraction must be in [0, 1), got {fraction}"
        raise ValueError(msg)
    prompts = sorted({p.prompt_id for p in pairs})
    if fraction == 0 or len(prompts) < 2:
        return list(pairs), []
    score = {pid: subseed(seed, "holdout", pid) / float(1 << 63) for pid in prompts}
    held = {pid for pid in prompts if score[pid] < fraction}
    by_score = sorted(prompts, key=lambda pid: (score[pid], pid))
    if not held:
        held = {by_score[0]}
    if len(held) == len(prompts):
        held.discard(by_score[-1])
    train = [p for p in pairs if p.prompt_id not in held]
    val = [p for p in pairs if p.prompt_id in held]
    return train, val


class CropInfo(NamedTuple):
    """Where a training crop came from (SDXL's micro-conditioning needs all of it)."""

    top: int
    left: int
    original_height: int
    original_width: int
    resized_height: int
    resized_width: int

    def flipped_left(self, resolution: int) -> int:
        """The crop's left edge in the horizontally flipped resized image."""
        return self.resized_width - self.left - resolution


def resize_and_crop(
    image: Image.Image,
    resolution: int,
    center_crop: bool = True,
    rng: random.Random | None = None,
) -> tuple[Image.Image, CropInfo]:
    """Resize the shorter side to ``resolution`` and crop a ``resolution`` square.

    ``rng`` draws the random crop offset when ``center_crop`` is False (a fixed default if
    None). Returns the crop and where it came from.
    """
    from PIL import Image

    if resolution < 1:
        msg = f"resolution must be >= 1, got {resolution}"
        raise ValueError(msg)
    image = image.convert("RGB")
    orig_w, orig_h = image.size
    scale = resolution / min(orig_w, orig_h)
    new_w = max(resolution, round(orig_w * scale))
    new_h = max(resolution, round(orig_h * scale))
    if (new_w, new_h) != (orig_w, orig_h):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    if center_crop:
        top = round((new_h - resolution) / 2.0)
        left = round((new_w - resolution) / 2.0)
    else:
        rng = rng or random.Random(0)
        top = rng.randint(0, new_h - resolution)
        left = rng.randint(0, new_w - resolution)
    crop = image.crop((left, top, left + resolution, top + resolution))
    return crop, CropInfo(top, left, orig_h, orig_w, new_h, new_w)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> float32 tensor 3xHxW in ``[-1, 1]``."""
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def preprocess(
    image: Image.Image,
    resolution: int,
    center_crop: bool = True,
    rng: random.Random | None = None,
) -> torch.Tensor:
    """Resize + crop ``image`` to ``resolution`` square -> float32 tensor 3xHxW in ``[-1, 1]``."""
    crop, _ = resize_and_crop(image, resolution, center_crop, rng)
    return to_tensor(crop)


def validation_slice(n: int) -> int:
    """How many training pairs stand in for a held-out set when there is none.

    About 10% of ``n``, at least 8 (or all, if fewer) and at most 64.
    """
    return min(n, max(8, math.ceil(0.1 * n)), 64)


_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
_THINGS = ("cat", "dog", "cup", "car", "tree", "lamp", "book", "bird")


def write_synthetic_skill(
    run_dir: RunDir,
    skill: str,
    *,
    prompts: int = 4,
    images_per_prompt: int = 1,
    size: int | tuple[int, int] = 64,
    seed: int = 0,
    model: str = "synthetic",
) -> list[dict[str, Any]]:
    """Write a small random imagefolder for ``skill`` (smooth colour fields + captions).

    For tests and benchmarks only: the same layout as the images stage (image files and the
    imagefolder metadata). ``size`` is ``(width, height)`` or one side. Returns the metadata rows.
    """
    from PIL import Image

    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for i in range(prompts):
        text = f"a {_COLOURS[i % len(_COLOURS)]} {_THINGS[(i // len(_COLOURS)) % len(_THINGS)]}"
        text += f" number {i}" if i >= len(_COLOURS) * len(_THINGS) else ""
        for j in range(images_per_prompt):
            coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
            name = f"{i:05d}_{j}.png"
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            run_dir.write_bytes(buf.getvalue(), *layout.images_dir(skill, name))
            rows.append(
                {
                    "file_name": name,
                    "text": text,
                    "skill": skill,
                    "prompt_id": f"{skill}-{i:05d}",
                    "image_index": j,
                    "seed": seed * 1000 + i * images_per_prompt + j,
                    "model": model,
                }
            )
    run_dir.write_jsonl(rows, *layout.images_metadata(skill))
    return rows
