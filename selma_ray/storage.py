"""The run directory: every stage's outputs and the manifest, on any fsspec URI.

A run directory is a local path, ``file://``, ``memory://`` (tests) or a cloud URI (``s3://``,
``gs://`` with s3fs / gcsfs installed: the ``cloud`` extra), or any other fsspec filesystem.
Writes are atomic: a reader never sees half a file, and a killed writer never leaves one behind
under the file's name, so a rerun can trust whatever exists (an object store's PUT is atomic;
elsewhere a temp file is renamed into place).

Object stores: the filesystem is opened without fsspec's listing cache (Ray workers in other
processes write the files this process lists), and "directories" are never created (a
``makedirs`` on S3 would create a missing bucket). Endpoint and credentials come from the
store's own configuration (S3: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ... read by
botocore). :func:`check_storage` fails fast, before any work, when a bucket is missing or the
credentials are rejected; :func:`arrow_filesystem` hands the same fsspec filesystem to
libraries that take a ``pyarrow.fs`` filesystem (Ray Train's checkpoint storage).

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
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from selma_ray import layout
from selma_ray.config import ConfigError

#: fsspec protocols of object stores: no listing cache, no directories (see the module doc).
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs"})
#: Where each object store's fsspec implementation comes from (all in the ``cloud`` extra).
_STORE_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


def protocol_of(uri: str) -> str:
    """The fsspec protocol of ``uri`` (``file`` for a plain path; the outermost of a chain)."""
    protocol, _ = fsspec.core.split_protocol(uri.split("::", 1)[0])
    return protocol or "file"


def open_filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem and path of ``uri``; object stores without a listing cache.

    Raises :class:`~selma_ray.config.ConfigError` naming the package to install when the
    protocol's implementation (s3fs, gcsfs) is missing.
    """
    protocol = protocol_of(uri)
    options = {"use_listings_cache": False} if protocol in OBJECT_STORES else {}
    try:
        return fsspec.core.url_to_fs(uri, **options)
    except ImportError as e:
        package = _STORE_PACKAGES.get(protocol, f"the fsspec implementation of {protocol}://")
        msg = (
            f"{uri}: {protocol}:// needs {package}, which is not installed ({e}); install the "
            "cloud extra: pip install 'selma-ray[cloud]'"
        )
        raise ConfigError(msg) from e


class RunDir:
    """A run directory on any fsspec filesystem; paths inside it are relative, '/'-separated."""

    def __init__(self, uri: str) -> None:
        if not uri:
            msg = "run directory URI is empty: pass --run-dir PATH_OR_URI"
            raise ValueError(msg)
        self.uri = uri.rstrip("/") or "/"
        self.fs, root = open_filesystem(self.uri)
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.is_object_store = protocol_of(self.uri) in OBJECT_STORES
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
        """Create a folder (nothing on object stores: keys need no folders)."""
        if not self.is_object_store:
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
        """Write a whole file atomically: temp file + rename locally, one PUT on object stores,
        and on any other filesystem (sftp, hdfs, memory, ...) a temp file moved into place,
        then that folder's cached listing dropped (other processes list what this one wrote)."""
        target = self.path(*parts)
        parent = posixpath.dirname(target)
        if parent and not self.is_object_store:
            self.fs.makedirs(parent, exist_ok=True)
        if self.is_local:
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        elif self.is_object_store:
            self.fs.pipe_file(target, data)
        else:
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, target)
            self.fs.invalidate_cache(parent)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode(), *parts)

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", *parts)

    def write_jsonl(self, rows: Iterable[dict[str, Any]], *parts: str) -> None:
        self.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), *parts)


# --------------------------------------------------------------------------- object stores


def arrow_filesystem(uri: str) -> tuple[Any | None, str]:
    """``(pyarrow filesystem, path on it)`` of ``uri`` for libraries that take a ``pyarrow.fs``
    filesystem (Ray Train's ``RunConfig(storage_filesystem=..., storage_path=...)``).

    A local path gives ``(None, absolute path)``: the library resolves it itself. Anything else
    gives the run directory's own fsspec filesystem wrapped for pyarrow and the path without
    its scheme, so the checkpoints go where the run directory's files go, with the same
    endpoint and credentials. (pyarrow's own S3 client does not read ``AWS_ENDPOINT_URL`` when
    built as ``S3FileSystem()``, only through ``FileSystem.from_uri``.)
    """
    import pyarrow.fs

    fs, path = open_filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        return None, path
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path.rstrip("/")


def check_storage(run_dir: str, train_storage: str | None = None) -> None:
    """Fail fast, before any work, when the run directory (or ``train.storage_path``) is on an
    object store that cannot be used: its package missing, its bucket missing, credentials
    missing or rejected, the endpoint unreachable.

    Raises :class:`~selma_ray.config.ConfigError` naming the URI and the fix. On S3 it asks for
    the bucket (``HeadBucket``: the ``s3:ListBucket`` permission the run needs anyway); on other
    object stores for the run directory's path. Then it writes and deletes an empty probe
    object under the run directory, so read-only credentials (and, on other stores, a missing
    bucket) are caught too. Local and ``memory://`` paths are not checked here.
    """
    for what, uri in (("--run-dir", run_dir), ("train.storage_path", train_storage)):
        if not uri:
            continue
        protocol = protocol_of(uri)
        if protocol not in OBJECT_STORES:
            continue
        fs, root = open_filesystem(uri)
        bucket = root.split("/", 1)[0]
        s3 = protocol in ("s3", "s3a")
        try:
            fs.info(bucket if s3 else root)
        except FileNotFoundError as e:
            if s3:
                msg = (
                    f"{what} {uri}: bucket {bucket!r} does not exist at endpoint "
                    f"{_endpoint(fs)}; create it or fix {what} (or AWS_ENDPOINT_URL)"
                )
                raise ConfigError(msg) from e
        except Exception as e:  # noqa: BLE001 - every failure becomes a message naming the fix
            raise ConfigError(_storage_problem(what, uri, bucket, fs, e, s3=s3)) from e
        # credentials that may read but not write or delete (both needed: --redo, checkpoint
        # rotation) would fail at the first write, after the driver has started Ray
        probe = posixpath.join(root.rstrip("/"), *layout.write_probe(uuid.uuid4().hex))
        try:
            fs.pipe_file(probe, b"")
            fs.rm_file(probe)
        except Exception as e:  # noqa: BLE001 - as above
            raise ConfigError(_storage_problem(what, uri, bucket, fs, e, s3=s3)) from e


def _endpoint(fs: AbstractFileSystem) -> str:
    """The endpoint an S3 filesystem talks to (as its client resolved it), for messages."""
    try:
        return str(fs.s3.meta.endpoint_url)
    except Exception:  # noqa: BLE001 - no client (e.g. no credentials): say what was configured
        configured = (getattr(fs, "client_kwargs", None) or {}).get("endpoint_url")
        return str(
            configured
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or "the default AWS endpoint"
        )


def _storage_problem(
    what: str, uri: str, bucket: str, fs: AbstractFileSystem, error: BaseException, *, s3: bool
) -> str:
    detail = f"{type(error).__name__}: {error}"
    names = {c.__name__ for c in type(error).__mro__}
    where = f"bucket {bucket!r} at endpoint {_endpoint(fs)}" if s3 else f"bucket {bucket!r}"
    if isinstance(error, PermissionError):
        fix = (
            "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, the instance "
            "profile) and that they may list, read and write the bucket"
            if s3
            else "check the credentials and that they may list, read and write the bucket"
        )
        return f"{what} {uri}: access denied to {where} ({detail}): {fix}"
    if "NoCredentialsError" in names:
        return (
            f"{what} {uri}: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or give the nodes an instance profile)"
        )
    if "EndpointConnectionError" in names or isinstance(error, (ConnectionError, TimeoutError)):
        fix = "check AWS_ENDPOINT_URL and the network" if s3 else "check the network"
        return f"{what} {uri}: cannot reach {where} ({detail}): {fix}"
    return f"{what} {uri}: cannot use {where} ({detail}); fix {what} or the storage settings"


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

    def start(
        self,
        stage: str,
        fingerprint: dict[str, Any],
        fingerprint_hash: str,
        progress_at_start: int | None = None,
    ) -> None:
        """Mark ``stage`` running; ``progress_at_start``: the units of progress an earlier
        attempt left (``selma-ray status`` times the ETA from this attempt's own work)."""
        entry = self.stages.setdefault(stage, {})
        entry.update(
            status="running",
            config_hash=fingerprint_hash,
            fingerprint=fingerprint,
            started_at=time.time(),
            attempts=entry.get("attempts", 0) + 1,
            progress_at_start=progress_at_start or 0,
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
