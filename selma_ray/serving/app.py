"""The Serve application: typed builder (``build_app``), the FastAPI ingress, and ``serve_run_dir``.

Two deployments: ``SelmaImagesAPI`` (FastAPI ingress: auth, validation, limits, timeouts,
OpenAI-shaped JSON; no CPU reserved, pure asyncio) calls ``SelmaImageModel``
(:class:`~selma_ray.serving.model.ImageModel`: one pipeline holding every adapter of the run)
through a ``DeploymentHandle``. Routes: ``POST /v1/images/generations``, ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /healthz`` (no auth, for load-balancer probes).

Start it with any of::

    serve run selma_ray.serving.app:build_app run_dir=/runs/x max_replicas=2
    serve deploy serve_config.yaml        # import_path: selma_ray.serving.app:build_app
    selma-ray serve --run-dir /runs/x     # -> serve_run_dir(...)

Arguments (:class:`ServeArgs`, validated; unknown ones are refused): ``run_dir`` plus optional
overrides of every ``serve.*`` field of the run's config, and the replica's ``device``,
``dtype``, ``num_cpus``, ``num_gpus``, ``torch_threads``.

Host and port are cluster-wide HTTP options of Serve, not of an application: ``serve_run_dir``
passes ``serve.host`` / ``serve.port`` (default 127.0.0.1:8000, loopback only) to
``serve.start``; ``serve run <import path>`` listens on Serve's default 127.0.0.1:8000 (or
``$RAY_SERVE_DEFAULT_HTTP_HOST``); with a config file, set ``http_options: {host, port}`` in
``serve_config.yaml``. Bind 0.0.0.0 only behind auth (``auth_token_env``) or a trusted proxy.

Load handling: ``max_ongoing_requests`` per model replica, ``max_queued_requests`` waiting per
caller (beyond: ``BackPressureError`` -> 503 with ``Retry-After`` at once), autoscaling between
``min_replicas`` and ``max_replicas`` on ``target_ongoing_requests``, and ``request_timeout_s``
end to end in the ingress (-> 504, the model request is cancelled).

Auth: if ``auth_token_env`` names a variable, the builder reads the token from its own
environment and hands the ingress only its SHA-256 digest, so the secret is not stored in the
Serve controller's deployment config; requests must send ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fsspec.implementations.memory import MemoryFileSystem
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from selma_ray.config import ConfigError, SelmaConfig, ServeConfig
from selma_ray.serving.api import (
    APIError,
    Defaults,
    Limits,
    check_bearer,
    error_body,
    images_body,
    model_entry,
    models_body,
    parse_generation_request,
    resolve_variant,
    token_digest,
)
from selma_ray.serving.model import ImageModel, ModelSpec, discover_variants, load_run_config
from selma_ray.storage import RunDir

log = logging.getLogger(__name__)

__all__ = [
    "APP_NAME",
    "ImagesAPI",
    "ServeArgs",
    "await_model",
    "build_app",
    "deployment_options",
    "serve_run_dir",
]

APP_NAME = "selma"
#: Largest accepted request body.
MAX_BODY_BYTES = 1 << 20


# --------------------------------------------------------------------------- arguments


class ServeArgs(BaseModel):
    """Arguments of :func:`build_app`; every ``serve.*`` field left None comes from the run."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str = Field(min_length=1, description="Run directory (path or fsspec URI).")
    # overrides of ServeConfig (None = the run's config.yaml)
    host: str | None = None
    port: int | None = None
    auth_token_env: str | None = Field(
        None, description="Env var with the bearer token; '' turns auth off."
    )
    max_n: int | None = None
    max_size: int | None = None
    max_steps: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    max_ongoing_requests: int | None = None
    max_queued_requests: int | None = None
    request_timeout_s: float | None = None
    # the model replica
    device: str | None = Field(None, description="torch device; None = cuda if available.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = Field(
        None, description="None = images.dtype of the run."
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per model replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per model replica.")
    torch_threads: int | None = Field(None, ge=1, description="torch CPU threads per replica.")

    @classmethod
    def parse(cls, args: Mapping[str, Any] | ServeArgs | None) -> ServeArgs:
        """Validate builder arguments; errors name the argument and what is allowed."""
        if isinstance(args, ServeArgs):
            return args
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            msg = f"build_app: expected a mapping of arguments, got {type(args).__name__}"
            raise ConfigError(msg)
        try:
            return cls.model_validate(dict(args))
        except ValidationError as e:
            raise ConfigError(_format_args_error(e)) from None

    def serve_config(self, base: ServeConfig) -> ServeConfig:
        """The run's ``serve`` section with these overrides, validated as a whole."""
        overrides = {
            k: getattr(self, k)
            for k in ServeConfig.model_fields
            if getattr(self, k, None) is not None
        }
        if overrides.get("auth_token_env") == "":
            overrides["auth_token_env"] = None
        try:
            cfg = ServeConfig.model_validate({**base.model_dump(), **overrides})
        except ValidationError as e:
            raise ConfigError(_format_args_error(e, prefix="serve.")) from None
        if cfg.min_replicas > cfg.max_replicas:
            msg = (
                f"serve.min_replicas ({cfg.min_replicas}) must be <= serve.max_replicas "
                f"({cfg.max_replicas})"
            )
            raise ConfigError(msg)
        return cfg


def _format_args_error(error: ValidationError, prefix: str = "") -> str:
    allowed = ", ".join(ServeArgs.model_fields)
    lines = ["build_app: invalid arguments:"]
    for err in error.errors():
        loc = prefix + ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown argument; allowed: {allowed}")
        elif err["type"] == "missing":
            lines.append(f"  {loc}: required (e.g. run_dir=/path/to/run)")
        else:
            got = err.get("input")
            shown = f" (got {got!r})" if isinstance(got, (str, int, float)) else ""
            lines.append(f"  {loc}: {err['msg']}{shown}")
    return "\n".join(lines)


def deployment_options(cfg: ServeConfig, args: ServeArgs) -> tuple[dict[str, Any], dict[str, Any]]:
    """Serve ``.options(...)`` of the model deployment and of the ingress, from ``cfg``."""
    model: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "ray_actor_options": {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
    }
    if cfg.min_replicas == cfg.max_replicas:
        model["num_replicas"] = cfg.max_replicas
    else:
        model["autoscaling_config"] = {
            "min_replicas": cfg.min_replicas,
            "initial_replicas": max(1, cfg.min_replicas),
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        }
    queued = cfg.max_queued_requests if cfg.max_queued_requests >= 0 else 256
    capacity = cfg.max_replicas * (cfg.max_ongoing_requests + queued) + 32
    ingress: dict[str, Any] = {
        "num_replicas": 1,
        # the ingress only awaits the model: it must admit every request the model could hold,
        # so overload is answered by our 503 JSON, not by a queue in front of the ingress
        "max_ongoing_requests": capacity,
        "max_queued_requests": capacity,
        "ray_actor_options": {"num_cpus": 0},
    }
    return model, ingress


# --------------------------------------------------------------------------- ingress

api = FastAPI(title="selma-ray images API", docs_url=None, redoc_url=None, openapi_url=None)


def _json_error(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


@api.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return _json_error(exc)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = f"{request.method} {request.url.path}: {exc.detail}"
    if exc.status_code == 404:
        message += "; routes: POST /v1/images/generations, GET /v1/models, GET /healthz"
    body = error_body(message, type=kind, code=str(exc.status_code))
    return JSONResponse(body, status_code=exc.status_code)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(error_body(f"invalid request: {exc.errors()[:1]}"), status_code=400)


async def _read_json(request: Request) -> Any:
    import json

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


async def await_model(response: Any, timeout_s: float, variant: str = "") -> list[bytes]:
    """Await a model ``DeploymentResponse``; map timeout / overload / failure to :class:`APIError`.

    Timeout -> 504 (and the model request is cancelled); ``BackPressureError`` (the caller's
    queue is full) -> 503 with ``Retry-After``; replica unavailable -> 503; anything else -> 500
    with the exception type only (details go to the log, not to the client).
    """
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import (
        BackPressureError,
        DeploymentUnavailableError,
        RequestCancelledError,
    )

    busy = {"Retry-After": "1"}

    async def result() -> list[bytes]:
        return await response

    try:
        return await asyncio.wait_for(result(), timeout=timeout_s)
    except asyncio.TimeoutError:
        response.cancel()
        msg = (
            f"image generation took longer than {timeout_s:g}s (serve.request_timeout_s); "
            "retry later, or ask for fewer / smaller images or fewer steps"
        )
        raise APIError(504, msg, code="timeout", type="server_error") from None
    except BackPressureError:
        msg = "the server is at capacity (serve.max_queued_requests); retry shortly"
        raise APIError(503, msg, code="overloaded", type="server_error", headers=busy) from None
    except (DeploymentUnavailableError, RequestCancelledError, RayActorError) as e:
        log.warning("model deployment unavailable: %s", e)
        msg = "the model is unavailable (restarting or scaling); retry shortly"
        raise APIError(503, msg, code="unavailable", type="server_error", headers=busy) from e
    except Exception as e:  # the model failed on this request: log it, answer JSON
        log.exception("image generation failed for model %s", variant)
        msg = f"image generation failed ({type(e).__name__}); see the server logs"
        raise APIError(500, msg, code="internal_error", type="server_error") from e


@serve.deployment(name="SelmaImagesAPI")
@serve.ingress(api)
class ImagesAPI:
    """OpenAI-compatible images API in front of the model deployment."""

    def __init__(
        self,
        model: DeploymentHandle,
        variants: list[str],
        kinds: dict[str, str],
        default_variant: str,
        limits: Limits,
        defaults: Defaults,
        request_timeout_s: float,
        auth_digest: str | None,
    ) -> None:
        self.model = model
        self.variants = list(variants)
        self.kinds = dict(kinds)
        self.default_variant = default_variant
        self.limits = limits
        self.defaults = defaults
        self.timeout_s = request_timeout_s
        self.auth_digest = auth_digest
        self.created = int(time.time())

    def _auth(self, request: Request) -> None:
        check_bearer(request.headers.get("authorization"), self.auth_digest)

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        # no auth (load-balancer probes), so it says nothing about the models
        return JSONResponse({"status": "ok"})

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> JSONResponse:
        self._auth(request)
        return JSONResponse(models_body(self.variants, self.created, self.kinds))

    @api.get("/v1/models/{model_id:path}")
    async def get_model(self, model_id: str, request: Request) -> JSONResponse:
        self._auth(request)
        variant = resolve_variant(model_id, self.variants)
        return JSONResponse(model_entry(variant, self.created, self.kinds.get(variant)))

    @api.post("/v1/images/generations")
    async def generations(self, request: Request) -> JSONResponse:
        self._auth(request)
        body = await _read_json(request)
        job = parse_generation_request(
            body,
            variants=self.variants,
            limits=self.limits,
            defaults=self.defaults,
            default_variant=self.default_variant,
        )
        images = await await_model(
            self.model.generate.remote(job.to_dict()), self.timeout_s, job.variant
        )
        return JSONResponse(images_body(images, job.seeds, int(time.time())))


# --------------------------------------------------------------------------- builders


def _auth_digest(cfg: ServeConfig) -> str | None:
    name = cfg.auth_token_env
    if not name:
        return None
    token = os.environ.get(name, "")
    if not token.strip():
        msg = (
            f"serve.auth_token_env names {name!r}, but that environment variable is unset or "
            "empty where the app is built: export it (serve_config.yaml: the application's "
            "runtime_env.env_vars), or set auth_token_env='' to serve without auth"
        )
        raise ConfigError(msg)
    return token_digest(token.strip())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _prepare(
    args: Mapping[str, Any] | ServeArgs | None,
) -> tuple[ServeArgs, ServeConfig, ModelSpec, SelmaConfig]:
    """Validated arguments, the effective serve config, the variants and the run's config."""
    a = ServeArgs.parse(args)
    rd = RunDir(a.run_dir)
    if isinstance(rd.fs, MemoryFileSystem):
        msg = (
            f"run_dir {rd.uri!r} lives in this process's memory, which Serve replicas cannot "
            "read: give a local path shared with the replicas or a cloud URI"
        )
        raise ConfigError(msg)
    try:
        cfg = load_run_config(rd)
        spec = discover_variants(rd, cfg)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"run_dir: {e}") from e
    return a, a.serve_config(cfg.serve), spec, cfg


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder: ``serve run selma_ray.serving.app:build_app run_dir=...``.

    ``args`` is validated as :class:`ServeArgs` (a mapping or a ``ServeArgs``); unknown or
    invalid arguments raise :class:`~selma_ray.config.ConfigError` naming them.
    """
    a, cfg, spec, _ = _prepare(args)
    return _build(a, cfg, spec)


def _build(a: ServeArgs, cfg: ServeConfig, spec: ModelSpec) -> Application:
    digest = _auth_digest(cfg)
    if not _is_loopback(cfg.host) and digest is None:
        log.warning(
            "serve.host=%s is not loopback and serve.auth_token_env is unset: anyone who can "
            "reach the port can generate images",
            cfg.host,
        )
    model_opts, ingress_opts = deployment_options(cfg, a)
    model = ImageModel.options(**model_opts).bind(spec, a.device, a.torch_threads, a.dtype)
    limits = Limits.from_config(cfg)
    return ImagesAPI.options(**ingress_opts).bind(
        model,
        list(spec.variants),
        dict(spec.kinds),
        spec.default_variant,
        limits,
        spec.defaults,
        cfg.request_timeout_s,
        digest,
    )


def serve_run_dir(
    run_dir: str,
    *,
    host: str | None = None,
    port: int | None = None,
    blocking: bool = True,
    address: str | None = None,
    name: str = APP_NAME,
    route_prefix: str = "/",
    **overrides: Any,
) -> str:
    """Serve a run directory over HTTP; returns the base URL (``http://host:port``).

    ``host`` / ``port`` default to the run's ``serve.host`` / ``serve.port`` (127.0.0.1:8000).
    Connects to ``address`` (or ``$RAY_ADDRESS``, else the run's ``ray.address``, else a local
    Ray). ``overrides`` are further :class:`ServeArgs` (``max_replicas=2``, ``num_gpus=1`` ...).
    ``blocking`` then sleeps until Ctrl-C and shuts Serve down; otherwise it returns at once,
    leaving the app running. ``host`` / ``port`` only take effect when this call starts Serve:
    Serve's HTTP options are fixed for the life of its controller.
    """
    import ray

    args = {"run_dir": run_dir, **overrides}
    if host is not None:
        args["host"] = host
    if port is not None:
        args["port"] = port
    a, cfg, spec, run_cfg = _prepare(args)
    app = _build(a, cfg, spec)
    if not ray.is_initialized():
        ray_address = address or os.environ.get("RAY_ADDRESS") or run_cfg.ray.address
        ray.init(address=ray_address, num_cpus=None if ray_address else run_cfg.ray.num_cpus)
    serve.start(
        http_options={
            "host": cfg.host,
            "port": cfg.port,
            # backstop only: the ingress answers 504 JSON at serve.request_timeout_s
            "request_timeout_s": cfg.request_timeout_s + 30.0,
        }
    )
    url = f"http://{cfg.host}:{cfg.port}"
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    log.info("serving %s at %s%s", a.run_dir, url, route_prefix.rstrip("/") + "/v1")
    if blocking:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return url
