"""Preflight: what a run's configuration asks for, checked before any stage starts (no Ray here).

Some bad input used to surface only deep inside a stage (a resolution the model cannot draw, one
merge weight too few, a model id that does not exist, a GPU the cluster does not have). The
pipeline now runs these checks first, for the stages it was asked to run, collects every
problem and raises one :class:`~selma_ray.config.ConfigError` with a ``field: problem; fix``
line per problem (the CLI exits 2). Warnings go to the log.

- :func:`check_config`: the model resolutions, cross-field counts, model ids and a writable run
  directory; needs no cluster.
- :func:`check_resources`: each actor pool's and training worker's CPUs / GPUs against a plain
  :class:`ClusterOffer` (built by ``selma_ray.distributed.resources`` from a Ray session).
- :func:`preflight` / :func:`preflight_resources`: run one of them, log the warnings, raise the
  errors.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from selma_ray.config import ActorPool, ConfigError, SelmaConfig
from selma_ray.merging.methods import DENSITY_METHODS, SVD_METHODS
from selma_ray.models import MOVED_HUB_IDS, TINY_KINDS, is_tiny_ref, resolve_model

log = logging.getLogger(__name__)

__all__ = [
    "ClusterOffer",
    "Findings",
    "Problem",
    "check_config",
    "check_resources",
    "classify_model_ref",
    "preflight",
    "preflight_resources",
    "required_multiple",
]

#: Seconds one hub lookup may take before it is reported as a warning.
HUB_TIMEOUT_S = 10.0
_TINY_RE = re.compile(r"^tiny:(?P<kind>[A-Za-z0-9_-]+)(?:@-?\d+)?$")
# a Hugging Face repo id: "name" or "owner/name"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?$")
_PATH_PREFIXES = ("/", "./", "../", "~")
# the diffusers Stable Diffusion (XL) pipelines refuse heights and widths not divisible by 8
_SD_PIPELINE_MULTIPLE = 8
_TRUE = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads HF_HUB_OFFLINE
#: A cached repo has one of these at its root (a diffusers pipeline / a transformers model).
_INDEX_FILES = ("model_index.json", "config.json")


@dataclass(frozen=True)
class Problem:
    """One finding: the config field at fault, what is wrong, and the fix."""

    field: str
    problem: str
    fix: str

    def line(self) -> str:
        return f"{self.field}: {self.problem}; {self.fix}"


@dataclass
class Findings:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def extend(self, other: Findings) -> None:
        self.errors.extend(other.errors)
        self.warnings.extend(other.warnings)


@dataclass(frozen=True)
class ClusterOffer:
    """What a cluster can offer: per node its resources (CPU, GPU and custom ones such as
    ``llm_node``), and whether it can add nodes.

    ``nodes``: the nodes there are (for a cluster that can grow, the node types it can add may
    be listed too). ``where`` names the cluster in messages, e.g. ``local Ray, cannot grow``.
    """

    nodes: tuple[dict[str, float], ...]
    can_grow: bool
    where: str
    #: The addresses of the hosts the live nodes run on (several raylets may share one host).
    hosts: tuple[str, ...] = ()
    #: The Ray this process started (``ray.num_cpus`` sizes it), not a cluster it joined.
    local: bool = False

    @property
    def max_node(self) -> dict[str, float]:
        """Per resource, the most any one node has."""
        return {r: max((n.get(r, 0.0) for n in self.nodes), default=0.0) for r in ("CPU", "GPU")}

    @property
    def total(self) -> dict[str, float]:
        return {r: sum(n.get(r, 0.0) for n in self.nodes) for r in ("CPU", "GPU")}

    def fits(self, need: dict[str, float]) -> float:
        """How many bundles of ``need`` the nodes hold at once (each bundle on one node)."""
        asked = {r: v for r, v in need.items() if v > 0}
        if not asked:
            return math.inf
        return sum(min(int(n.get(r, 0.0) // v) for r, v in asked.items()) for n in self.nodes)


# --------------------------------------------------------------------------- entry points


def preflight(
    cfg: SelmaConfig, run_dir: str, stages: Collection[str], *, hf_cache_dir: str | None = None
) -> Findings:
    """:func:`check_config`; warnings logged, errors raised as one :class:`ConfigError`."""
    return _report(check_config(cfg, run_dir, stages, hf_cache_dir=hf_cache_dir))


def preflight_resources(
    cfg: SelmaConfig, stages: Collection[str], cluster: ClusterOffer, run_dir: str | None = None
) -> Findings:
    """:func:`check_resources` and, given the run directory, :func:`check_shared_storage`;
    warnings logged, errors raised as one :class:`ConfigError`."""
    found = check_resources(cfg, stages, cluster)
    if run_dir is not None:
        found.extend(check_shared_storage(cfg, run_dir, stages, cluster))
    return _report(found)


def _report(found: Findings) -> Findings:
    for w in found.warnings:
        log.warning("preflight: %s", w.line())
    if found.errors:
        lines = "\n  ".join(e.line() for e in found.errors)
        n = len(found.errors)
        msg = f"preflight: {n} problem(s) found before any stage ran:\n  {lines}"
        raise ConfigError(msg)
    return found


def check_config(
    cfg: SelmaConfig, run_dir: str, stages: Collection[str], *, hf_cache_dir: str | None = None
) -> Findings:
    """Every check that needs no cluster, for the named stages (``prompts`` ... ``eval``).

    ``hf_cache_dir``: the Hugging Face hub cache to look hub ids up in (default: its own).
    """
    found = Findings()
    models = _models_in_use(cfg, stages)
    bad_refs = set()
    for fld, ref in models:
        problems = _check_model_ref(fld, ref, hf_cache_dir)
        found.extend(problems)
        if problems.errors:
            bad_refs.add(ref)
    base_field, base_ref = _base_model(cfg)
    if "images" in stages and cfg.images.model not in bad_refs:
        found.extend(
            _check_resolution(
                "images.resolution", cfg.images.resolution, "images.model", cfg.images.model,
                cfg.storage.cache_dir, hf_cache_dir,
            )
        )  # fmt: skip
    if {"experts", "eval"} & set(stages) and base_ref not in bad_refs:
        found.extend(
            _check_resolution(
                "train.resolution", cfg.train.resolution, base_field, base_ref,
                cfg.storage.cache_dir, hf_cache_dir,
            )
        )  # fmt: skip
    if "experts" in stages and base_ref not in bad_refs:
        found.extend(_check_trainable(base_field, base_ref, cfg.storage.cache_dir, hf_cache_dir))
    found.extend(_check_counts(cfg, stages))
    if "images" in stages:
        found.extend(_check_skill_data(cfg))
    if "eval" in stages:
        found.extend(_check_preference_refs(cfg))
    found.extend(_check_writable("--run-dir", run_dir))
    if "experts" in stages and cfg.train.storage_path:
        found.extend(_check_writable("train.storage_path", cfg.train.storage_path))
    return found


# --------------------------------------------------------------------------- model ids


def _base_model(cfg: SelmaConfig) -> tuple[str, str]:
    """(field, reference) of the model the experts adapt."""
    if cfg.train.base_model:
        return "train.base_model", cfg.train.base_model
    return "images.model", cfg.images.model


def _models_in_use(cfg: SelmaConfig, stages: Collection[str]) -> list[tuple[str, str]]:
    """(field, reference) of every model the stages load."""
    out: list[tuple[str, str]] = []
    # the openai engine's model is a name the endpoint serves, not a hub id: not checked here
    if "prompts" in stages and cfg.prompts.engine in ("transformers", "vllm"):
        out.append(("prompts.model", cfg.prompts.model))
    if "images" in stages:
        out.append(("images.model", cfg.images.model))
    if {"experts", "eval"} & set(stages) or ("merge" in stages and cfg.merge.export_fused):
        out.append(_base_model(cfg))
    if "eval" in stages:
        out.append(("eval.vqa_model", cfg.eval.vqa_model))
        if cfg.eval.clip_model:
            out.append(("eval.clip_model", cfg.eval.clip_model))
        if cfg.eval.answer_matcher and "tifa" in cfg.eval.benchmarks:
            out.append(("eval.answer_matcher", cfg.eval.answer_matcher))
    return list(dict.fromkeys(out))


def classify_model_ref(ref: str) -> str:
    """``tiny`` (a ``tiny:`` reference), ``path`` (exists locally, or is written as a path: it
    starts with /, ./, ../ or ~, or has more than one /), ``hub`` (shaped like a Hugging Face
    repo id, ``name`` or ``owner/name``, with no local match) or ``invalid``."""
    if is_tiny_ref(ref):
        return "tiny"
    if os.path.exists(os.path.expanduser(ref)):
        return "path"
    if ref.startswith(_PATH_PREFIXES) or ref in (".", "..") or ref.count("/") > 1:
        return "path"
    if os.sep != "/" and os.sep in ref:
        return "path"
    return "hub" if _HUB_ID_RE.match(ref) else "invalid"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set to a true value (read now, as the hub library does)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def _check_model_ref(fld: str, ref: str, hf_cache_dir: str | None) -> Findings:
    found = Findings()
    what = classify_model_ref(ref)
    if what == "tiny":
        match = _TINY_RE.match(ref)
        if match is None or match["kind"] not in TINY_KINDS:
            valid = ", ".join(f"tiny:{k}" for k in TINY_KINDS)
            found.errors.append(
                Problem(fld, f"unknown tiny model reference {ref!r}", f"use one of {valid}")
            )
    elif what == "path":
        path = os.path.expanduser(ref)
        if not os.path.exists(path):
            found.errors.append(
                Problem(
                    fld,
                    f"{ref!r} is written as a local path but does not exist",
                    "give an existing model directory, a Hugging Face id (owner/name) or a "
                    "tiny: reference",
                )
            )
        elif not os.path.isdir(path):
            found.errors.append(
                Problem(fld, f"{ref!r} is a file, not a model directory", "give its directory")
            )
    elif what == "hub":
        found.extend(_check_hub_id(fld, ref, hf_cache_dir))
    else:
        found.errors.append(
            Problem(
                fld,
                f"{ref!r} is neither a tiny: reference, a local directory nor a Hugging Face id",
                "give a model id (owner/name), a local directory or a tiny: reference",
            )
        )
    return found


def _cached_file(ref: str, filename: str, hf_cache_dir: str | None) -> str | None:
    """The local copy of a hub repo's file in the HF cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref, filename, cache_dir=hf_cache_dir)
    return found if isinstance(found, str) else None


def _check_hub_id(fld: str, ref: str, hf_cache_dir: str | None) -> Findings:
    found = Findings()
    moved = MOVED_HUB_IDS.get(ref)  # where its weights are since the id left the hub
    if hub_offline():
        if not any(_cached_file(ref, n, hf_cache_dir) for n in _INDEX_FILES):
            get = moved or ref
            found.errors.append(
                Problem(
                    fld,
                    f"{ref!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
                    + (" (the id has left the hub)" if moved else ""),
                    (f"set {fld}: {moved}, then " if moved else "")
                    + f"unset HF_HUB_OFFLINE or download it first (huggingface-cli download {get})",
                )
            )
        return found
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    api = HfApi()
    gated = Problem(
        fld,
        f"{ref!r} is a gated model this machine has no access to",
        f"accept its licence on https://huggingface.co/{ref} and set HF_TOKEN (or run "
        "huggingface-cli login)",
    )
    try:
        info = api.model_info(ref, timeout=HUB_TIMEOUT_S)
        if getattr(info, "gated", False):
            api.auth_check(ref)
    except GatedRepoError:
        found.errors.append(gated)
    except RepositoryNotFoundError:
        found.errors.append(
            Problem(fld, f"{ref!r} was taken off the Hugging Face hub", f"set {fld}: {moved}")
            if moved
            else Problem(
                fld,
                f"no model {ref!r} on the Hugging Face hub (or it is private)",
                "fix the id, or set HF_TOKEN for a private repo",
            )
        )
    except Exception as e:  # noqa: BLE001 - no answer (network, hub down): cannot tell
        found.warnings.append(
            Problem(
                fld,
                f"could not ask the Hugging Face hub about {ref!r} ({type(e).__name__}: {e})",
                "the stage will try to download it",
            )
        )
    return found


# --------------------------------------------------------------------------- resolutions


def _model_files(
    ref: str, cache_dir: str | None, hf_cache_dir: str | None, names: Iterable[str]
) -> dict[str, str] | None:
    """Local paths of the model's files ``names`` that exist, or None when the model cannot be
    read without a download (a hub id that is not cached: logged)."""
    what = classify_model_ref(ref)
    if what == "tiny":
        root = resolve_model(ref, cache_dir)
        files = {n: os.path.join(root, n) for n in names}
    elif what == "path":
        root = os.path.expanduser(ref)
        files = {n: os.path.join(root, n) for n in names}
    elif what == "hub":
        cached = {n: _cached_file(ref, n, hf_cache_dir) for n in names}
        if not all(cached.values()):
            log.info("preflight: %s is not in the local Hugging Face cache; not read", ref)
            return None
        files = {n: p for n, p in cached.items() if p}
    else:
        return None
    return {n: p for n, p in files.items() if os.path.isfile(p)}


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def required_multiple(model_files: dict[str, str]) -> tuple[int, int, str] | None:
    """(multiple the pipeline needs, multiple of its VAE x UNet downsampling, pipeline class)
    from a diffusers model's ``model_index.json``, ``vae/config.json`` and
    ``unet/config.json``; None when it has no UNet or VAE config (other architectures).

    A UNet takes any latent size (it matches its upsampling to the skip connections), so the
    hard requirement is the VAE's factor, and 8 for the Stable Diffusion (XL) pipelines, which
    refuse other sizes; the full VAE x UNet factor is the grid the model works on natively.
    """
    try:
        vae = _read_json(model_files["vae/config.json"])
        unet = _read_json(model_files["unet/config.json"])
    except (KeyError, OSError, ValueError):
        return None
    if "block_out_channels" not in vae or "down_block_types" not in unet:
        return None
    index: dict[str, Any] = {}
    if "model_index.json" in model_files:
        try:
            index = _read_json(model_files["model_index.json"])
        except (OSError, ValueError):
            index = {}
    pipeline = str(index.get("_class_name", "pipeline"))
    vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)
    native = vae_factor * 2 ** (len(unet["down_block_types"]) - 1)
    hard = vae_factor
    if pipeline.startswith("StableDiffusion"):
        hard = math.lcm(hard, _SD_PIPELINE_MULTIPLE)
    return hard, native, pipeline


def _nearest(value: int, multiple: int) -> str:
    below = value - value % multiple
    options = [v for v in (below, below + multiple) if v >= 8]
    return " or ".join(str(v) for v in options)


def _check_resolution(
    fld: str,
    resolution: int,
    model_field: str,
    ref: str,
    cache_dir: str | None,
    hf_cache_dir: str | None,
) -> Findings:
    found = Findings()
    names = ("model_index.json", "vae/config.json", "unet/config.json")
    files = _model_files(ref, cache_dir, hf_cache_dir, names)
    need = required_multiple(files) if files is not None else None
    if need is None:
        if files is not None:
            log.info("preflight: %s %s has no UNet / VAE config; %s not checked", model_field,
                     ref, fld)  # fmt: skip
        return found
    hard, native, pipeline = need
    if resolution % hard:
        why = f"its VAE downsamples {hard}x"
        if pipeline.startswith("StableDiffusion"):
            why = f"the diffusers {pipeline} draws only multiples of {_SD_PIPELINE_MULTIPLE}"
        found.errors.append(
            Problem(
                fld,
                f"{resolution} is not a multiple of {hard}, which {ref} ({model_field}) needs "
                f"({why})",
                f"use {_nearest(resolution, hard)}",
            )
        )
    elif resolution % native:
        found.warnings.append(
            Problem(
                fld,
                f"{resolution} is not a multiple of {native}, the VAE x UNet downsampling of "
                f"{ref} ({model_field}); it works (the UNet resizes its upsampling to fit) but "
                "off the grid the model works on",
                f"{_nearest(resolution, native)} would be on it",
            )
        )
    return found


def _check_trainable(
    fld: str, ref: str, cache_dir: str | None, hf_cache_dir: str | None
) -> Findings:
    """The experts' base model has the parts expert training loads (SD 1.x/2.x or SDXL)."""
    from selma_ray.training.components import model_kind

    found = Findings()
    files = _model_files(ref, cache_dir, hf_cache_dir, ("model_index.json",))
    if files is None:
        return found
    if "model_index.json" not in files:
        found.errors.append(
            Problem(
                fld,
                f"{ref!r} is not a diffusers pipeline (no model_index.json)",
                "give a Stable Diffusion 1.x/2.x/XL pipeline for the experts to adapt",
            )
        )
        return found
    try:
        model_kind(os.path.dirname(files["model_index.json"]))
    except (NotImplementedError, ValueError) as e:
        found.errors.append(Problem(fld, str(e).rstrip("."), "pick a supported model"))
    return found


# --------------------------------------------------------------------------- cross-field counts


def _check_counts(cfg: SelmaConfig, stages: Collection[str]) -> Findings:
    found = Findings()
    skills = [s.name for s in cfg.prompts.skills]
    m = cfg.merge
    if "merge" in stages:
        if m.weights is not None and len(m.weights) != len(skills):
            found.errors.append(
                Problem(
                    "merge.weights",
                    f"{len(m.weights)} weight(s) for {len(skills)} skills (prompts.skills, in "
                    f"order: {', '.join(skills)})",
                    "give one weight per skill in that order, or leave merge.weights unset for "
                    "1/N each",
                )
            )
        if m.svd_rank is not None and m.method not in SVD_METHODS:
            found.warnings.append(
                Problem(
                    "merge.svd_rank",
                    f"set but merge.method {m.method!r} ignores it",
                    f"it applies to {', '.join(SVD_METHODS)}",
                )
            )
        if "density" in m.model_fields_set and m.method not in DENSITY_METHODS:
            found.warnings.append(
                Problem(
                    "merge.density",
                    f"set but merge.method {m.method!r} ignores it",
                    f"it applies to {', '.join(DENSITY_METHODS)}",
                )
            )
    t = cfg.train
    if "experts" in stages and cfg.ray.executor == "ray" and t.batch_size < t.num_workers:
        found.errors.append(
            Problem(
                "train.batch_size",
                f"{t.batch_size} is the global batch, split over train.num_workers "
                f"({t.num_workers}) workers, so some would get no sample",
                f"raise train.batch_size to >= {t.num_workers} or lower train.num_workers",
            )
        )
    e = cfg.eval
    if "eval" in stages:
        usable = [b for b in e.benchmarks if b != "tifa" or e.tifa_path]
        if not usable:
            found.errors.append(
                Problem(
                    "eval.benchmarks",
                    f"{e.benchmarks} leaves nothing to evaluate: tifa needs eval.tifa_path, "
                    "which is not set",
                    "set eval.tifa_path or add dsg1k / skills",
                )
            )
        if e.tifa_path and "tifa" in e.benchmarks:
            found.extend(_check_local_file("eval.tifa_path", e.tifa_path))
    return found


def _check_local_file(fld: str, uri: str) -> Findings:
    from selma_ray.storage import protocol_of

    found = Findings()
    if protocol_of(uri) == "file":
        path = os.path.expanduser(uri.removeprefix("file://"))
        if not os.path.isfile(path):
            found.errors.append(Problem(fld, f"{uri!r} does not exist", "give an existing file"))
    return found


def _check_preference_refs(cfg: SelmaConfig) -> Findings:
    """``eval.preference_models``: a ``tiny:`` reference of a known kind, or a local path that
    exists. Hub ids (``owner/repo`` or ``owner/repo/file``) are fetched when the scorer loads."""
    found = Findings()
    for kind, ref in cfg.eval.preference_models.items():
        fld = f"eval.preference_models.{kind}"
        if is_tiny_ref(ref):
            found.extend(_check_model_ref(fld, ref, None))
        elif ref.startswith(_PATH_PREFIXES) and not os.path.exists(os.path.expanduser(ref)):
            found.errors.append(
                Problem(fld, f"{ref!r} is written as a local path but does not exist",
                        "give an existing checkpoint, a hub id (owner/repo[/file]) or tiny:")
            )  # fmt: skip
    return found


def _check_skill_data(cfg: SelmaConfig) -> Findings:
    """Each skill's ``data`` (existing pairs) is there and of a format it can be read as."""
    from selma_ray.images.pairs import detect_format

    found = Findings()
    for i, skill in enumerate(cfg.prompts.skills):
        if skill.data is None:
            continue
        try:
            detect_format(skill.data)
        except (OSError, ValueError) as e:
            found.errors.append(
                Problem(f"prompts.skills[{i}].data", str(e).rstrip("."), "fix data.uri")
            )
    return found


# --------------------------------------------------------------------------- run directory


def _check_writable(fld: str, uri: str) -> Findings:
    """A local directory (or, when it does not exist yet, its nearest existing parent) takes a
    file; object stores are checked by :func:`selma_ray.storage.check_storage`."""
    from selma_ray.storage import protocol_of

    found = Findings()
    if protocol_of(uri) != "file":
        return found
    path = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    if os.path.exists(path) and not os.path.isdir(path):
        found.errors.append(
            Problem(fld, f"{uri!r} is a file, not a directory", "give a directory path")
        )
        return found
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        found.errors.append(
            Problem(fld, f"{existing!r} (in {uri!r}) is a file", "give a directory path")
        )
        return found
    probe = os.path.join(existing, f".selma-preflight-{uuid.uuid4().hex}")
    try:
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        where = "" if existing == path else f" (its nearest existing parent {existing!r})"
        found.errors.append(
            Problem(
                fld,
                f"cannot write in {uri!r}{where}: {e.strerror or e}",
                f"choose a writable place, e.g. {os.path.join(tempfile.gettempdir(), 'selma')}",
            )
        )
    return found


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class _Ask:
    """What one actor / worker of a pool asks for, and how many must run at once."""

    fld: str  # the pool's field path
    who: str  # e.g. "image actor"
    need: dict[str, float]
    at_once: int
    gpu_field: str
    cpu_field: str
    count_field: str


def _pool_ask(fld: str, who: str, pool: ActorPool, at_once: int | None = None) -> _Ask:
    need = {"CPU": 1.0 if pool.cpus is None else pool.cpus, "GPU": pool.gpus, **pool.resources}
    n = max(1, pool.min_size) if at_once is None else at_once
    return _Ask(fld, who, need, n, f"{fld}.gpus", f"{fld}.cpus", f"{fld}.min_size")


def _asks(cfg: SelmaConfig, stages: Collection[str]) -> list[_Ask]:
    out = []
    if "prompts" in stages and cfg.prompts.engine == "vllm":
        out.append(_pool_ask("prompts.vllm.pool", "vLLM engine", cfg.prompts.vllm.pool))
    if "images" in stages:
        out.append(_pool_ask("images.pool", "image actor", cfg.images.pool))
    t = cfg.train
    if "experts" in stages:
        if t.cache_inputs:  # the stage starts at most one encoder per skill, at least one
            out.append(_pool_ask("train.cache_pool", "cache encoder", t.cache_pool, at_once=1))
        if t.num_workers >= 1:
            need = {"CPU": t.cpus_per_worker, "GPU": 1.0 if t.use_gpu else 0.0}
            out.append(
                _Ask("train", "training worker", need, t.num_workers, "train.use_gpu",
                     "train.cpus_per_worker", "train.num_workers")
            )  # fmt: skip
    if "eval" in stages:
        out.append(_pool_ask("eval.pool", "eval actor", cfg.eval.pool))
    return out


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _n(value: float, unit: str) -> str:
    return f"{_num(value)} {unit}{'' if value == 1 else 's'}"


def check_resources(cfg: SelmaConfig, stages: Collection[str], cluster: ClusterOffer) -> Findings:
    """Each pool's actor (and each training worker) must fit on one node, and the actors that
    start together (``min_size``; ``train.num_workers``) in the cluster. On a cluster that can
    grow (whose node types are not known) a shortfall is a warning only."""
    found = Findings()
    biggest = cluster.max_node
    growing = "; it starts only once the autoscaler adds nodes that fit it"
    for ask in _asks(cfg, stages):
        problems: list[Problem] = []
        gpus, cpus = ask.need["GPU"], ask.need["CPU"]
        if gpus > biggest["GPU"]:
            has = (
                "no node of this cluster has a GPU"
                if biggest["GPU"] == 0
                else f"the largest node has {_n(biggest['GPU'], 'GPU')}"
            )
            fix = (
                f"set {ask.gpu_field}: false or run on a GPU cluster"
                if ask.gpu_field == "train.use_gpu"
                else f"set {ask.gpu_field}: {_num(biggest['GPU'])} or run on a GPU cluster"
            )
            problems.append(
                Problem(
                    ask.gpu_field,
                    f"each {ask.who} asks for {_n(gpus, 'GPU')} but {has} ({cluster.where})",
                    fix,
                )
            )
        if cpus > biggest["CPU"]:
            fix = f"set {ask.cpu_field} <= {_num(biggest['CPU'])}"
            if cluster.local:
                fix += f" or start the local Ray with more (ray.num_cpus >= {math.ceil(cpus)})"
            elif not cluster.can_grow:
                fix += f" or add a node with more (ray start --num-cpus {math.ceil(cpus)})"
            problems.append(
                Problem(
                    ask.cpu_field,
                    f"each {ask.who} asks for {_n(cpus, 'CPU')} but the largest node has "
                    f"{_n(biggest['CPU'], 'CPU')} ({cluster.where})",
                    fix,
                )
            )
        for name, amount in ask.need.items():
            if name in ("CPU", "GPU"):
                continue
            most = max((n.get(name, 0.0) for n in cluster.nodes), default=0.0)
            if amount > most:
                has = (
                    f"no node of this cluster has {name!r}"
                    if most == 0
                    else f"the most any node has is {_num(most)}"
                )
                problems.append(
                    Problem(
                        f"{ask.fld}.resources",
                        f"each {ask.who} asks for {_num(amount)} {name} but {has} "
                        f"({cluster.where})",
                        f'start nodes with it (ray start --resources=\'{{"{name}": '
                        f"{_num(max(amount, 1))}}}', a node type's resources in cluster.yaml) "
                        f"or remove {name} from {ask.fld}.resources",
                    )
                )
        if not problems and ask.at_once > 1:
            fit = cluster.fits(ask.need)
            if fit < ask.at_once:
                each = " and ".join(
                    _n(v, r) for r, v in ask.need.items() if v > 0
                )  # e.g. "1 CPU and 1 GPU"
                problems.append(
                    Problem(
                        ask.count_field,
                        f"{ask.at_once} {ask.who}s ({each} each) must run at once but this "
                        f"cluster holds {_num(fit)} ({cluster.where})",
                        f"set {ask.count_field} <= {_num(fit)}"
                        + ("" if cluster.local else " or add nodes"),
                    )
                )
        if cluster.can_grow:
            found.warnings.extend(Problem(p.field, p.problem + growing, p.fix) for p in problems)
        else:
            found.errors.extend(problems)
    return found


def check_shared_storage(
    cfg: SelmaConfig, run_dir: str, stages: Collection[str], cluster: ClusterOffer
) -> Findings:
    """Workers on every node read and write the run directory (images, caches, checkpoints)
    themselves, so on nodes spread over several hosts a local path must be a shared mount:
    refused unless ``storage.shared_filesystem`` says it is one. On one host of a cluster
    that can grow (an autoscaler adds workers as the stages ask), a warning: the nodes it adds
    will be other hosts."""
    from selma_ray.storage import protocol_of

    found = Findings()
    hosts = sorted(set(cluster.hosts))
    spread = len(hosts) >= 2
    if not (spread or cluster.can_grow) or cfg.storage.shared_filesystem:
        return found
    places = [("--run-dir", run_dir)]
    if "experts" in stages and cfg.train.storage_path:
        places.append(("train.storage_path", cfg.train.storage_path))
    shown = ", ".join(hosts[:3]) + (f" and {len(hosts) - 3} more" if len(hosts) > 3 else "")
    fix = (
        "use object storage (s3://bucket/prefix, gs://bucket/prefix) or, when the path is a "
        "filesystem mounted on every node, set storage.shared_filesystem: true"
    )
    for fld, uri in places:
        if protocol_of(uri) not in ("file", "local"):
            continue
        if spread:
            found.errors.append(
                Problem(
                    fld,
                    f"{uri!r} is a local path but this cluster's nodes are on {len(hosts)} "
                    f"hosts ({shown}), whose workers would each write to their own disk",
                    fix,
                )
            )
        else:
            found.warnings.append(
                Problem(
                    fld,
                    f"{uri!r} is a local path and this cluster ({cluster.where}) may add nodes "
                    "on other hosts, whose workers would each write to their own disk",
                    fix,
                )
            )
    return found
