"""The HTTP app without Ray: FastAPI in process over a fake backend, and over the real pipeline.

Routes, auth, validation, the 503 / 504 / 500 mapping and the JSON errors all live in
``selma_ray.serving.app``; nothing here starts Ray.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from selma_ray.serving.api import Defaults, GenerationJob, Limits, token_digest
from selma_ray.serving.app import (
    MAX_BODY_BYTES,
    AppSettings,
    BackendOverloaded,
    BackendUnavailable,
    create_app,
)

TOKEN = "app-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VARIANTS = ("base", "merged", "countbench")
GEN = "/v1/images/generations"


class FakeBackend:
    """Answers each job with one fake PNG per seed, or raises / stalls as told."""

    def __init__(self) -> None:
        self.jobs: list[GenerationJob] = []
        self.error: Exception | None = None
        self.stall_s = 0.0
        self.cancelled = False

    async def generate(self, job: GenerationJob) -> list[bytes]:
        self.jobs.append(job)
        try:
            await asyncio.sleep(self.stall_s)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        return [f"png:{job.variant}:{seed}".encode() for seed in job.seeds]


def settings(**kw) -> AppSettings:
    values = {
        "variants": VARIANTS,
        "default_variant": "merged",
        "kinds": {"base": "base", "merged": "merged", "countbench": "expert"},
        "limits": Limits(max_n=2, max_size=128, max_steps=10),
        "defaults": Defaults(width=64, height=64, steps=4, guidance_scale=5.0),
        "request_timeout_s": 5.0,
        "auth_digest": token_digest(TOKEN),
    }
    return AppSettings(**{**values, **kw})


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def client(backend):
    with TestClient(create_app(backend.generate, settings())) as c:
        yield c


def error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_generation_request_reaches_the_backend(client, backend):
    r = client.post(
        GEN, json={"prompt": "a cat", "model": "countbench", "n": 2, "seed": 7}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["seed"] for d in data] == [7, 8]
    assert [base64.b64decode(d["b64_json"]) for d in data] == [
        b"png:countbench:7",
        b"png:countbench:8",
    ]
    assert isinstance(r.json()["created"], int)
    (job,) = backend.jobs
    assert job == GenerationJob(
        variant="countbench",
        prompt="a cat",
        n=2,
        width=64,
        height=64,
        seed=7,
        num_inference_steps=4,
        guidance_scale=5.0,
    )
    # no model: the default variant
    r = client.post(GEN, json={"prompt": "x", "seed": 1}, headers=AUTH)
    assert base64.b64decode(r.json()["data"][0]["b64_json"]) == b"png:merged:1"


def test_models_and_health(client):
    r = client.get("/v1/models", headers=AUTH)
    assert r.status_code == 200 and r.json()["object"] == "list"
    assert [(m["id"], m["kind"]) for m in r.json()["data"]] == [
        ("base", "base"),
        ("merged", "merged"),
        ("countbench", "expert"),
    ]
    assert client.get("/v1/models/countbench", headers=AUTH).json()["id"] == "countbench"
    assert (
        error(client.get("/v1/models/%2e%2e%2fetc%2fpasswd", headers=AUTH), 404)["param"] == "model"
    )
    assert client.get("/healthz").json() == {"status": "ok"}  # no auth: for probes


def test_validation_errors_are_400_json(client, backend):
    for body, param in (
        ({"prompt": "x", "n": 3}, "n"),  # over max_n
        ({"prompt": "x", "size": "256x256"}, "size"),  # over max_size
        ({"prompt": "x", "num_inference_steps": 11}, "num_inference_steps"),
        ({"prompt": "x", "bogus": 1}, "bogus"),
        ({"n": 1}, "prompt"),
    ):
        assert error(client.post(GEN, json=body, headers=AUTH), 400)["param"] == param
    assert error(client.post(GEN, content=b"{nope", headers=AUTH), 400)["code"] == "invalid_json"
    assert error(client.post(GEN, json=["x"], headers=AUTH), 400)["code"] == "invalid_json"
    body = error(client.post(GEN, json={"prompt": "x", "model": "nope"}, headers=AUTH), 404)
    assert body["code"] == "model_not_found"
    big = b'{"prompt": "' + b"x" * MAX_BODY_BYTES + b'"}'
    assert error(client.post(GEN, content=big, headers=AUTH), 413)["code"] == "body_too_large"
    assert error(client.get("/v2/whatever", headers=AUTH), 404)["type"] == "not_found_error"
    assert backend.jobs == []  # nothing invalid reached the backend


def test_auth_is_checked_on_every_route_but_health(client, backend):
    for r in (
        client.post(GEN, json={"prompt": "x"}),
        client.post(GEN, json={"prompt": "x"}, headers={"Authorization": "Bearer wrong"}),
        client.post(GEN, json={"prompt": "x"}, headers={"Authorization": TOKEN}),
        client.get("/v1/models"),
        client.get("/v1/models/base"),
    ):
        body = error(r, 401)
        assert body["type"] == "authentication_error" and body["code"] == "invalid_api_key"
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert backend.jobs == []
    open_app = create_app(backend.generate, settings(auth_digest=None))
    with TestClient(open_app) as c:
        assert c.post(GEN, json={"prompt": "x"}).status_code == 200


def test_full_queue_is_503_json_with_retry_after(client, backend):
    backend.error = BackendOverloaded("queue full")
    r = client.post(GEN, json={"prompt": "x"}, headers=AUTH)
    body = error(r, 503)
    assert body["code"] == "overloaded" and body["type"] == "server_error"
    assert "serve.max_queued_requests" in body["message"]
    assert r.headers["Retry-After"] == "1"
    backend.error = BackendUnavailable("replica died")
    r = client.post(GEN, json={"prompt": "x"}, headers=AUTH)
    assert error(r, 503)["code"] == "unavailable" and r.headers["Retry-After"] == "1"
    backend.error = RuntimeError("/secret/path")
    body = error(client.post(GEN, json={"prompt": "x"}, headers=AUTH), 500)
    assert body["code"] == "internal_error" and "/secret/path" not in body["message"]
    assert "RuntimeError" in body["message"]


def test_slow_backend_is_504_and_cancelled(backend):
    backend.stall_s = 30.0
    with TestClient(create_app(backend.generate, settings(request_timeout_s=0.2))) as c:
        body = error(c.post(GEN, json={"prompt": "x"}, headers=AUTH), 504)
    assert body["code"] == "timeout" and "serve.request_timeout_s" in body["message"]
    assert backend.cancelled


def test_serving_modules_do_not_import_ray():
    code = (
        "import sys\n"
        "import selma_ray.serving.api, selma_ray.serving.app, selma_ray.serving.args\n"
        "import selma_ray.serving.model\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', "
        "'selma_ray.distributed')))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_app_over_the_real_pipeline_in_process(served_run_dir):
    """resolve() + PipelineWorker + create_app: the same PNGs as the pipeline, no Ray."""
    import torch

    from selma_ray.serving.args import resolve
    from selma_ray.serving.model import PipelineWorker, VariantPipeline

    torch.set_num_threads(1)
    plan = resolve({"run_dir": served_run_dir["path"], "serve.auth_token_env": ""})
    assert plan.app.variants == ("base", "merged", "countbench", "whoops")
    assert plan.app.auth_digest is None
    engine = VariantPipeline(plan.spec, device="cpu", torch_threads=1)
    worker = PipelineWorker(engine)
    body = {"prompt": "two red balls", "model": "whoops", "seed": 3, "num_inference_steps": 2}
    try:
        with TestClient(create_app(worker.generate, plan.app)) as c:
            r = c.post(GEN, json={**body, "size": "64x64"})
    finally:
        worker.close()
    assert r.status_code == 200, r.text
    png = base64.b64decode(r.json()["data"][0]["b64_json"])
    job = GenerationJob(
        variant="whoops",
        prompt="two red balls",
        n=1,
        width=64,
        height=64,
        seed=3,
        num_inference_steps=2,
        guidance_scale=plan.spec.defaults.guidance_scale,
    )
    assert png.startswith(b"\x89PNG") and [png] == engine.generate(job)


def test_resolve_passes_serve_overrides_to_the_replicas_model(served_run_dir, tmp_path):
    """``serve.*`` build arguments reach the ModelSpec the replicas load (they were read from
    the run's saved config alone), and are checked against the run's other sections."""
    from selma_ray.config import ConfigError
    from selma_ray.serving.args import resolve

    base = {"run_dir": served_run_dir["path"], "serve.auth_token_env": ""}
    plain = resolve(base)
    assert (plain.spec.compile, plain.spec.fuse_qkv, plain.spec.channels_last) == (
        False,
        False,
        False,
    )
    plan = resolve(
        {**base, "serve.compile": True, "serve.fuse_qkv": True, "serve.channels_last": True}
    )
    assert (plan.spec.compile, plan.spec.fuse_qkv, plan.spec.channels_last) == (True, True, True)
    assert plan.spec.hotswap  # follows serve.compile when serve.lora_hotswap is unset
    assert plan.run.serve.model_dump() == plan.serve.model_dump()
    assert plan.spec.variants == plain.spec.variants
    # a run drawn with the default attention processor: its replicas cannot fuse QKV
    import shutil

    import yaml

    from selma_ray import layout

    run = tmp_path / "run"
    shutil.copytree(served_run_dir["path"], run)
    config = run.joinpath(*layout.config())
    saved = yaml.safe_load(config.read_text())
    saved.setdefault("images", {})["attention"] = "default"
    config.write_text(yaml.safe_dump(saved))
    other = {"run_dir": str(run), "serve.auth_token_env": ""}
    assert resolve(other).run.images.attention == "default"
    with pytest.raises(ConfigError, match="serve.fuse_qkv needs images.attention: sdpa"):
        resolve({**other, "serve.fuse_qkv": True})
