"""Finding an expert's newest complete checkpoint on storage (any fsspec URI).

Ray Train hands a restarted worker the latest checkpoint its controller registered; a worker
that dies right after writing a checkpoint can die before the controller has registered it, and
the in-process executor has no controller at all. Both then look here: the ``checkpoint_*``
folders under a run's checkpoint URI are read newest step first, and the first one that loads
completely is the resume point.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tempfile
from typing import TYPE_CHECKING

from selma_ray.training.loop import CHECKPOINT_STATE_FILE, ExpertCheckpoint

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint_"


def checkpoint_steps(uri: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint folder under ``uri`` with a readable state file,
    newest step first."""
    from selma_ray.storage import open_filesystem

    fs, root = open_filesystem(uri)  # no listing cache: workers elsewhere write these folders
    if not fs.exists(root):
        return []
    found = []
    for path in fs.ls(root, detail=False):
        if not posixpath.basename(path.rstrip("/")).startswith(CHECKPOINT_PREFIX):
            continue
        try:
            state = json.loads(fs.cat_file(posixpath.join(path, CHECKPOINT_STATE_FILE)))
            found.append((int(state["step"]), path))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not (yet) a whole checkpoint
    return sorted(found, reverse=True)


def load_checkpoint(fs: AbstractFileSystem, path: str) -> ExpertCheckpoint:
    """The checkpoint folder at ``path`` on ``fs`` (copied to a temporary folder first when
    it is not on local disk)."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return ExpertCheckpoint.from_dir(path)
    with tempfile.TemporaryDirectory(prefix="selma-resume-") as local:
        fs.get(path.rstrip("/") + "/", local + "/", recursive=True)
        return ExpertCheckpoint.from_dir(local)


def latest_checkpoint(uri: str) -> ExpertCheckpoint | None:
    """The newest checkpoint under ``uri`` that loads completely, or None."""
    from selma_ray.storage import open_filesystem

    fs, _ = open_filesystem(uri)
    for step, path in checkpoint_steps(uri):
        try:
            return load_checkpoint(fs, path)
        except Exception as e:  # noqa: BLE001 - a half-written checkpoint: try the one before
            log.warning("checkpoint at step %d (%s) is not usable: %s", step, path, e)
    return None
