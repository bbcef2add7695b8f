"""What to serve, without Ray: the builder's arguments and their resolution against a run.

Owns :class:`ServeArgs` (the arguments of ``build_app`` / ``selma-ray serve --arg``) and
:func:`resolve`, which reads the run directory and returns a :class:`ServePlan`: the effective
``serve`` section, the variants, the app's settings and the replica settings.

Shape of the arguments (unknown ones are refused, naming the field)::

    run_dir: /runs/x                  # required: a run directory (path or fsspec URI)
    serve:                            # optional overrides of the run's ``serve`` section,
      max_n: 2                        #   any ServeConfig field, nested as in a config file
      pool: {max_size: 2, gpus: 1}    #   (replicas autoscale between pool.min_size/max_size)
    device: cuda:1                    # replica-only settings, not part of ServeConfig
    dtype: float16
    torch_threads: 4
    compare_pairs: merged:base,merged:joint   # variant pairs of the /compare rating page

Dotted keys are the same thing flattened (``serve.pool.max_size=2``), which is how
``serve run <import path> key=value`` and ``selma-ray serve --arg key=value`` pass them.
Overrides are validated by :class:`~selma_ray.config.ServeConfig` itself: a field's type and
range when the arguments are parsed, the whole section (e.g. ``pool.min_size <= max_size``)
once it is merged over the run's. ``serve.auth_token_env: ''`` turns auth off.

The ``/compare`` rating page (:mod:`selma_ray.serving.compare`) offers the run's eval images;
``compare_pairs`` picks the variant pairs (default: merged against every other variant, see
:func:`~selma_ray.evaluation.votes.default_pairs`), ``compare_pairs: ''`` turns the page off.
A pair naming a variant the run's ``eval/report.json`` lacks is refused here.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from selma_ray import layout
from selma_ray.config import (
    RENAMED_KEYS,
    ConfigError,
    SelmaConfig,
    ServeConfig,
    deep_merge,
)
from selma_ray.evaluation.votes import CompareSettings, Comparisons, NoEvalResults, parse_pairs
from selma_ray.serving.api import token_digest
from selma_ray.serving.app import AppSettings
from selma_ray.serving.model import ModelSpec, discover_variants, load_run_config
from selma_ray.storage import RunDir

log = logging.getLogger(__name__)

__all__ = ["RENAMED_ARGS", "ServeArgs", "ServePlan", "resolve"]

#: Flat arguments of earlier versions -> their spelling now (the error names it).
RENAMED_ARGS: dict[str, str] = {
    **{name: f"serve.{name}" for name in ServeConfig.model_fields},
    "min_replicas": "serve.pool.min_size",
    "max_replicas": "serve.pool.max_size",
    "num_gpus": "serve.pool.gpus",
    "num_cpus": "serve.pool.cpus",
}


class ServeArgs(BaseModel):
    """Arguments of ``build_app``: the run, ``serve`` overrides, replica-only settings."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str = Field(min_length=1, description="Run directory (path or fsspec URI).")
    serve: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the run's serve section (ServeConfig fields, nested).",
    )
    device: str | None = Field(None, description="torch device; None = cuda if available.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = Field(
        None, description="None = images.dtype of the run."
    )
    torch_threads: int | None = Field(None, ge=1, description="torch CPU threads per replica.")
    revision: str | int | None = Field(
        None,
        description=(
            "Free-form; change it to make `serve deploy` rebuild the app and read the run "
            "again (e.g. after it gained an expert): Serve skips a deploy whose config is "
            "unchanged."
        ),
    )
    compare_pairs: str | list[str] | None = Field(
        None,
        description=(
            "Variant pairs of the /compare rating page, FIRST:SECOND comma-separated (e.g. "
            "merged:base,merged:joint); None = merged against every other eval variant; "
            "'' = no /compare page."
        ),
    )

    @field_validator("compare_pairs")
    @classmethod
    def _pairs(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value:
            try:
                parse_pairs(value)
            except ValueError as e:  # the error line names the argument already
                raise ValueError(str(e).removeprefix("compare_pairs: ")) from None
        return value

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
        nested, errors = _nest(args)
        overrides = nested.pop("serve", None)
        if overrides is None:  # absent, or `serve:` in YAML with every key commented out
            overrides = {}
        checked, serve_errors = _check_fields(ServeConfig, overrides, "serve")
        errors += serve_errors
        parsed = None
        try:
            parsed = cls.model_validate({**nested, "serve": {}})
        except ValidationError as e:
            errors = _format_errors(e) + errors
        if errors or parsed is None:
            raise ConfigError("\n".join(["build_app: invalid arguments:", *errors]))
        if checked.get("auth_token_env") == "":
            checked["auth_token_env"] = None
        return parsed.model_copy(update={"serve": checked})

    def serve_config(self, base: ServeConfig) -> ServeConfig:
        """The run's ``serve`` section with these overrides, validated as a whole."""
        try:
            return ServeConfig.model_validate(deep_merge(base.model_dump(), self.serve))
        except ValidationError as e:
            lines = _format_errors(e, prefix="serve.")
            raise ConfigError("\n".join(["build_app: invalid arguments:", *lines])) from None


def _nest(args: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Dotted keys (``serve.pool.max_size``) -> nested mappings, merged with nested ones."""
    out: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in args.items():
        parts = str(key).split(".")
        update: Any = value
        for part in reversed(parts[1:]):
            update = {part: update}
        head = parts[0]
        if head in out and isinstance(out[head], dict) and isinstance(update, dict):
            out[head] = deep_merge(out[head], update)
        elif head in out:
            errors.append(f"  {key}: given twice (as {head!r} and a key inside it)")
        else:
            out[head] = update
    return out, errors


def _check_fields(model: type[BaseModel], data: Any, path: str) -> tuple[dict[str, Any], list[str]]:
    """Validate a partial mapping against ``model``'s own fields (types, ranges, names)."""
    if not isinstance(data, Mapping):
        shown = f" (got {data!r})" if isinstance(data, (str, int, float)) else ""
        return {}, [f"  {path}: expected a mapping of {model.__name__} fields{shown}"]
    out: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in data.items():
        where = f"{path}.{key}"
        info = model.model_fields.get(key)
        if info is None:
            if where in RENAMED_KEYS:
                errors.append(f"  {where}: renamed; use {RENAMED_KEYS[where]}")
            else:
                allowed = ", ".join(model.model_fields)
                errors.append(f"  {where}: unknown key; allowed here: {allowed}")
            continue
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(value, Mapping):
            out[key], inner = _check_fields(ann, value, where)
            errors += inner
            continue
        typed = Annotated[(ann, *info.metadata)] if info.metadata else ann
        try:
            out[key] = TypeAdapter(typed).validate_python(value)
        except ValidationError as e:
            errors += _format_errors(e, prefix=f"{where}.", top=where)
    return out, errors


def _format_errors(error: ValidationError, prefix: str = "", top: str | None = None) -> list[str]:
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"])
        loc = prefix + loc if loc else (top or prefix.rstrip("."))
        if err["type"] == "extra_forbidden" and prefix:
            lines.append(f"  {loc}: unknown key")
        elif err["type"] == "extra_forbidden":
            if loc in RENAMED_ARGS:
                lines.append(f"  {loc}: unknown argument; use {RENAMED_ARGS[loc]}")
            else:
                allowed = ", ".join(ServeArgs.model_fields)
                lines.append(f"  {loc}: unknown argument; allowed: {allowed}")
        elif err["type"] == "missing":
            lines.append(f"  {loc}: required (e.g. run_dir=/path/to/run)")
        else:
            message = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = f" (got {got!r})" if isinstance(got, (str, int, float)) else ""
            lines.append(f"  {loc}: {message}{shown}")
    return lines


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class ServePlan:
    """Everything needed to serve a run, resolved from :class:`ServeArgs` and the run dir."""

    args: ServeArgs
    serve: ServeConfig  # the run's serve section with the overrides
    spec: ModelSpec
    run: SelmaConfig  # the run's whole config
    app: AppSettings


def resolve(args: Mapping[str, Any] | ServeArgs | None) -> ServePlan:
    """Validate ``args``, read the run, merge the overrides; :class:`ConfigError` if wrong."""
    a = ServeArgs.parse(args)
    rd = RunDir(a.run_dir)
    try:
        run = load_run_config(rd)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"run_dir: {e}") from e
    serve = a.serve_config(run.serve)
    # the replicas load what the overrides say (serve.compile, fuse_qkv...), checked against
    # the run's other sections (serve.fuse_qkv needs images.attention: sdpa)
    try:
        run = SelmaConfig.model_validate({**run.model_dump(), "serve": serve.model_dump()})
    except ValidationError as e:
        lines = _format_errors(e, prefix="")
        raise ConfigError("\n".join(["build_app: invalid arguments:", *lines])) from None
    try:
        spec = discover_variants(rd, run)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"run_dir: {e}") from e
    digest = _auth_digest(serve)
    if not _is_loopback(serve.host) and digest is None:
        log.warning(
            "serve.host=%s is not loopback and serve.auth_token_env is unset: anyone who can "
            "reach the port can generate images",
            serve.host,
        )
    compare = _compare_settings(a, rd, run)
    return ServePlan(a, serve, spec, run, AppSettings.from_spec(spec, serve, digest, compare))


def _compare_settings(a: ServeArgs, rd: RunDir, run: SelmaConfig) -> CompareSettings | None:
    """The ``/compare`` page's settings (None when ``compare_pairs`` is ''), checked against
    the run's eval results when it has them (without, the page answers 404 until it does)."""
    if a.compare_pairs == "" or a.compare_pairs == []:
        return None
    settings = CompareSettings(rd.uri, run.seed, parse_pairs(a.compare_pairs))
    if rd.exists(*layout.eval_report()):
        try:
            Comparisons(settings).candidates  # noqa: B018 - reads the report, checks the pairs
        except NoEvalResults as e:
            log.warning("/compare: %s", e)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    return settings


def _auth_digest(cfg: ServeConfig) -> str | None:
    """SHA-256 of the token in ``$auth_token_env``: only the digest leaves this process."""
    name = cfg.auth_token_env
    if not name:
        return None
    token = os.environ.get(name, "")
    if not token.strip():
        msg = (
            f"serve.auth_token_env names {name!r}, but that environment variable is unset or "
            "empty where the app is built: export it (serve_config.yaml: the application's "
            "runtime_env.env_vars), or set serve.auth_token_env='' to serve without auth"
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
