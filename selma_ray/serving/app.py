"""The HTTP app of the images API, without Ray: a FastAPI app over an injected generate callable.

Owns the routes, auth, body limits, request validation, timeouts and the JSON errors.
:func:`create_app` builds the app from :class:`AppSettings` (what is served and its limits) and
a ``generate(job) -> list[bytes]`` coroutine function (PNG bytes per image) that does the
drawing. The Ray Serve ingress (the Ray layer's ``distributed/serve.py``) passes one that calls the
model deployment; tests and single-process servers pass :meth:`PipelineWorker.generate
<selma_ray.serving.model.PipelineWorker.generate>` or a fake.

Routes: ``POST /v1/images/generations``, ``GET /v1/models``, ``GET /v1/models/{id}`` and
``GET /healthz`` (no auth, for load-balancer probes); with ``settings.compare``, the human
side-by-side rating page and its routes under ``/compare`` (:mod:`selma_ray.serving.compare`).
Every error is OpenAI's JSON shape
(:func:`~selma_ray.serving.api.error_body`), never a stack trace.

What a backend raises and what the client gets (:func:`await_generation`):

* :class:`BackendOverloaded` (its queue is full) -> 503 ``overloaded`` with ``Retry-After``;
* :class:`BackendUnavailable` (restarting, scaling, gone) -> 503 ``unavailable`` with
  ``Retry-After``;
* no answer within ``request_timeout_s`` -> 504 ``timeout``, and the backend call is cancelled;
* any other exception -> 500 naming only the exception type (details go to the log).

Auth: with ``auth_digest`` set (the SHA-256 of the token, see
:func:`~selma_ray.serving.api.token_digest`), every route but ``/healthz`` needs
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from selma_ray.serving.api import (
    APIError,
    Defaults,
    GenerationJob,
    Limits,
    check_bearer,
    error_body,
    images_body,
    model_entry,
    models_body,
    parse_generation_request,
    resolve_variant,
)

if TYPE_CHECKING:
    from selma_ray.config import ServeConfig
    from selma_ray.evaluation.votes import CompareSettings
    from selma_ray.serving.model import ModelSpec

log = logging.getLogger(__name__)

__all__ = [
    "MAX_BODY_BYTES",
    "AppSettings",
    "BackendOverloaded",
    "BackendUnavailable",
    "Generate",
    "await_generation",
    "create_app",
]

#: Largest accepted request body.
MAX_BODY_BYTES = 1 << 20
#: ``generate(job)``: the PNG bytes of each image of a validated request.
Generate = Callable[[GenerationJob], Awaitable[list[bytes]]]

_BUSY = {"Retry-After": "1"}
_ROUTES = "POST /v1/images/generations, GET /v1/models, GET /healthz"


class BackendOverloaded(Exception):
    """The backend's queue is full: the request was refused without waiting (503)."""


class BackendUnavailable(Exception):
    """The backend cannot take requests right now (restarting, scaling, gone) (503)."""


@dataclass(frozen=True)
class AppSettings:
    """What the app serves and its limits (plain, picklable data)."""

    variants: tuple[str, ...]
    default_variant: str
    kinds: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    defaults: Defaults = field(default_factory=Defaults)
    request_timeout_s: float = 60.0
    auth_digest: str | None = None
    #: The run whose eval images the ``/compare`` page offers for rating; None: no such page.
    compare: CompareSettings | None = None

    @classmethod
    def from_spec(
        cls,
        spec: ModelSpec,
        serve: ServeConfig,
        auth_digest: str | None = None,
        compare: CompareSettings | None = None,
    ) -> AppSettings:
        """The variants of ``spec`` under the limits and timeout of a ``serve`` section."""
        return cls(
            variants=tuple(spec.variants),
            default_variant=spec.default_variant,
            kinds=dict(spec.kinds),
            limits=Limits.from_config(serve),
            defaults=spec.defaults,
            request_timeout_s=serve.request_timeout_s,
            auth_digest=auth_digest,
            compare=compare,
        )


async def await_generation(
    generation: Awaitable[list[bytes]], timeout_s: float, variant: str = ""
) -> list[bytes]:
    """Await a backend call; map timeout, overload and failure to :class:`APIError`.

    On timeout the call is cancelled (a backend that forwards work elsewhere cancels it there
    when its coroutine is cancelled).
    """
    try:
        return await asyncio.wait_for(generation, timeout=timeout_s)
    except asyncio.TimeoutError:
        msg = (
            f"image generation took longer than {timeout_s:g}s (serve.request_timeout_s); "
            "retry later, or ask for fewer / smaller images or fewer steps"
        )
        raise APIError(504, msg, code="timeout", type="server_error") from None
    except BackendOverloaded:
        msg = "the server is at capacity (serve.max_queued_requests); retry shortly"
        raise APIError(503, msg, code="overloaded", type="server_error", headers=_BUSY) from None
    except BackendUnavailable as e:
        log.warning("model backend unavailable: %s", e)
        msg = "the model is unavailable (restarting or scaling); retry shortly"
        raise APIError(503, msg, code="unavailable", type="server_error", headers=_BUSY) from e
    except APIError:
        raise
    except Exception as e:  # the model failed on this request: log it, answer JSON
        log.exception("image generation failed for model %s", variant)
        msg = f"image generation failed ({type(e).__name__}); see the server logs"
        raise APIError(500, msg, code="internal_error", type="server_error") from e


async def _read_json(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes", code="body_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes", code="body_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except (ValueError, UnicodeDecodeError):
        msg = "the request body is not valid JSON; send a JSON object with at least 'prompt'"
        raise APIError(400, msg, code="invalid_json") from None


def create_app(generate: Generate, settings: AppSettings) -> FastAPI:
    """The OpenAI-compatible images API over ``generate``; see the module docstring."""
    app = FastAPI(title="selma-ray images API", docs_url=None, redoc_url=None, openapi_url=None)
    variants = list(settings.variants)
    created = int(time.time())
    routes = _ROUTES + (", GET /compare" if settings.compare is not None else "")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message += f"; routes: {routes}"
        body = error_body(message, type=kind, code=str(exc.status_code))
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(f"invalid request: {exc.errors()[:1]}"), status_code=400)

    def auth(request: Request) -> None:
        check_bearer(request.headers.get("authorization"), settings.auth_digest)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        # no auth (load-balancer probes), so it says nothing about the models
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        auth(request)
        return JSONResponse(models_body(variants, created, settings.kinds))

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> JSONResponse:
        auth(request)
        variant = resolve_variant(model_id, variants)
        return JSONResponse(model_entry(variant, created, settings.kinds.get(variant)))

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> JSONResponse:
        auth(request)
        body = await _read_json(request)
        job = parse_generation_request(
            body,
            variants=variants,
            limits=settings.limits,
            defaults=settings.defaults,
            default_variant=settings.default_variant,
        )
        images = await await_generation(generate(job), settings.request_timeout_s, job.variant)
        return JSONResponse(images_body(images, job.seeds, int(time.time())))

    if settings.compare is not None:
        from selma_ray.serving.compare import add_compare_routes

        add_compare_routes(app, settings.compare, auth)
    return app
