"""Serving: a finished run's base, merged and expert models behind an OpenAI-style images API.

``selma_ray.serving.app:build_app`` is the Ray Serve application builder and
:func:`serve_run_dir` the one-call helper of ``selma-ray serve``; :mod:`.api` (request rules,
no Ray) and :mod:`.model` (the multi-adapter pipeline) hold the parts. Imports are lazy, so
``selma_ray.serving.api`` loads without Ray or FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selma_ray.serving.app import ServeArgs, build_app, serve_run_dir

__all__ = ["ServeArgs", "build_app", "serve_run_dir"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from selma_ray.serving import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
