"""The ``openai`` prompt engine: any OpenAI-compatible HTTP endpoint (chat or completions).

Requests go out with bounded concurrency; 429, 5xx, timeouts and dropped connections are
retried with exponential backoff (honouring ``Retry-After``). Other HTTP errors fail at once
with the endpoint's own message, since retrying a bad request cannot help.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from selma_ray.config import OpenAIEngineConfig
from selma_ray.prompts.engines.base import Completion, GenerationRequest, Question

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class EndpointError(RuntimeError):
    """The endpoint refused a request or kept failing after all retries."""


class OpenAIEngine:
    name = "openai"

    def __init__(self, model: str, cfg: OpenAIEngineConfig) -> None:
        self.model = model
        self.cfg = cfg
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=cfg.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_s),
            limits=httpx.Limits(max_connections=cfg.max_concurrency),
        )

    def _payload(self, req: GenerationRequest) -> tuple[str, dict[str, Any]]:
        common = {
            "model": self.model,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": req.max_tokens,
            "seed": req.seed,
        }
        if self.cfg.api == "chat":
            return "/chat/completions", {**common, "messages": req.messages}
        return "/completions", {**common, "prompt": req.prompt}

    def _one(self, req: GenerationRequest) -> Completion:
        path, payload = self._payload(req)
        delay = self.cfg.backoff_s
        last_error = ""
        for attempt in range(self.cfg.max_retries + 1):
            try:
                resp = self._client.post(path, json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last_error = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code == 200:
                    return self._completion(resp.json(), req)
                last_error = f"HTTP {resp.status_code}: {resp.text[:300]}"
                if resp.status_code not in RETRYABLE_STATUS:
                    msg = f"{self.cfg.base_url}{path} refused the request ({last_error})"
                    raise EndpointError(msg)
                retry_after = resp.headers.get("retry-after")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = max(delay, float(retry_after))
            if attempt < self.cfg.max_retries:
                time.sleep(delay)
                delay *= 2
        msg = (
            f"{self.cfg.base_url}{path} failed {self.cfg.max_retries + 1} times (last: "
            f"{last_error}); check prompts.openai.base_url and that the server is up"
        )
        raise EndpointError(msg)

    def _completion(self, body: dict[str, Any], req: GenerationRequest) -> Completion:
        try:
            choice = body["choices"][0]
            if self.cfg.api == "chat":
                text = choice["message"]["content"] or ""
            else:
                text = f"{req.start_index}." + (choice.get("text") or "")
        except (KeyError, IndexError, TypeError) as e:
            msg = f"{self.cfg.base_url}: response has no choices[0] text ({str(body)[:200]})"
            raise EndpointError(msg) from e
        return Completion(text, truncated=choice.get("finish_reason") == "length")

    def generate(self, requests: list[GenerationRequest]) -> list[str | Completion]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.cfg.max_concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))

    def questions_for(self, prompt: str) -> list[Question] | None:
        return None

    def close(self) -> None:
        self._client.close()
