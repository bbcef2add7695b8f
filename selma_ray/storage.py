"""The run directory: every stage's outputs and the manifest, on any fsspec URI.

A run directory is a local path, ``file://``, ``memory://`` (tests) or a cloud URI (``s3://``,
``gs://`` with s3fs / gcsfs installed). Writes are atomic: a reader never sees half a file,
and a killed writer never leaves one behind, so a rerun can trust whatever exists.

The manifest (``manifest.json``) records, per stage, its status, the fingerprint of the config
it ran with, counts and timings. It is what makes reruns cheap: a finished stage whose
fingerprint matches is skipped, and a changed config is reported field by field.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from selma_ray import layout


class RunDir:
    """A run directory on any fsspec filesystem; paths inside it are relative, '/'-separated."""

    def __init__(self, uri: str) -> None:
        if not uri:
            msg = "run directory URI is empty: pass --run-dir PATH_OR_URI"
            raise ValueError(msg)
        self.uri = uri.rstrip("/") or "/"
        self.fs, root = fsspec.core.url_to_fs(self.uri)
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            # absolute, so Ray workers (whose working directory differs) find the same place
            self.uri = self.root

    def __repr__(self) -> str:
        return f"RunDir({self.uri!r})"

    # paths
    def path(self, *parts: str) -> str:
        """Filesystem path (no protocol) of a file inside the run directory."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def url(self, *parts: str) -> str:
        """Full URI (with protocol) of a file inside the run directory, for other libraries."""
        p = self.path(*parts)
        return p if self.is_local else self.fs.unstrip_protocol(p)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def makedirs(self, *parts: str) -> None:
        self.fs.makedirs(self.path(*parts), exist_ok=True)

    def listdir(self, *parts: str) -> list[str]:
        p = self.path(*parts)
        if not self.fs.exists(p):
            return []
        return sorted(posixpath.basename(x.rstrip("/")) for x in self.fs.ls(p, detail=False))

    def remove(self, *parts: str) -> None:
        p = self.path(*parts)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    # reading
    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode()

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_text(*parts))

    def read_jsonl(self, *parts: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.read_text(*parts).splitlines() if line.strip()]

    # atomic writing
    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a whole file atomically (temp file + rename locally; one PUT on object stores)."""
        target = self.path(*parts)
        parent = posixpath.dirname(target)
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        if self.is_local:
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, data)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode(), *parts)

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", *parts)

    def write_jsonl(self, rows: Iterable[dict[str, Any]], *parts: str) -> None:
        self.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), *parts)


# --------------------------------------------------------------------------- manifest


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two fingerprints, as 'path: old -> new'."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{path}: (absent) -> {_short(new[key])}")
            elif key not in new:
                out.append(f"{path}: {_short(old[key])} -> (absent)")
            else:
                out.extend(_diff(old[key], new[key], path))
        return out
    return [] if old == new else [f"{prefix}: {_short(old)} -> {_short(new)}"]


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Manifest:
    """Per-stage status, config fingerprint, counts and timings, persisted in the run dir."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self.data: dict[str, Any] = {"version": 1, "stages": {}}
        if run_dir.exists(*layout.manifest()):
            self.data = run_dir.read_json(*layout.manifest())
            self.data.setdefault("stages", {})

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        return self.data["stages"]

    def save(self) -> None:
        self.data["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.run_dir.write_json(self.data, *layout.manifest())

    def status(self, stage: str) -> str | None:
        return self.stages.get(stage, {}).get("status")

    def changes(self, stage: str, fingerprint: dict[str, Any]) -> list[str]:
        """Config fields that differ from what the stage ran with (empty if never ran)."""
        entry = self.stages.get(stage)
        if not entry or "fingerprint" not in entry:
            return []
        return _diff(entry["fingerprint"], fingerprint)

    def start(self, stage: str, fingerprint: dict[str, Any], fingerprint_hash: str) -> None:
        entry = self.stages.setdefault(stage, {})
        entry.update(
            status="running",
            config_hash=fingerprint_hash,
            fingerprint=fingerprint,
            started_at=time.time(),
            attempts=entry.get("attempts", 0) + 1,
        )
        entry.pop("error", None)
        self.save()

    def finish(
        self, stage: str, counts: dict[str, Any], seconds: float, *, complete: bool = True
    ) -> None:
        entry = self.stages[stage]
        entry.update(
            status="done" if complete else "incomplete",
            counts=counts,
            seconds=round(seconds, 3),
            finished_at=time.time(),
        )
        self.save()

    def fail(self, stage: str, error: str, seconds: float) -> None:
        entry = self.stages.setdefault(stage, {})
        entry.update(status="failed", error=error, seconds=round(seconds, 3))
        self.save()

    def reset(self, stage: str) -> None:
        self.stages.pop(stage, None)
        self.save()


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    box = {"start": time.perf_counter(), "seconds": 0.0}
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - box["start"]
