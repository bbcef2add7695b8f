"""Serving: request rules and builder args, the multi-adapter pipeline, and the live Serve app.

The ``slow`` tests share ONE Serve app (module-scoped fixture) on 127.0.0.1 and a free port, with
a bearer token and small ``max_ongoing_requests`` / ``max_queued_requests`` so a burst overloads
it; Serve is shut down at the end of the module.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from selma_ray.serving.api import (
    APIError,
    Defaults,
    GenerationJob,
    Limits,
    check_bearer,
    models_body,
    parse_generation_request,
    parse_size,
    token_digest,
)

VARIANTS = ["base", "merged", "countbench", "whoops"]
LIMITS = Limits(max_n=4, max_size=256, max_steps=20)
TOKEN_ENV = "SELMA_TEST_SERVE_TOKEN"
TOKEN = "test-token-0123456789abcdef"


def parse(body, **kw):
    kw.setdefault("variants", VARIANTS)
    kw.setdefault("limits", LIMITS)
    kw.setdefault("default_variant", "merged")
    return parse_generation_request(body, **kw)


def api_error(body, **kw) -> APIError:
    with pytest.raises(APIError) as info:
        parse(body, **kw)
    return info.value


# --------------------------------------------------------------------------- request rules


def test_valid_request_gets_defaults_and_consecutive_seeds():
    job = parse(
        {"prompt": "a cat", "n": 3, "seed": 10},
        defaults=Defaults(width=64, height=64, steps=4, guidance_scale=5.0),
    )
    assert job.variant == "merged"  # default_variant
    assert (job.width, job.height, job.num_inference_steps, job.guidance_scale) == (64, 64, 4, 5.0)
    assert job.seeds == (10, 11, 12)
    assert GenerationJob.from_dict(job.to_dict()) == job
    full = parse(
        {
            "prompt": "x",
            "model": "whoops",
            "size": "128x64",
            "num_inference_steps": 20,
            "guidance_scale": 0,
            "negative_prompt": "blur",
            "response_format": "b64_json",
            "user": "u1",
        }
    )
    assert (full.variant, full.width, full.height) == ("whoops", 128, 64)
    assert full.num_inference_steps == 20
    assert full.negative_prompt == "blur" and full.guidance_scale == 0.0
    assert 0 <= parse({"prompt": "x"}, random_seed=lambda: 5).seed == 5
    # null is the default, as OpenAI's API reads it
    nulls = parse({"prompt": "x", "n": None, "response_format": None, "seed": 10})
    assert nulls.n == 1 and nulls.seeds == (10,)


@pytest.mark.parametrize("model", ["nope", "../etc/passwd", "/etc/passwd", "merged/../base", ""])
def test_unknown_models_are_404_without_touching_files(model):
    err = api_error({"prompt": "x", "model": model})
    assert err.status == 404 and err.param == "model" and err.code == "model_not_found"
    assert err.body()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 5}, "n"),
        ({"prompt": "x", "n": "2"}, "n"),
        ({"prompt": "x", "n": True}, "n"),
        ({"prompt": "x", "size": "64"}, "size"),
        ({"prompt": "x", "size": "512x512"}, "size"),  # over max_size 256
        ({"prompt": "x", "size": "60x64"}, "size"),  # not a multiple of 8
        ({"prompt": "x", "size": "0x64"}, "size"),
        ({"prompt": "x", "num_inference_steps": 21}, "num_inference_steps"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale"),
        ({"prompt": "x", "guidance_scale": 10**400}, "guidance_scale"),  # no float holds it
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "response_format": "url"}, "response_format"),
        ({"prompt": "x", "output_format": "jpeg"}, "output_format"),
        ({"prompt": "x", "stream": True}, "stream"),
        ({"prompt": "x", "bogus": 1}, "bogus"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 5000}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"n": 1}, "prompt"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(body, param):
    err = api_error(body)
    assert err.status == 400
    assert err.param == param
    assert err.message.startswith(param)
    shape = err.body()["error"]
    assert set(shape) == {"message", "type", "param", "code"}


def test_over_limit_messages_say_the_limit_and_setting():
    assert "serve.max_n" in api_error({"prompt": "x", "n": 9}).message
    assert "256" in api_error({"prompt": "x", "size": "512x512"}).message
    url = api_error({"prompt": "x", "response_format": "url"}).message
    assert "b64_json" in url
    assert "allowed fields" in api_error({"prompt": "x", "bogus": 1}).message
    assert api_error(["not", "a", "dict"]).status == 400


def test_parse_size():
    assert parse_size("512x256", 1024) == (512, 256)
    assert parse_size(" 64X64 ", 64) == (64, 64)
    with pytest.raises(APIError, match="multiple of 8"):
        parse_size("65x64", 1024)


def test_bearer_check_is_exact():
    digest = token_digest(TOKEN)
    check_bearer(f"Bearer {TOKEN}", digest)
    check_bearer(f"bearer {TOKEN}", digest)
    check_bearer(None, None)  # auth off
    for header in (None, "", TOKEN, f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer "):
        with pytest.raises(APIError) as info:
            check_bearer(header, digest)
        assert info.value.status == 401 and info.value.headers["WWW-Authenticate"] == "Bearer"


def test_models_body_is_openai_list():
    body = models_body(VARIANTS, 123, {"base": "base"})
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == VARIANTS
    assert body["data"][0] == {
        "id": "base",
        "object": "model",
        "created": 123,
        "owned_by": "selma-ray",
        "kind": "base",
    }


# --------------------------------------------------------------------------- builder args


def test_serve_args_reject_unknown_and_invalid(served_run_dir):
    from selma_ray.config import ConfigError, ServeConfig
    from selma_ray.distributed.serve import build_app
    from selma_ray.serving.args import ServeArgs

    allowed = r"max_batch: unknown argument; allowed: run_dir, serve, device, dtype, torch_threads"
    with pytest.raises(ConfigError, match=allowed):
        ServeArgs.parse({"run_dir": "x", "max_batch": 3})
    with pytest.raises(ConfigError, match="run_dir: required"):
        ServeArgs.parse({})
    with pytest.raises(ConfigError, match=r"serve\.max_n: .*integer"):
        ServeArgs.parse({"run_dir": "x", "serve": {"max_n": "many"}})
    with pytest.raises(ConfigError, match=r"serve\.max_batch: unknown key; allowed here: host"):
        ServeArgs.parse({"run_dir": "x", "serve.max_batch": 3})
    # the old flat arguments are refused, naming their new spelling
    for old, new in (
        ("max_n", "serve.max_n"),
        ("max_replicas", "serve.pool.max_size"),
        ("min_replicas", "serve.pool.min_size"),
        ("num_gpus", "serve.pool.gpus"),
        ("num_cpus", "serve.pool.cpus"),
    ):
        with pytest.raises(ConfigError, match=rf"{old}: unknown argument; use {new}"):
            ServeArgs.parse({"run_dir": "x", old: 1})
    with pytest.raises(ConfigError, match=r"serve\.min_replicas: renamed; use serve\.pool\.min_"):
        ServeArgs.parse({"run_dir": "x", "serve": {"min_replicas": 1}})
    # string values, as `serve run ... serve.max_n=8` passes them, are coerced; dotted keys and
    # a nested mapping are the same thing
    parsed = ServeArgs.parse(
        {"run_dir": "x", "serve.max_n": "8", "serve": {"pool": {"gpus": "1"}}, "torch_threads": "2"}
    )
    assert parsed.serve == {"max_n": 8, "pool": {"gpus": 1.0}} and parsed.torch_threads == 2
    merged = parsed.serve_config(ServeConfig(max_steps=7, pool={"max_size": 3}))
    assert (merged.max_n, merged.max_steps) == (8, 7)
    assert (merged.pool.gpus, merged.pool.max_size) == (1.0, 3)
    assert ServeArgs.parse({"run_dir": "x", "serve.auth_token_env": ""}).serve == {
        "auth_token_env": None
    }
    with pytest.raises(ConfigError, match=r"serve\.max_n"):
        build_app({"run_dir": served_run_dir["path"], "serve": {"max_n": 0}})
    with pytest.raises(ConfigError, match=r"serve\.pool: min_size \(3\) must be <= max_size"):
        build_app({"run_dir": served_run_dir["path"], "serve": {"pool": {"min_size": 3}}})
    with pytest.raises(ConfigError, match="config.yaml does not exist"):
        build_app({"run_dir": served_run_dir["path"] + "/nowhere"})
    with pytest.raises(ConfigError, match="memory"):
        build_app({"run_dir": "memory://selma-serve-test"})
    os.environ.pop("SELMA_TEST_UNSET_TOKEN", None)
    with pytest.raises(ConfigError, match="SELMA_TEST_UNSET_TOKEN"):
        build_app(
            {"run_dir": served_run_dir["path"], "serve.auth_token_env": "SELMA_TEST_UNSET_TOKEN"}
        )


def test_deployment_options_follow_serve_config():
    from selma_ray.config import ActorPool, ServeConfig
    from selma_ray.distributed.serve import deployment_options

    gpu = ActorPool(gpus=1)
    fixed, ingress = deployment_options(ServeConfig(max_ongoing_requests=3, pool=gpu))
    assert fixed["num_replicas"] == 1 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] == 3 and fixed["max_queued_requests"] == 16
    assert fixed["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert ingress["ray_actor_options"] == {"num_cpus": 0}
    assert ingress["max_ongoing_requests"] >= 3 + 16
    two, _ = deployment_options(ServeConfig(pool=ActorPool(min_size=2, max_size=2, cpus=0.5)))
    assert two["num_replicas"] == 2
    assert two["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    pinned, _ = deployment_options(ServeConfig(pool=ActorPool(gpus=1, resources={"l40s": 1})))
    assert pinned["ray_actor_options"] == {
        "num_cpus": 1.0,
        "num_gpus": 1.0,
        "resources": {"l40s": 1.0},
    }
    auto, _ = deployment_options(
        ServeConfig(pool=ActorPool(min_size=0, max_size=4), target_ongoing_requests=1.5)
    )
    assert auto["autoscaling_config"] == {
        "min_replicas": 0,
        "initial_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 1.5,
    }


def test_await_model_maps_timeout_and_overload():
    """Ray's errors become the app's (distributed.serve.await_model), the app maps them."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError

    from selma_ray.distributed.serve import await_model as model_call
    from selma_ray.serving.app import await_generation

    async def await_model(response, timeout_s: float) -> list[bytes]:
        return await await_generation(model_call(response), timeout_s)

    class FakeResponse:
        def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
            self.delay, self.error, self.cancelled = delay, error, False

        def __await__(self):
            return self._run().__await__()

        async def _run(self):
            await asyncio.sleep(self.delay)
            if self.error is not None:
                raise self.error
            return [b"png"]

        def cancel(self) -> None:
            self.cancelled = True

    assert asyncio.run(await_model(FakeResponse(), 1.0)) == [b"png"]
    slow = FakeResponse(delay=5.0)
    t0 = time.perf_counter()
    with pytest.raises(APIError) as info:
        asyncio.run(await_model(slow, 0.05))
    assert info.value.status == 504 and slow.cancelled and time.perf_counter() - t0 < 2
    assert "serve.request_timeout_s" in info.value.message
    with pytest.raises(APIError) as info:
        asyncio.run(await_model(FakeResponse(error=BackPressureError(5, 4)), 1.0))
    assert info.value.status == 503 and info.value.headers == {"Retry-After": "1"}
    assert info.value.code == "overloaded"
    with pytest.raises(APIError) as info:
        asyncio.run(await_model(FakeResponse(error=RayActorError()), 1.0))
    assert info.value.status == 503 and info.value.headers == {"Retry-After": "1"}
    assert info.value.code == "unavailable"
    with pytest.raises(APIError) as info:
        asyncio.run(await_model(FakeResponse(error=RuntimeError("/secret/path")), 1.0))
    assert info.value.status == 500 and "/secret/path" not in info.value.message


# --------------------------------------------------------------------------- run dirs


def test_discover_variants(served_run_dir):
    spec = served_run_dir["spec"]
    assert spec.variants == ("base", "merged", "countbench", "whoops")
    assert spec.default_variant == "merged"
    assert spec.base_model == "tiny:sd"
    assert all(p.endswith(".safetensors") for p in spec.adapters.values())


def test_pickle_only_adapters_and_bad_names_are_refused(served_run_dir, tmp_path):
    import shutil

    from selma_ray.serving.model import discover_variants

    run = tmp_path / "run"
    shutil.copytree(served_run_dir["path"], run)
    evil = run / "experts" / "evil"
    evil.mkdir()
    (evil / "pytorch_lora_weights.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match=r"pickle.*safetensors"):
        discover_variants(str(run))
    shutil.rmtree(evil)
    (run / "experts" / "unfinished").mkdir()  # no weights yet: skipped
    assert "unfinished" not in discover_variants(str(run)).variants
    (run / "experts" / "merged").mkdir()
    with pytest.raises(ValueError, match="cannot be a model name"):
        discover_variants(str(run))


def test_variant_pipeline_isolates_concurrent_variants(served_run_dir):
    """Threads asking for different variants at once get exactly their sequential images."""
    import torch

    from selma_ray.serving.model import VariantPipeline

    torch.set_num_threads(1)
    engine = VariantPipeline(served_run_dir["spec"], device="cpu", torch_threads=1)

    def job(variant: str) -> GenerationJob:
        return GenerationJob(
            variant=variant,
            prompt="two red balls",
            n=1,
            width=64,
            height=64,
            seed=3,
            num_inference_steps=2,
            guidance_scale=5.0,
        )

    sequential = {v: engine.generate(job(v)) for v in VARIANTS}
    assert len({s[0] for s in sequential.values()}) == len(VARIANTS)  # all differ
    order = VARIANTS * 2
    with ThreadPoolExecutor(len(order)) as pool:
        results = list(pool.map(lambda v: engine.generate(job(v)), order))
    for variant, images in zip(order, results, strict=True):
        assert images == sequential[variant], variant
    assert engine.stats["switches"] >= len(VARIANTS)


# --------------------------------------------------------------------------- the live app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_module, served_run_dir):
    from ray import serve

    from selma_ray.distributed.serve import build_app

    port = _free_port()
    os.environ[TOKEN_ENV] = TOKEN
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(
        {
            "run_dir": served_run_dir["path"],
            "serve": {
                "auth_token_env": TOKEN_ENV,
                "max_ongoing_requests": 2,
                "max_queued_requests": 4,
                "max_size": 256,
                "max_steps": 20,
                # the burst below queues its accepted requests behind one pipeline lock: on a
                # slow 2-core CI box each took 7.8 s and the ninth passed 60 s (a 504)
                "request_timeout_s": 240,
                "pool": {"cpus": 1},
            },
            "torch_threads": 1,
        }
    )
    serve.run(app, name="selma-test", route_prefix="/")
    try:
        yield {"url": f"http://127.0.0.1:{port}", "port": port}
    finally:
        serve.shutdown()
        os.environ.pop(TOKEN_ENV, None)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def _generate(server, variant: str, seed: int = 7, n: int = 1, steps: int = 2) -> list[bytes]:
    import httpx

    body = {
        "prompt": "three blue cubes",
        "model": variant,
        "n": n,
        "seed": seed,
        "num_inference_steps": steps,
        "size": "64x64",
    }
    r = httpx.post(f"{server['url']}/v1/images/generations", json=body, headers=_auth(), timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["seed"] for d in data] == [seed + i for i in range(n)]
    return [base64.b64decode(d["b64_json"]) for d in data]


@pytest.mark.slow
def test_openai_client_generates_png(server):
    from openai import OpenAI
    from PIL import Image

    client = OpenAI(base_url=f"{server['url']}/v1", api_key=TOKEN, max_retries=0)
    result = client.images.generate(
        model="merged",
        prompt="a red cube left of a dog",
        response_format="b64_json",
        size="64x64",
        extra_body={"seed": 1, "num_inference_steps": 2},
    )
    assert isinstance(result.created, int)
    png = base64.b64decode(result.data[0].b64_json)
    assert png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    models = client.models.list()
    assert [m.id for m in models.data] == VARIANTS


@pytest.mark.slow
def test_models_and_health(server):
    import httpx

    r = httpx.get(f"{server['url']}/v1/models", headers=_auth())
    assert r.status_code == 200
    assert {m["id"] for m in r.json()["data"]} == {"base", "merged", "countbench", "whoops"}
    assert httpx.get(f"{server['url']}/v1/models/whoops", headers=_auth()).json()["id"] == "whoops"
    health = httpx.get(f"{server['url']}/healthz")  # no auth: for probes
    assert health.status_code == 200 and health.json()["status"] == "ok"


@pytest.mark.slow
def test_seeds_variants_and_switching_are_deterministic(server):
    first = {v: _generate(server, v, n=2) for v in ("base", "countbench", "merged")}
    assert _generate(server, "base", n=2) == first["base"]  # same seed -> same bytes
    assert first["base"][0] != first["base"][1]  # image i uses seed + i
    assert len({imgs[0] for imgs in first.values()}) == 3  # variants differ
    for variant in ("base", "countbench", "merged", "countbench", "base"):
        assert _generate(server, variant, n=2) == first[variant], variant


@pytest.mark.slow
def test_concurrent_variants_equal_sequential(server):
    sequential = {v: _generate(server, v, seed=21) for v in VARIANTS}
    barrier = threading.Barrier(len(VARIANTS))

    def run(variant: str) -> list[bytes]:
        barrier.wait()
        return _generate(server, variant, seed=21)

    with ThreadPoolExecutor(len(VARIANTS)) as pool:
        results = dict(zip(VARIANTS, pool.map(run, VARIANTS), strict=True))
    assert results == sequential


@pytest.mark.slow
def test_json_errors(server):
    import httpx

    url = server["url"]
    gen = f"{url}/v1/images/generations"

    def error(r: httpx.Response, status: int) -> dict:
        assert r.status_code == status, r.text
        body = r.json()["error"]
        assert set(body) == {"message", "type", "param", "code"}
        return body

    error(httpx.post(gen, json={"prompt": "x"}), 401)
    error(httpx.post(gen, json={"prompt": "x"}, headers={"Authorization": "Bearer wrong"}), 401)
    error(httpx.get(f"{url}/v1/models"), 401)
    for model in ("nope", "../etc/passwd", "..%2f..%2fetc%2fpasswd"):
        body = error(httpx.post(gen, json={"prompt": "x", "model": model}, headers=_auth()), 404)
        assert body["param"] == "model" and body["code"] == "model_not_found"
    error(httpx.get(f"{url}/v1/models/%2e%2e%2fetc%2fpasswd", headers=_auth()), 404)
    for body, param in (
        ({"prompt": "x", "n": 99}, "n"),
        ({"prompt": "x", "size": "1024x1024"}, "size"),
        ({"prompt": "x", "num_inference_steps": 500}, "num_inference_steps"),
        ({"prompt": "x", "response_format": "url"}, "response_format"),
    ):
        assert error(httpx.post(gen, json=body, headers=_auth()), 400)["param"] == param
    bad_json = httpx.post(gen, content=b"{nope", headers=_auth())
    assert error(bad_json, 400)["code"] == "invalid_json"
    error(httpx.get(f"{url}/v2/whatever", headers=_auth()), 404)


@pytest.mark.slow
def test_burst_is_bounded_and_server_recovers(server):
    import httpx

    async def burst() -> list[tuple[int, float, dict]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def one(i: int) -> tuple[int, float, dict]:
                t0 = time.perf_counter()
                body = {
                    "prompt": f"burst {i}",
                    "model": "base",
                    "seed": i,
                    # 2 steps: 200 requests still overload the 6 slots (2 running + 4 queued),
                    # while the accepted ones leave the 2 cores to the proxy answering 503s
                    "num_inference_steps": 2,
                    "size": "64x64",
                }
                r = await client.post(
                    f"{server['url']}/v1/images/generations", json=body, headers=_auth()
                )
                try:
                    body = r.json()
                except ValueError:  # Serve's own proxy answers overload in plain text
                    body = {"text": r.text}
                return r.status_code, time.perf_counter() - t0, body

            return await asyncio.gather(*(one(i) for i in range(200)))

    t0 = time.perf_counter()
    results = asyncio.run(burst())
    elapsed = time.perf_counter() - t0
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 1 and codes.count(503) >= 1, codes
    # a refusal never waits for the queue to drain: while a request is refused the queue is
    # full, so some accepted request finishes after it (a wall-clock bound instead fails on a
    # busy 2-core box, where the proxy itself waits for a core)
    last_accepted = max(s for c, s, _ in results if c == 200)
    for code, seconds, body in results:
        if code == 503:
            # ours is JSON; past the ingress's own limit Serve's proxy answers in plain text
            assert body.get("error", {}).get("code") == "overloaded" or "text" in body
            assert seconds < last_accepted, (seconds, last_accepted)
    assert elapsed < 90
    assert httpx.get(f"{server['url']}/healthz").status_code == 200
    assert _generate(server, "merged", seed=99)


@pytest.mark.slow
def test_app_answers_a_full_queue_with_its_own_json_503_then_recovers(server):
    """The model deployment takes 2 running + 4 queued requests per caller; a burst of 20 slow
    requests (20 steps at 128 px; well under the ingress's own
    capacity) overflows that queue: requests past it get the app's JSON 503 with Retry-After at
    once (never Serve's plain-text 503), and the server answers normally afterwards."""
    import httpx

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300) as client:
            body = {"prompt": "a slow one", "model": "base", "num_inference_steps": 20}
            return await asyncio.gather(
                *(
                    client.post(
                        f"{server['url']}/v1/images/generations",
                        json={**body, "seed": i, "size": "128x128"},
                        headers=_auth(),
                    )
                    for i in range(20)
                )
            )

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    # 2 running + 4 queued fit; how many more a slot freed up for depends on how fast the
    # accepted ones finish on this machine (7 and 11 of 14 were answered 200 in two runs)
    assert codes.count(200) >= 2 and codes.count(503) >= 1, codes
    for r in responses:
        if r.status_code == 503:
            assert r.headers["content-type"].startswith("application/json"), r.text
            assert r.json()["error"]["code"] == "overloaded", r.text
            assert int(r.headers["retry-after"]) >= 1
    assert httpx.get(f"{server['url']}/healthz").status_code == 200
    assert _generate(server, "base", seed=5)


def test_serve_run_dir_validates_before_starting_anything(tmp_path):
    from selma_ray.config import ConfigError
    from selma_ray.distributed.serve import serve_run_dir

    with pytest.raises(ConfigError, match="config.yaml does not exist"):
        serve_run_dir(str(tmp_path / "missing"), blocking=False)
    with pytest.raises(ConfigError, match="bogus: unknown argument"):
        serve_run_dir(str(tmp_path), blocking=False, bogus=1)
    with pytest.raises(ConfigError, match=r"serve\.port: .*less than or equal to 65535"):
        serve_run_dir(str(tmp_path), blocking=False, port=70000)


@pytest.mark.slow
def test_serve_run_dir_adds_an_app(server, served_run_dir):
    """The CLI helper on a running Serve: a second app under its own route prefix."""
    import httpx
    from ray import serve

    from selma_ray.distributed.serve import serve_run_dir

    url = serve_run_dir(
        served_run_dir["path"],
        port=server["port"],
        blocking=False,
        name="selma-cli",
        route_prefix="/cli",
        serve={"auth_token_env": ""},
        torch_threads=1,
        **{"serve.pool.cpus": "0.5"},  # as `selma-ray serve --arg serve.pool.cpus=0.5` passes it
    )
    assert url == f"http://127.0.0.1:{server['port']}"
    try:
        r = httpx.get(f"{url}/cli/v1/models")
        assert r.status_code == 200 and r.json()["data"][0]["id"] == "base"
    finally:
        serve.delete("selma-cli")
