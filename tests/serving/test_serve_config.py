"""serve_config.yaml at the repo root: valid for Serve's own schema, and it serves."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _config() -> dict:
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def test_serve_config_matches_serves_schema():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.parse_obj(_config())
    (app,) = schema.applications
    assert app.import_path == "selma_ray.distributed.serve:build_app"
    assert schema.http_options.host == "127.0.0.1"
    assert "run_dir" in app.args


def test_args_in_serve_config_are_accepted_by_the_builder(served_run_dir):
    from selma_ray.config import ServeConfig
    from selma_ray.serving.args import ServeArgs

    args = {**_config()["applications"][0]["args"], "run_dir": served_run_dir["path"]}
    parsed = ServeArgs.parse(args)
    assert parsed.run_dir == served_run_dir["path"]
    pool = parsed.serve_config(ServeConfig()).pool
    assert (pool.max_size, pool.gpus) == (1, 0.0)


@pytest.mark.slow
def test_serves_from_serve_config(ray_module, served_run_dir):
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from selma_ray.distributed.serve import build_app

    schema = ServeDeploySchema.parse_obj(_config())
    (app,) = schema.applications
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": schema.http_options.host, "port": port})
    try:
        args = {
            **app.args,
            "run_dir": served_run_dir["path"],
            "torch_threads": 1,
            "serve.pool.cpus": 1,
        }
        serve.run(build_app(args), name=app.name, route_prefix=app.route_prefix)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz", timeout=30).json() == {"status": "ok"}
        ids = {m["id"] for m in httpx.get(f"{base}/v1/models", timeout=30).json()["data"]}
        assert {"base", "merged"} <= ids
    finally:
        serve.shutdown()
