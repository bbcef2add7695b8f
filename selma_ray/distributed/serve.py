"""The Ray Serve deployment of the images API: replicas, ingress, ``build_app``, ``serve_run_dir``.

Owns everything of serving that touches Ray. Two deployments: ``SelmaImagesAPI``
(:class:`ImagesAPI`, the ingress: the Ray-free FastAPI app of :mod:`selma_ray.serving.app`
over a ``DeploymentHandle``; no CPU reserved, pure asyncio) calls ``SelmaImageModel``
(:class:`ImageModel`: replicas each holding one :class:`~selma_ray.serving.model.VariantPipeline`
with every adapter of the run). Ray's errors become the app's backend errors in
:func:`await_model`: ``BackPressureError`` -> :class:`~selma_ray.serving.app.BackendOverloaded`
(503 ``overloaded``), an unavailable or dead replica -> ``BackendUnavailable`` (503).

Start it with any of::

    serve run selma_ray.distributed.serve:build_app run_dir=/runs/x serve.pool.max_size=2
    serve deploy serve_config.yaml      # import_path: selma_ray.distributed.serve:build_app
    selma-ray serve --run-dir /runs/x   # -> serve_run_dir(...)

Arguments: :class:`~selma_ray.serving.args.ServeArgs` (``run_dir``, ``serve`` overrides of the
run's ``serve`` section, the replica's ``device`` / ``dtype`` / ``torch_threads``).

Replicas are the ``serve.pool`` actor pool: ``pool.gpus`` / ``pool.cpus`` (None = 1) are each
replica's resources, and the replica count autoscales between ``pool.min_size`` and
``pool.max_size`` on ``target_ongoing_requests`` (fixed when the two are equal). Serve's
controller replaces replicas that die, so ``pool.max_restarts`` / ``max_task_retries`` do not
apply here. Load: ``max_ongoing_requests`` per replica, ``max_queued_requests`` waiting per
caller (beyond: 503 with ``Retry-After`` at once), ``request_timeout_s`` end to end in the
ingress (-> 504, the model request is cancelled).

Host and port are cluster-wide HTTP options of Serve, not of an application: ``serve_run_dir``
passes ``serve.host`` / ``serve.port`` (default 127.0.0.1:8000, loopback only) to
``serve.start``; ``serve run <import path>`` listens on Serve's default 127.0.0.1:8000 (or
``$RAY_SERVE_DEFAULT_HTTP_HOST``); with a config file, set ``http_options: {host, port}`` in
``serve_config.yaml``. Bind 0.0.0.0 only behind auth (``auth_token_env``) or a trusted proxy.

Auth: if ``serve.auth_token_env`` names a variable, the builder reads the token from its own
environment and hands the ingress only its SHA-256 digest, so the secret is not stored in the
Serve controller's deployment config.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from fsspec.implementations.memory import MemoryFileSystem
from ray import serve
from ray.exceptions import RayActorError
from ray.serve import Application
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RequestCancelledError,
)
from ray.serve.handle import DeploymentHandle

from selma_ray.config import ConfigError, ServeConfig
from selma_ray.distributed.devices import check_gpus_visible
from selma_ray.serving.api import GenerationJob
from selma_ray.serving.app import AppSettings, BackendOverloaded, BackendUnavailable, create_app
from selma_ray.serving.args import ServeArgs, ServePlan, resolve
from selma_ray.serving.model import ModelSpec, PipelineWorker, VariantPipeline
from selma_ray.storage import RunDir

log = logging.getLogger(__name__)

__all__ = [
    "APP_NAME",
    "ImageModel",
    "ImagesAPI",
    "await_model",
    "build_app",
    "deployment_options",
    "plan",
    "serve_run_dir",
]

APP_NAME = "selma"
#: Replica CPUs when ``serve.pool.cpus`` is None.
DEFAULT_REPLICA_CPUS = 1.0


# --------------------------------------------------------------------------- deployments


@serve.deployment(name="SelmaImageModel")
class ImageModel:
    """Model replicas: a :class:`VariantPipeline` on one worker thread; options from the pool."""

    def __init__(
        self,
        spec: ModelSpec,
        device: str | None = None,
        torch_threads: int | None = None,
        dtype: str | None = None,
        gpus: float = 0.0,
        cpu_fallback: bool = False,
    ) -> None:
        check_gpus_visible(
            "SelmaImageModel replica", "serve.pool.gpus", gpus, cpu_fallback=cpu_fallback
        )
        engine = VariantPipeline(spec, device=device, torch_threads=torch_threads, dtype=dtype)
        self.worker = PipelineWorker(engine)
        log.info(
            "SelmaImageModel ready: %s on %s (pipeline %.1fs, %d adapters %.1fs)",
            list(spec.variants),
            engine.device,
            engine.load_seconds,
            len(spec.adapters),
            engine.adapter_load_seconds,
        )

    async def generate(self, job: dict[str, Any]) -> list[bytes]:
        return await self.worker.generate(job)

    def variants(self) -> list[str]:
        return list(self.worker.engine.variants)

    def stats(self) -> dict[str, float]:
        return dict(self.worker.engine.stats)


async def await_model(response: Any) -> list[bytes]:
    """Await a model ``DeploymentResponse`` as an app backend call.

    Cancelling the awaiting coroutine (the app's timeout) cancels the model request;
    ``BackPressureError`` (the caller's queue is full) -> :class:`BackendOverloaded`; a replica
    that is unavailable, gone or cancelled -> :class:`BackendUnavailable`. Anything else
    propagates (the app answers 500 naming only its type).
    """
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise
    except BackPressureError as e:
        raise BackendOverloaded(str(e)) from e
    except (DeploymentUnavailableError, RequestCancelledError, RayActorError) as e:
        raise BackendUnavailable(str(e)) from e


@serve.deployment(name="SelmaImagesAPI")
@serve.ingress()
class ImagesAPI:
    """The ingress: :func:`~selma_ray.serving.app.create_app` over the model deployment."""

    def __init__(self, model: DeploymentHandle, settings: AppSettings) -> None:
        self.model = model
        self.settings = settings

    async def generate(self, job: GenerationJob) -> list[bytes]:
        return await await_model(self.model.generate.remote(job.to_dict()))

    def __serve_build_asgi_app__(self) -> Any:  # called by Serve after __init__
        return create_app(self.generate, self.settings)


def deployment_options(cfg: ServeConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Serve ``.options(...)`` of the model deployment and of the ingress, from ``cfg``."""
    pool = cfg.pool
    cpus = DEFAULT_REPLICA_CPUS if pool.cpus is None else pool.cpus
    model: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "ray_actor_options": {
            "num_cpus": cpus,
            "num_gpus": pool.gpus,
            **({"resources": dict(pool.resources)} if pool.resources else {}),
        },
    }
    if pool.min_size == pool.max_size:
        model["num_replicas"] = pool.max_size
    else:
        model["autoscaling_config"] = {
            "min_replicas": pool.min_size,
            "initial_replicas": max(1, pool.min_size),
            "max_replicas": pool.max_size,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        }
    queued = cfg.max_queued_requests if cfg.max_queued_requests >= 0 else 256
    capacity = pool.max_size * (cfg.max_ongoing_requests + queued) + 32
    ingress: dict[str, Any] = {
        "num_replicas": 1,
        # the ingress only awaits the model: it must admit every request the model could hold,
        # so overload is answered by our 503 JSON, not by a queue in front of the ingress
        "max_ongoing_requests": capacity,
        "max_queued_requests": capacity,
        "ray_actor_options": {"num_cpus": 0},
    }
    return model, ingress


# --------------------------------------------------------------------------- builders


def plan(args: Mapping[str, Any] | ServeArgs | None) -> ServePlan:
    """:func:`~selma_ray.serving.args.resolve`, refusing run dirs replicas cannot read."""
    a = ServeArgs.parse(args)
    rd = RunDir(a.run_dir)
    if isinstance(rd.fs, MemoryFileSystem):
        msg = (
            f"run_dir {rd.uri!r} lives in this process's memory, which Serve replicas cannot "
            "read: give a local path shared with the replicas or a cloud URI"
        )
        raise ConfigError(msg)
    return resolve(a)


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder: ``serve run selma_ray.distributed.serve:build_app run_dir=...``.

    ``args`` is validated as :class:`~selma_ray.serving.args.ServeArgs` (a mapping, dotted keys
    allowed, or a ``ServeArgs``); unknown or invalid arguments raise
    :class:`~selma_ray.config.ConfigError` naming them.
    """
    return _build(plan(args))


def _build(p: ServePlan) -> Application:
    model_opts, ingress_opts = deployment_options(p.serve)
    a = p.args
    fallback = p.run.ray.cpu_fallback or p.run.rehearse
    model = ImageModel.options(**model_opts).bind(
        p.spec, a.device, a.torch_threads, a.dtype, p.serve.pool.gpus, fallback
    )
    return ImagesAPI.options(**ingress_opts).bind(model, p.app)


def serve_run_dir(
    run_dir: str,
    *,
    host: str | None = None,
    port: int | None = None,
    blocking: bool = True,
    address: str | None = None,
    name: str = APP_NAME,
    route_prefix: str = "/",
    **args: Any,
) -> str:
    """Serve a run directory over HTTP; returns the base URL (``http://host:port``).

    ``host`` / ``port`` default to the run's ``serve.host`` / ``serve.port`` (127.0.0.1:8000).
    Connects to ``address`` (or ``$RAY_ADDRESS``, else the run's ``ray.address``, else a local
    Ray). ``args`` are further :class:`~selma_ray.serving.args.ServeArgs` (``serve={...}``,
    ``torch_threads=1``; dotted keys such as ``**{"serve.pool.max_size": 2}``).
    ``blocking`` then sleeps until Ctrl-C and shuts Serve down; otherwise it returns at once,
    leaving the app running. ``host`` / ``port`` only take effect when this call starts Serve:
    Serve's HTTP options are fixed for the life of its controller.
    """
    import ray

    full: dict[str, Any] = {"run_dir": run_dir, **args}
    if host is not None:
        full["serve.host"] = host
    if port is not None:
        full["serve.port"] = port
    p = plan(full)
    cfg = p.serve
    app = _build(p)
    if not ray.is_initialized():
        ray_address = address or os.environ.get("RAY_ADDRESS") or p.run.ray.address
        # no address: a Ray started here ("local"; None would join whatever cluster this
        # machine last ran `ray start` for)
        ray.init(
            address=ray_address or "local",
            num_cpus=None if ray_address else p.run.ray.num_cpus,
        )
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
    log.info("serving %s at %s%s", p.args.run_dir, url, route_prefix.rstrip("/") + "/v1")
    if blocking:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return url
