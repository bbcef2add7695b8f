"""The HTTP contract of the images API: request validation, limits, auth and OpenAI-shaped bodies.

Pure Python (no Ray, no torch, no FastAPI), so every rule here is unit-tested without a server:

* :func:`parse_generation_request` turns the JSON body of ``POST /v1/images/generations`` into a
  :class:`GenerationJob` or raises :class:`APIError` (400 naming the field and the allowed range,
  404 for an unknown ``model``). Model names are only ever compared against the list of known
  variants: a name such as ``../etc/passwd`` is simply not in it, nothing touches a filesystem.
* :class:`Limits` (from :class:`~selma_ray.config.ServeConfig`) and :class:`Defaults` (from the
  run's image settings) bound and complete a request.
* :func:`check_bearer` compares a ``Authorization: Bearer`` header against the SHA-256 digest of
  the configured token in constant time (:func:`hmac.compare_digest`); the token itself never
  has to leave the process that read it from the environment.
* :func:`error_body`, :func:`models_body` and :func:`images_body` build OpenAI's JSON shapes:
  ``{"error": {"message", "type", "param", "code"}}``, ``{"object": "list", "data": [...]}`` and
  ``{"created", "data": [{"b64_json"}]}``.

Seeds: image ``i`` of a request is drawn from ``torch.Generator().manual_seed(seed + i)``; a request
without ``seed`` gets a random one, which is returned with each image (``data[i].seed``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

__all__ = [
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "APIError",
    "Defaults",
    "GenerationJob",
    "ImageGenerationRequest",
    "Limits",
    "check_bearer",
    "error_body",
    "images_body",
    "models_body",
    "parse_generation_request",
    "parse_size",
    "resolve_variant",
    "token_digest",
]

#: Longest accepted ``prompt`` / ``negative_prompt`` in characters.
MAX_PROMPT_CHARS = 4000
#: Largest accepted ``seed`` (``seed + n - 1`` must still fit torch's 64-bit generator seed).
MAX_SEED = 2**62
#: Largest accepted ``guidance_scale``.
MAX_GUIDANCE = 100.0
#: Pixel sizes must be multiples of this (the VAE downsamples by 8).
SIZE_MULTIPLE = 8

_SIZE_RE = re.compile(r"^\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*$")

ErrorType = Literal[
    "invalid_request_error", "authentication_error", "not_found_error", "server_error"
]


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status (no stack trace leaks)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: ErrorType = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --------------------------------------------------------------------------- limits and defaults


@dataclass(frozen=True)
class Limits:
    """Upper bounds of a request (``serve.max_n``, ``serve.max_size``, ``serve.max_steps``)."""

    max_n: int = 4
    max_size: int = 1024
    max_steps: int = 100

    @classmethod
    def from_config(cls, cfg: Any) -> Limits:
        """From a :class:`~selma_ray.config.ServeConfig` (or anything with the same fields)."""
        return cls(max_n=cfg.max_n, max_size=cfg.max_size, max_steps=cfg.max_steps)


@dataclass(frozen=True)
class Defaults:
    """What a request that leaves a field out gets (the run's ``images`` settings)."""

    width: int = 64
    height: int = 64
    steps: int = 4
    guidance_scale: float = 7.5
    negative_prompt: str = ""

    @classmethod
    def from_images_config(cls, images: Any, limits: Limits | None = None) -> Defaults:
        """From :class:`~selma_ray.config.ImagesConfig`, clipped to ``limits``."""
        size = int(images.resolution)
        steps = int(images.steps)
        if limits is not None:
            size = min(size, limits.max_size)
            steps = min(steps, limits.max_steps)
        size = max(SIZE_MULTIPLE, size - size % SIZE_MULTIPLE)
        return cls(
            width=size,
            height=size,
            steps=steps,
            guidance_scale=float(images.guidance_scale),
            negative_prompt=str(images.negative_prompt or ""),
        )


# --------------------------------------------------------------------------- request


class ImageGenerationRequest(BaseModel):
    """The JSON body of ``POST /v1/images/generations`` (types only; limits come later)."""

    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr
    model: StrictStr | None = None
    n: StrictInt | None = None  # null: the default, 1 (as OpenAI's API reads it)
    size: StrictStr | None = None
    response_format: StrictStr | None = None  # null: the default, b64_json
    # extensions (not in OpenAI's API)
    seed: StrictInt | None = None
    num_inference_steps: StrictInt | None = None
    guidance_scale: StrictFloat | StrictInt | None = None
    negative_prompt: StrictStr | None = None
    # OpenAI fields accepted for client compatibility
    user: StrictStr | None = Field(None, description="Ignored.")
    quality: StrictStr | None = Field(None, description="Ignored.")
    style: StrictStr | None = Field(None, description="Ignored.")
    output_format: StrictStr | None = Field(None, description="Only 'png'.")
    stream: StrictBool | None = Field(None, description="Only false.")


_ALLOWED_FIELDS = tuple(ImageGenerationRequest.model_fields)


@dataclass(frozen=True)
class GenerationJob:
    """A validated request, as the model deployment receives it (plain data, picklable)."""

    variant: str
    prompt: str
    n: int
    width: int
    height: int
    seed: int
    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str = ""
    seeds: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.seeds:
            object.__setattr__(self, "seeds", tuple(self.seed + i for i in range(self.n)))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seeds"] = list(self.seeds)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationJob:
        values = dict(data)
        values["seeds"] = tuple(values.get("seeds") or ())
        return cls(**values)


def parse_size(value: str, max_size: int, *, param: str = "size") -> tuple[int, int]:
    """``"WxH"`` -> ``(W, H)``; both multiples of 8 in ``[8, max_size]`` or an :class:`APIError`."""
    match = _SIZE_RE.match(value)
    if match is None:
        msg = f"{param}: {value[:40]!r} is not WIDTHxHEIGHT; give e.g. '512x512'"
        raise APIError(400, msg, param=param, code="invalid_value")
    width, height = int(match[1]), int(match[2])
    for name, pixels in (("width", width), ("height", height)):
        if pixels < SIZE_MULTIPLE or pixels > max_size or pixels % SIZE_MULTIPLE:
            msg = (
                f"{param}: {name} {pixels} is not allowed; use a multiple of {SIZE_MULTIPLE} "
                f"between {SIZE_MULTIPLE} and {max_size} (serve.max_size)"
            )
            raise APIError(400, msg, param=param, code="invalid_value")
    return width, height


def resolve_variant(name: str | None, variants: Sequence[str], default: str | None = None) -> str:
    """``name`` if it is one of ``variants`` (exact match only), else a 404 :class:`APIError`."""
    if name is None:
        if default is None:
            msg = f"model: required; one of {list(variants)}"
            raise APIError(400, msg, param="model", code="missing_required_parameter")
        return default
    if name not in frozenset(variants):
        shown = name if len(name) <= 80 else name[:77] + "..."
        msg = f"model {shown!r} does not exist; available models: {list(variants)} (GET /v1/models)"
        raise APIError(404, msg, param="model", code="model_not_found", type="not_found_error")
    return name


def _first_validation_error(error: ValidationError) -> APIError:
    err = error.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    if err["type"] == "extra_forbidden":
        msg = f"{loc}: unknown field; allowed fields: {', '.join(_ALLOWED_FIELDS)}"
        return APIError(400, msg, param=loc, code="unknown_parameter")
    if err["type"] == "missing":
        return APIError(400, f"{loc}: required", param=loc, code="missing_required_parameter")
    msg = f"{loc}: {err['msg']}"
    got = err.get("input")
    if isinstance(got, (str, int, float, bool)):
        msg += f" (got {str(got)[:40]!r})"
    return APIError(400, msg, param=loc, code="invalid_type")


def _bounded(param: str, value: int, low: int, high: int, setting: str) -> int:
    if value < low or value > high:
        msg = f"{param}: {value} is out of range; give {low} to {high}{setting}"
        raise APIError(400, msg, param=param, code="invalid_value")
    return value


def parse_generation_request(
    body: Any,
    *,
    variants: Sequence[str],
    limits: Limits,
    defaults: Defaults | None = None,
    default_variant: str | None = None,
    random_seed: Callable[[], int] | None = None,
) -> GenerationJob:
    """Validate a JSON body against the API and the limits; the first problem raises."""
    defaults = defaults or Defaults()
    if not isinstance(body, dict):
        msg = "the request body must be a JSON object with at least 'prompt'"
        raise APIError(400, msg, code="invalid_json")
    try:
        req = ImageGenerationRequest.model_validate(body)
    except ValidationError as e:
        raise _first_validation_error(e) from None
    variant = resolve_variant(req.model, variants, default_variant)
    if not req.prompt.strip():
        raise APIError(400, "prompt: must not be empty", param="prompt", code="invalid_value")
    for name, text in (("prompt", req.prompt), ("negative_prompt", req.negative_prompt or "")):
        if len(text) > MAX_PROMPT_CHARS:
            msg = f"{name}: {len(text)} characters; at most {MAX_PROMPT_CHARS} are accepted"
            raise APIError(400, msg, param=name, code="invalid_value")
    if req.response_format not in (None, "b64_json"):
        msg = (
            f"response_format: {req.response_format[:20]!r} is not supported; this server "
            "returns images inline only: use 'b64_json'"
        )
        raise APIError(400, msg, param="response_format", code="invalid_value")
    if req.output_format not in (None, "png"):
        msg = f"output_format: {req.output_format[:20]!r} is not supported; use 'png'"
        raise APIError(400, msg, param="output_format", code="invalid_value")
    if req.stream:
        msg = "stream: streaming is not supported; leave it out or set it to false"
        raise APIError(400, msg, param="stream", code="invalid_value")
    n = _bounded("n", 1 if req.n is None else req.n, 1, limits.max_n, " (serve.max_n)")
    if req.size is None:
        width, height = defaults.width, defaults.height
    else:
        width, height = parse_size(req.size, limits.max_size)
    steps = defaults.steps if req.num_inference_steps is None else req.num_inference_steps
    steps = _bounded("num_inference_steps", steps, 1, limits.max_steps, " (serve.max_steps)")
    guidance = defaults.guidance_scale if req.guidance_scale is None else req.guidance_scale
    if not 0 <= guidance <= MAX_GUIDANCE:  # compared before float(): an int may not fit one
        shown = str(guidance) if len(str(guidance)) <= 20 else str(guidance)[:17] + "..."
        msg = f"guidance_scale: {shown} is out of range; give 0 to {MAX_GUIDANCE:g}"
        raise APIError(400, msg, param="guidance_scale", code="invalid_value")
    guidance = float(guidance)
    if req.seed is None:
        seed = random_seed() if random_seed is not None else secrets.randbelow(2**31)
    else:
        seed = _bounded("seed", req.seed, 0, MAX_SEED, "")
    negative = defaults.negative_prompt if req.negative_prompt is None else req.negative_prompt
    return GenerationJob(
        variant=variant,
        prompt=req.prompt,
        n=n,
        width=width,
        height=height,
        seed=seed,
        num_inference_steps=steps,
        guidance_scale=guidance,
        negative_prompt=negative,
    )


# --------------------------------------------------------------------------- auth


def token_digest(token: str) -> str:
    """SHA-256 hex digest of a bearer token (what the server keeps instead of the token)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_bearer(authorization: str | None, expected_digest: str | None) -> None:
    """Raise a 401 :class:`APIError` unless ``authorization`` is ``Bearer <the token>``.

    ``expected_digest`` None means auth is off. The comparison is of SHA-256 digests (fixed
    length) with :func:`hmac.compare_digest`, so its time does not depend on the token given.
    """
    if expected_digest is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    ok = scheme.lower() == "bearer" and bool(given.strip())
    candidate = token_digest(given.strip()) if ok else "0" * 64
    if not (hmac.compare_digest(candidate, expected_digest) and ok):
        raise APIError(
            401,
            "missing or invalid API key: send the header 'Authorization: Bearer <token>' with the "
            "token held in the server's auth_token_env variable",
            code="invalid_api_key",
            type="authentication_error",
            headers={"WWW-Authenticate": "Bearer"},
        )


# --------------------------------------------------------------------------- responses


def models_body(
    variants: Sequence[str], created: int, kinds: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``GET /v1/models``: OpenAI's list format, one entry per served variant."""
    kinds = kinds or {}
    return {
        "object": "list",
        "data": [model_entry(v, created, kinds.get(v)) for v in variants],
    }


def model_entry(variant: str, created: int, kind: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": variant,
        "object": "model",
        "created": created,
        "owned_by": "selma-ray",
    }
    if kind is not None:
        entry["kind"] = kind
    return entry


def images_body(images: Sequence[bytes], seeds: Sequence[int], created: int) -> dict[str, Any]:
    """``POST /v1/images/generations`` response: base64 PNGs, each with its seed."""
    return {
        "created": created,
        "data": [
            {"b64_json": base64.b64encode(png).decode("ascii"), "seed": seed}
            for png, seed in zip(images, seeds, strict=True)
        ],
    }
