"""Serving without Ray: a run's base, merged and expert models behind an OpenAI-style images API.

:mod:`.api` holds the request rules (no FastAPI, no torch), :mod:`.model` the run's variants and
the multi-adapter pipeline, :mod:`.app` the FastAPI app over an injected generate callable and
:mod:`.args` the builder's arguments (:class:`ServeArgs`) resolved against a run. The Ray Serve
deployment (``build_app``, ``serve_run_dir``) lives in the Ray layer, ``distributed/serve.py``.
Imports are lazy, so ``selma_ray.serving.api`` loads without FastAPI or torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selma_ray.serving.app import AppSettings, create_app
    from selma_ray.serving.args import ServeArgs, ServePlan, resolve
    from selma_ray.serving.model import ModelSpec, VariantPipeline, discover_variants

_EXPORTS = {
    "AppSettings": "app",
    "create_app": "app",
    "ServeArgs": "args",
    "ServePlan": "args",
    "resolve": "args",
    "ModelSpec": "model",
    "VariantPipeline": "model",
    "discover_variants": "model",
}
__all__ = [
    "AppSettings",
    "ModelSpec",
    "ServeArgs",
    "ServePlan",
    "VariantPipeline",
    "create_app",
    "discover_variants",
    "resolve",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"selma_ray.serving.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
