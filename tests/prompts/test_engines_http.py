"""The openai engine against local HTTP servers: a scripted one (retries) and vLLM's own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from selma_ray.config import OpenAIEngineConfig
from selma_ray.prompts.engines.openai_engine import EndpointError, OpenAIEngine
from selma_ray.prompts.fewshot import build_request, parse_response
from selma_ray.skills import BUILTIN_SKILLS


class _Scripted(BaseHTTPRequestHandler):
    script: list[int] = []
    seen: list[dict] = []
    headers_seen: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, **body})
        type(self).headers_seen.append(dict(self.headers))
        status = type(self).script.pop(0) if type(self).script else 200
        if status != 200:
            self.send_response(status)
            self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(b'{"error": "busy"}')
            return
        if self.path.endswith("/chat/completions"):
            choice = {
                "message": {"content": "4. A red kite above a windy beach."},
                "finish_reason": "stop",
            }
        else:
            choice = {
                "text": " A red kite above a windy beach.\n5. A blue",
                "finish_reason": "length",
            }
        payload = json.dumps({"choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted_server():
    _Scripted.script, _Scripted.seen, _Scripted.headers_seen = [], [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _request(seed=1):
    return build_request(BUILTIN_SKILLS["coco"], ["a", "b", "c"], n_items=2, seed=seed)


def test_retries_on_429_and_5xx_then_succeeds(scripted_server, monkeypatch):
    monkeypatch.setenv("SELMA_TEST_KEY", "sekret")
    _Scripted.script = [429, 503, 200]
    cfg = OpenAIEngineConfig(base_url=scripted_server, backoff_s=0.01, api_key_env="SELMA_TEST_KEY")
    engine = OpenAIEngine("some-model", cfg)
    (out,) = engine.generate([_request()])
    assert out.text == "4. A red kite above a windy beach." and not out.truncated
    assert len(_Scripted.seen) == 3
    body = _Scripted.seen[-1]
    assert (
        body["model"] == "some-model"
        and body["seed"] == 1
        and body["messages"][0]["role"] == "system"
    )
    assert _Scripted.headers_seen[-1]["Authorization"] == "Bearer sekret"


def test_completions_api_prefixes_number_and_flags_truncation(scripted_server):
    cfg = OpenAIEngineConfig(base_url=scripted_server, api="completions")
    (out,) = OpenAIEngine("m", cfg).generate([_request()])
    assert _Scripted.seen[-1]["path"] == "/v1/completions"
    assert out.truncated
    parsed = parse_response(out.text, word_limit=30, truncated=out.truncated)
    assert parsed.items == ["A red kite above a windy beach."]
    assert parsed.dropped == {"truncated": 1}


def test_gives_up_after_retries_and_names_the_endpoint(scripted_server):
    _Scripted.script = [500] * 10
    cfg = OpenAIEngineConfig(base_url=scripted_server, max_retries=2, backoff_s=0.0)
    with pytest.raises(EndpointError, match="failed 3 times"):
        OpenAIEngine("m", cfg).generate([_request()])
    assert len(_Scripted.seen) == 3


def test_client_errors_are_not_retried(scripted_server):
    _Scripted.script = [400]
    cfg = OpenAIEngineConfig(base_url=scripted_server, backoff_s=0.0)
    with pytest.raises(EndpointError, match="refused the request"):
        OpenAIEngine("m", cfg).generate([_request()])
    assert len(_Scripted.seen) == 1


def test_unreachable_endpoint_fails_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = OpenAIEngineConfig(base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff_s=0.0)
    with pytest.raises(EndpointError, match="base_url"):
        OpenAIEngine("m", cfg).generate([_request()])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(require_vllm, tiny_models, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", tiny_models["llm"], "--served-model-name", "tiny-llm",
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "512",
    ]  # fmt: skip
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"vLLM server did not start in 240 s:\n{log.read_text()[-3000:]}")
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_openai_engine_against_real_vllm_server(vllm_server, api):
    cfg = OpenAIEngineConfig(base_url=vllm_server, api=api, max_concurrency=2)
    engine = OpenAIEngine("tiny-llm", cfg)
    reqs = [
        build_request(BUILTIN_SKILLS["coco"], ["a", "b", "c"], n_items=3, seed=s, max_tokens=24)
        for s in (1, 2, 3)
    ]
    first = engine.generate(reqs)
    again = engine.generate(reqs)
    assert len(first) == 3
    # the tiny model writes noise, but the plumbing is real: texts come back, seeded sampling
    # reproduces them, and 24-token answers from a random model hit the length limit
    assert all(c.text for c in first)
    assert [c.text for c in first] == [c.text for c in again]
    if api == "completions":
        assert all(c.text.startswith("4.") for c in first)
    engine.close()
