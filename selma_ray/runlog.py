"""What a run prints and what it keeps: a quiet console, the full log in the run directory.

The console (:func:`configure_console`) shows selma-ray's own lines (the run directory, each
stage as it starts and ends, warnings that need the user) and, from every other library (Ray,
Ray Data, Ray Train, transformers, diffusers...), only errors; ``verbose`` brings everything
back. :func:`driver_log` keeps every line of every library, tracebacks included, in the run
directory (``logs/driver-<start>.log``: written in place on local disk, uploaded when the run
ends or fails on object storage), where the console's short error messages point.

What does not pass through Python's logging goes there too while a quiet run goes on: the
process's file descriptors 1 and 2 point at the log file (Ray's C++ core worker writes its
``core_worker.cc`` lines straight to fd 2; Ray prints the raylet's messages and library
progress bars to ``sys.stdout`` / ``sys.stderr``), and the console keeps a copy of the
terminal's stderr (:func:`console_stream`) for selma-ray's own lines and progress bars.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from selma_ray import layout
from selma_ray.storage import RunDir

__all__ = [
    "FILE_ONLY",
    "FORMAT",
    "configure_console",
    "console_stream",
    "driver_log",
    "is_quiet",
    "quiet_libraries",
]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_OURS = ("selma_ray", "__main__")
_quiet = False  # set by configure_console
_console: TextIO | None = None  # the terminal's stderr while fds 1 and 2 go to the driver log


def is_quiet() -> bool:
    """Whether the console is quiet (no ``-v`` / ``--log-level``)."""
    return _quiet


def console_stream() -> TextIO:
    """Where selma-ray's console lines and progress bars go: the terminal's stderr."""
    return _console or sys.stderr


#: ``extra=`` of a record for the driver log only (e.g. a traceback the console sums up).
FILE_ONLY = {"selma_console": False}


class _ConsoleFilter(logging.Filter):
    """selma-ray's records from INFO up; everyone else's from ERROR up; none marked
    :data:`FILE_ONLY`."""

    def __init__(self, quiet: bool) -> None:
        super().__init__()
        self.quiet = quiet

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "selma_console", True):
            return False
        return not self.quiet or record.name.startswith(_OURS) or record.levelno >= logging.ERROR


class _Plain(logging.Formatter):
    """The message alone; warnings and errors say which they are."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


class _Stderr(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is at the time of each record."""

    _selma_console = True

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 - logging's attribute
        return console_stream()

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - set by StreamHandler.__init__
        pass


def configure_console(*, verbose: bool = False, level: str | None = None) -> None:
    """One stderr handler on the root logger: quiet by default (see the module docstring);
    ``verbose`` shows every library's records from DEBUG; ``level`` sets the level instead."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_selma_console", False):
            root.removeHandler(h)
    handler = _Stderr()
    global _quiet
    quiet = _quiet = not (verbose or level)
    handler.setFormatter(_Plain() if quiet else logging.Formatter(FORMAT))
    handler.addFilter(_ConsoleFilter(quiet))
    root.addHandler(handler)

    root.setLevel(level.upper() if level else (logging.DEBUG if verbose else logging.INFO))


@contextmanager
def driver_log(rd: RunDir) -> Iterator[str]:
    """Every record the root logger passes also goes to the run's ``logs/driver-<start>.log``
    while the context is open; yields its URL."""
    parts = layout.driver_log(time.strftime("%Y%m%d-%H%M%S"))
    if rd.is_local:
        rd.makedirs(*parts[:-1])
        local, upload = rd.path(*parts), False
    else:
        fd, local = tempfile.mkstemp(prefix="selma-driver-", suffix=".log")
        os.close(fd)
        upload = True
    quiet_libraries()
    handler = logging.FileHandler(local, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with _native_output_to(local) if _quiet else contextlib.nullcontext():
            yield rd.url(*parts)
    finally:
        root.removeHandler(handler)
        handler.close()
        if upload:
            try:
                with open(local, "rb") as f:
                    rd.write_bytes(f.read(), *parts)
            except Exception as e:  # noqa: BLE001 - the run's outcome matters more than its log
                print(f"selma-ray: could not upload the driver log ({e}); kept at {local}",
                      file=sys.stderr)  # fmt: skip
            else:
                os.remove(local)


def _is_fd(stream: Any, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):  # a capture buffer (pytest), a StringIO
        return False


@contextmanager
def _native_output_to(path: str) -> Iterator[None]:
    """Point fds 1 and 2 at ``path`` (appending) for the block, keeping the terminal's stderr
    as :func:`console_stream`. Nothing happens unless ``sys.stdout`` / ``sys.stderr`` are fds
    1 and 2 (under a test's capture they are not)."""
    global _console
    if _console is not None or not (_is_fd(sys.stdout, 1) and _is_fd(sys.stderr, 2)):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    console = os.fdopen(
        os.dup(saved[2]), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
        errors="replace",
    )  # fmt: skip
    target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for fd in (1, 2):
        os.dup2(target, fd)
    os.close(target)
    _console = console
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        _console = None
        console.close()


def quiet_libraries() -> None:
    """On a quiet console, route transformers' and diffusers' output through logging (see
    :func:`route_library_logs`); a run calls it before its checks load or build any model."""
    if _quiet:
        route_library_logs()


def route_library_logs() -> None:
    """transformers and diffusers print through handlers of their own (not the root logger's):
    send their records to the root logger, where the quiet console drops all but errors and
    the driver log keeps them."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for lib in (transformers_logging, diffusers_logging):
        lib.disable_default_handler()
        lib.enable_propagation()
        lib.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars
