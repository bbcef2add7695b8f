"""Ground-truth pairs: a skill's existing image-text pairs imported in place of stages 1-2.

A skill with ``data`` (:class:`~selma_ray.skills.SkillData`) names image-text pairs on any
fsspec filesystem, as a Hugging Face imagefolder (``metadata.jsonl`` / ``metadata.csv``),
Parquet (a file or a folder of ``*.parquet``; the image column holds bytes or a ``datasets``
Image struct ``{bytes, path}``) or WebDataset (``.tar`` shards: files sharing a key, e.g.
``0001.jpg`` + ``0001.txt``). :func:`read_pairs` reads them in a fixed order (files sorted,
rows in file order); :func:`import_skill` copies them into the run's
``images/<skill>/`` imagefolder exactly as stage 2 writes generated images (same metadata
columns; ``prompt_id`` ``<skill>-gt<index>``; ``model`` ``data:<uri>``), so training, the
held-out split, evaluation and serving read them the same way. PNG and JPEG images are copied
as they are, any other format is converted to PNG. A pair whose metadata row cannot be read
(``bad_metadata``), whose image does not decode (``corrupt_image``) or is past PIL's
decompression-bomb limit (``too_large``), or whose caption or image is missing is skipped and
counted by reason; only a skill with no usable pair raises, naming the skill and the URI. Files
already imported are kept (resume).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from selma_ray.layout import METADATA_FILE, images_dir, images_metadata
from selma_ray.skills import SkillData
from selma_ray.storage import RunDir

log = logging.getLogger(__name__)

__all__ = ["RawPair", "detect_format", "import_captions", "import_skill", "read_pairs"]

_WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
#: An imagefolder's metadata: the run's own file name (JSON lines), or its CSV form.
_METADATA_CSV = "metadata.csv"
#: Formats copied as they are; any other (WebP, GIF, BMP, TIFF, MPO...) is converted to PNG.
_FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg"}


@dataclass(frozen=True)
class RawPair:
    """One pair as read: the caption (None when missing), the image bytes (None when missing)
    and where it came from (for messages)."""

    text: str | None
    image: bytes | None
    source: str
    #: the row itself could not be read (not UTF-8 JSON, not an object)
    unreadable: bool = False


def _fs(uri: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(uri)


def detect_format(data: SkillData) -> str:
    """The pairs' format: ``data.format``, else from the URI's extension or the folder."""
    if data.format != "auto":
        return data.format
    uri = data.uri.rstrip("/")
    if uri.endswith(".parquet"):
        return "parquet"
    if uri.endswith(".tar") or "*" in uri:
        return "webdataset"
    fs, path = _fs(uri)
    if not fs.isdir(path):
        msg = f"data {data.uri!r}: not found (give a folder, a .parquet file or .tar shards)"
        raise FileNotFoundError(msg)
    names = {posixpath.basename(p) for p in fs.ls(path, detail=False)}
    if {METADATA_FILE, _METADATA_CSV} & names:
        return "imagefolder"
    if any(n.endswith(".parquet") for n in names):
        return "parquet"
    if any(n.endswith(".tar") for n in names):
        return "webdataset"
    msg = (
        f"data {data.uri!r}: cannot tell its format (no metadata.jsonl/.csv, *.parquet or "
        "*.tar inside); set data.format"
    )
    raise ValueError(msg)


def _files(uri: str, suffix: str) -> tuple[Any, list[str]]:
    """(filesystem, sorted files): the file itself, a folder's ``*<suffix>`` or a glob."""
    fs, path = _fs(uri)
    if "*" in path:
        return fs, sorted(fs.glob(path))
    if fs.isdir(path):
        return fs, sorted(p for p in fs.ls(path, detail=False) if p.endswith(suffix))
    return fs, [path]


def _imagefolder(data: SkillData, images: bool = True) -> Iterator[RawPair]:
    fs, root = _fs(data.uri.rstrip("/"))
    image_col = data.image_column or "file_name"
    text_col = data.text_column or "text"
    jsonl = posixpath.join(root, METADATA_FILE)
    rows: list[Any]
    if fs.exists(jsonl):
        rows = []
        for line in fs.cat_file(jsonl).removeprefix(b"\xef\xbb\xbf").splitlines():
            if not line.strip():
                continue
            try:  # a row that is not UTF-8 JSON is skipped and counted, not fatal
                rows.append(json.loads(line.decode("utf-8")))
            except (UnicodeDecodeError, ValueError):
                rows.append(None)
    else:
        with fs.open(
            posixpath.join(root, _METADATA_CSV), "r", newline="", encoding="utf-8-sig",
            errors="replace",
        ) as f:  # fmt: skip
            rows = list(csv.DictReader(f))
    for n, row in enumerate(rows, start=1):
        where = f"metadata line {n}"
        if not isinstance(row, dict):
            yield RawPair(None, None, where, unreadable=True)
            continue
        name = row.get(image_col)
        image = None
        if (
            images
            and isinstance(name, str)
            and name
            and not name.startswith("/")
            and ".." not in name.split("/")
        ):
            try:
                image = fs.cat_file(posixpath.join(root, name))
            except (OSError, ValueError):
                image = None
        yield RawPair(_text(row.get(text_col)), image, where)


def _image_bytes(value: Any) -> bytes | None:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
        return bytes(value["bytes"])
    return None


def _parquet(data: SkillData, images: bool = True) -> Iterator[RawPair]:
    import pyarrow.parquet as pq

    image_col = data.image_column or "image"
    text_col = data.text_column or "text"
    fs, files = _files(data.uri, ".parquet")
    wanted = [image_col, text_col] if images else [text_col]
    for path in files:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            missing = [c for c in wanted if c not in names]
            if missing:
                msg = (
                    f"data {data.uri!r}: {posixpath.basename(path)} has no column(s) {missing} "
                    f"(it has {names}); set data.image_column / data.text_column"
                )
                raise ValueError(msg)
            table = parquet.read(columns=wanted)  # only what is used
        texts = table.column(text_col).to_pylist()
        pixels = table.column(image_col).to_pylist() if images else [None] * len(texts)
        for i, (img, text) in enumerate(zip(pixels, texts, strict=True)):
            yield RawPair(_text(text), _image_bytes(img), f"{posixpath.basename(path)} row {i}")


def _webdataset(data: SkillData, images: bool = True) -> Iterator[RawPair]:
    image_keys = (data.image_column,) if data.image_column else _WDS_IMAGE_KEYS
    text_key = data.text_column or "txt"
    fs, files = _files(data.uri, ".tar")
    for path in files:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            samples: dict[str, dict[str, bytes]] = {}
            order: list[str] = []
            for member in tar:
                if not member.isfile():
                    continue
                base = posixpath.basename(member.name)
                if "." not in base:
                    continue
                key, ext = base.split(".", 1)
                key = posixpath.join(posixpath.dirname(member.name), key)
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                fobj = tar.extractfile(member)
                samples[key][ext.lower()] = fobj.read() if fobj else b""
        for key in order:
            parts = samples[key]
            image = next((parts[k] for k in image_keys if k in parts), None)
            raw = parts.get(text_key)
            text = raw.decode("utf-8", errors="replace") if raw is not None else None
            yield RawPair(_text(text), image, f"{posixpath.basename(path)}:{key}")


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


_READERS = {"imagefolder": _imagefolder, "parquet": _parquet, "webdataset": _webdataset}


def read_pairs(data: SkillData, *, images: bool = True) -> Iterator[RawPair]:
    """Every pair of ``data`` in a fixed order (files sorted, rows in file order); with
    ``images=False`` the captions alone (``image`` None; imagefolder and Parquet then read no
    image bytes)."""
    yield from _READERS[detect_format(data)](data, images)


def import_captions(skill: str, data: SkillData) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A skill's prompts from ``data``'s captions (``data.use: captions``): rows as stage 1
    writes them (``id`` ``<skill>-gt<index>``, ``engine`` ``data``, ``model`` ``data:<uri>``,
    no DSG questions), in the data's order, at most ``data.max_pairs``; and
    ``{source, format, prompts, skipped: {reason: n}}``. Stage 2 then draws them: the paper's
    ground-truth prompts with generated images."""
    fmt = detect_format(data)
    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for raw in read_pairs(data, images=False):
        if data.max_pairs is not None and len(rows) >= data.max_pairs:
            break
        if raw.unreadable:
            skipped["bad_metadata"] += 1
        elif raw.text is None:
            skipped["no_caption"] += 1
        else:
            rows.append(
                {
                    "id": f"{skill}-gt{len(rows):06d}",
                    "skill": skill,
                    "prompt": raw.text,
                    "engine": "data",
                    "model": f"data:{data.uri}",
                    "round": 0,
                    "questions": None,
                }
            )
    if not rows:
        msg = (
            f"skill {skill!r}: no captions in data {data.uri!r} (format {fmt}; skipped "
            f"{dict(skipped) or 'nothing: it is empty'}); check data.text_column"
        )
        raise ValueError(msg)
    if skipped:
        log.warning("prompts: skill %r: skipped %s of data %s", skill, dict(skipped), data.uri)
    info = {"source": data.uri, "format": fmt, "prompts": len(rows), "skipped": dict(skipped)}
    return rows, info


def _decode(image: bytes) -> tuple[str | None, str | None]:
    """(the image's format, None), or (None, why it is skipped: ``corrupt_image``, or
    ``too_large`` past PIL's decompression-bomb limit)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as img:
            img.load()
            return img.format or "", None
    except Image.DecompressionBombError:
        return None, "too_large"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None, "corrupt_image"


def _as_png(image: bytes) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    with Image.open(io.BytesIO(image)) as img:
        img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def import_skill(run_dir: RunDir, skill: str, data: SkillData) -> dict[str, Any]:
    """Copy ``data``'s pairs into ``images/<skill>/`` with stage 2's metadata; returns
    ``{pairs, imported_now, already_present, skipped: {reason: n}, source, format}``."""
    fmt = detect_format(data)
    present = set(run_dir.listdir(*images_dir(skill)))
    skipped: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    written = 0
    for raw in read_pairs(data):
        if data.max_pairs is not None and len(rows) >= data.max_pairs:
            break
        if raw.unreadable:
            skipped["bad_metadata"] += 1
            continue
        if raw.text is None:
            skipped["no_caption"] += 1
            continue
        if raw.image is None:
            skipped["no_image"] += 1
            continue
        image_format, why = _decode(raw.image)
        if image_format is None:
            skipped[why or "corrupt_image"] += 1
            log.debug("data %s: %s: %s", data.uri, raw.source, why)
            continue
        image, suffix = raw.image, _FORMAT_SUFFIX.get(image_format)
        if suffix is None:  # the imagefolder keeps stage 2's formats: PNG or JPEG
            image, suffix = _as_png(image), ".png"
        prompt_id = f"{skill}-gt{len(rows):06d}"
        name = f"{prompt_id}{suffix}"
        if name not in present:
            run_dir.write_bytes(image, *images_dir(skill, name))
            written += 1
        rows.append(
            {
                "file_name": name,
                "text": raw.text,
                "skill": skill,
                "prompt_id": prompt_id,
                "image_index": 0,
                "seed": None,
                "model": f"data:{data.uri}",
            }
        )
    if not rows:
        msg = (
            f"skill {skill!r}: no usable image-text pairs in data {data.uri!r} (format {fmt}; "
            f"skipped {dict(skipped) or 'nothing: it is empty'}); check data.image_column / "
            "data.text_column"
        )
        raise ValueError(msg)
    if skipped:
        log.warning("images: skill %r: skipped %s of data %s", skill, dict(skipped), data.uri)
    run_dir.write_jsonl(rows, *images_metadata(skill))
    return {
        "source": data.uri,
        "format": fmt,
        "pairs": len(rows),
        "imported_now": written,
        "already_present": len(rows) - written,
        "skipped": dict(skipped),
    }
