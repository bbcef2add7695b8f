"""The served model, without Ray: a run's variants and one diffusers pipeline holding them all.

Owns what a replica serves: :func:`discover_variants` reads a finished run directory (paths
from :mod:`selma_ray.layout`) into a :class:`ModelSpec`; :class:`VariantPipeline` loads it;
:class:`PipelineWorker` runs it off the event loop. The Ray Serve deployment that hosts them
is ``ImageModel`` in the Ray layer (``distributed/serve.py``).

Variants: ``base`` (no LoRA), ``merged`` (the merge stage's LoRA, if present) and one per
skill expert, named after the skill. Only ``.safetensors`` files are ever loaded; a folder
that holds a pickle ``.bin`` instead is refused, and each file is copied alone into a fresh
temporary directory before ``load_lora_weights`` sees it.

Design (switching variants): :class:`VariantPipeline` loads the base pipeline ONCE and every
adapter into it ONCE (``load_lora_weights(dir, adapter_name=...)``). A request for a variant
then only flips which adapter is active: ``enable_lora()`` + ``set_adapters([name])``, or
``disable_lora()`` for ``base``; no weights are moved, fused or reloaded
(``benchmarks/serve.py`` measures the switch), and the switch is skipped when the variant is
already active. The cost is memory: all adapters stay resident.

Hot-swap (``serve.lora_hotswap``, on by default with ``serve.compile``): the pipeline holds ONE
adapter slot instead, sized for the largest rank (``enable_lora_hotswap(target_rank=...)``);
every variant's LoRA stays in memory as tensors, and a switch copies the wanted one into the
slot (``load_lora_weights(..., hotswap=True)``; ``base`` is an all-zero LoRA, so its images are
the plain pipeline's). Shapes and the scaling tensors never change, so a compiled UNet is not
recompiled, and the images equal a fresh pipeline's with that variant's LoRA alone (tested).
Every adapter must target the UNet's modules alone.

Fused QKV (``serve.fuse_qkv``): diffusers' fused attention reads one ``to_qkv`` / ``to_kv``
weight built from the base weights, past the LoRA layers of ``to_q/to_k/to_v``; every switch
(either way above) therefore rebuilds those weights, in place, from the base weights and the
variant's LoRA (:func:`~selma_ray.images.generate.sync_fused_qkv`): the images match an unfused
pipeline's within float rounding, and a compiled, hot-swapping UNet is still not recompiled.

Isolation: the adapter state is global to the pipeline, so activate-then-denoise must be atomic.
:class:`VariantPipeline` holds a lock around switch + denoise, and :class:`PipelineWorker` runs
every generation on ONE worker thread, so concurrent requests for different variants never see
each other's adapters. We chose this over grouping requests per variant into one batch because
batching makes an image's bytes depend on which other requests shared its UNet call (batched
and single calls differ in the last float bits, which flips uint8 roundings): with one request
per pipeline call, the same request (variant, prompt, seed, size, steps) gives byte-identical
PNGs whatever else the server is doing. Throughput comes from replicas instead; a request's
``n`` images are still drawn in one batched call.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from selma_ray import layout
from selma_ray.serving.api import Defaults, GenerationJob, Limits
from selma_ray.storage import RunDir

if TYPE_CHECKING:
    import numpy as np

    from selma_ray.config import SelmaConfig

log = logging.getLogger(__name__)

__all__ = [
    "BASE",
    "MERGED",
    "ModelSpec",
    "PipelineWorker",
    "VariantPipeline",
    "adapter_name",
    "discover_variants",
    "load_run_config",
    "make_random_run_dir",
]

#: Model names of the API (not paths): the base model without LoRA, and the merged LoRA.
BASE = "base"
MERGED = "merged"
#: The one adapter of a hot-swapping pipeline, whose weights each switch replaces.
HOTSWAP_SLOT = "selma_slot"
#: Pickle formats that are never loaded (they can run code on load).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Allowed expert (skill) names: they become model names in the API.
VARIANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ModelSpec:
    """Everything a replica needs to build the served pipeline (plain, picklable data).

    ``adapters`` maps variant -> '/'-joined path of its ``.safetensors`` file inside the run
    directory; ``kinds`` maps every variant to ``base`` / ``merged`` / ``expert``.
    """

    run_dir: str
    base_model: str
    dtype: str = "auto"
    attention: str = "sdpa"
    cache_dir: str | None = None
    adapters: Mapping[str, str] = field(default_factory=dict)
    kinds: Mapping[str, str] = field(default_factory=dict)
    defaults: Defaults = field(default_factory=Defaults)
    #: torch.compile the UNet; switch variants by LoRA hot-swap (see :class:`VariantPipeline`)
    compile: bool = False
    hotswap: bool = False
    #: keep the pipeline's safety checker (``images.safety_checker``; it blacks out flagged
    #: images); off, a pipeline that ships one is loaded without it
    safety_checker: bool = False
    #: UNet and VAE in channels_last memory format (``serve.channels_last``)
    channels_last: bool = False
    #: fused QKV projections, rebuilt with the variant's LoRA on each switch (``serve.fuse_qkv``)
    fuse_qkv: bool = False

    @property
    def variants(self) -> tuple[str, ...]:
        """``base``, then ``merged`` (if present), the joint baseline (if trained), then the
        experts in name order."""
        experts = sorted(v for v, k in self.kinds.items() if k == "expert")
        merged = [MERGED] if MERGED in self.adapters else []
        joint = [v for v, k in self.kinds.items() if k == "joint"]
        return (BASE, *merged, *joint, *experts)

    @property
    def default_variant(self) -> str:
        """What a request without ``model`` gets: ``merged`` if there is one, else ``base``."""
        return MERGED if MERGED in self.adapters else BASE


def adapter_name(variant: str) -> str:
    """PEFT adapter name of a variant (no dots: PEFT keeps adapters in ``nn.ModuleDict``)."""
    digest = hashlib.sha256(variant.encode()).hexdigest()[:8]
    return f"selma_{re.sub(r'[^A-Za-z0-9_]', '_', variant)}_{digest}"


def _base_model(cfg: SelmaConfig) -> str:
    return cfg.train.base_model or cfg.images.model


def _check_safetensors(rd: RunDir, lora: layout.Parts, what: str) -> str | None:
    """The '/'-joined path of ``lora`` if present; refuse a folder holding only pickles."""
    if rd.exists(*lora):
        return "/".join(lora)
    folder = lora[:-1]
    pickles = [n for n in rd.listdir(*folder) if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        msg = (
            f"{what} in {rd.url(*folder)} has only pickle weights {pickles}, which are never "
            f"loaded (they can run code); re-export it as {layout.LORA_FILE} "
            "(safe_serialization=True)"
        )
        raise ValueError(msg)
    return None


def _check_base(rd: RunDir, meta: layout.Parts, base_model: str) -> None:
    """Refuse an adapter whose metadata records another base model than the run serves."""
    if not rd.exists(*meta):
        return
    data = rd.read_json(*meta)
    recorded = data.get("base_model") if isinstance(data, dict) else None
    if recorded and recorded != base_model:
        msg = (
            f"{rd.url(*meta)} was trained on base_model {recorded!r} but the run's config "
            f"serves {base_model!r} (train.base_model or images.model); fix "
            f"{layout.CONFIG_FILE} or remove the adapter"
        )
        raise ValueError(msg)


def load_run_config(run_dir: RunDir) -> SelmaConfig:
    """The resolved config a run saved; FileNotFoundError says what to give instead."""
    from selma_ray.config import load_config

    if not run_dir.exists(*layout.config()):
        msg = (
            f"{run_dir.url(*layout.config())} does not exist: give run_dir=<a run directory "
            f"written by `selma-ray run`> (it holds {layout.CONFIG_FILE}, "
            f"{'/'.join(layout.experts_dir())}/ and {'/'.join(layout.merged_dir())}/)"
        )
        raise FileNotFoundError(msg)
    return load_config(run_dir.url(*layout.config()))


def discover_variants(run_dir: str | RunDir, cfg: SelmaConfig | None = None) -> ModelSpec:
    """The variants of a finished run directory: base, merged (if any), one per expert.

    ``cfg`` defaults to the run's saved config. Expert folders without weights (training not
    finished) are skipped with a warning; pickle-only folders, invalid names and adapters
    recorded for another base model raise :class:`ValueError` naming the path.
    """
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if cfg is None:
        cfg = load_run_config(rd)
    base_model = _base_model(cfg)
    adapters: dict[str, str] = {}
    kinds: dict[str, str] = {BASE: "base"}
    merged = None
    if rd.exists(*layout.merged_dir()):
        merged = _check_safetensors(rd, layout.merged_lora(), "the merged LoRA")
    if merged:
        _check_base(rd, layout.merged_meta(), base_model)
        adapters[MERGED] = merged
        kinds[MERGED] = "merged"
    for skill in rd.listdir(*layout.experts_dir()):
        if not rd.fs.isdir(rd.path(*layout.expert_dir(skill))):
            continue
        if not VARIANT_RE.match(skill) or skill in (BASE, MERGED):
            msg = (
                f"expert folder {rd.url(*layout.expert_dir(skill))!r}: {skill!r} cannot be a "
                f"model name; rename the skill to match {VARIANT_RE.pattern} and not "
                f"{BASE!r} / {MERGED!r}"
            )
            raise ValueError(msg)
        path = _check_safetensors(rd, layout.expert_lora(skill), f"expert {skill!r}")
        if path is None:
            log.warning("expert %s has no %s (unfinished?); not served", skill, layout.LORA_FILE)
            continue
        _check_base(rd, layout.expert_meta(skill), base_model)
        adapters[skill] = path
        kinds[skill] = "joint" if skill == layout.JOINT else "expert"
    limits = Limits.from_config(cfg.serve)
    return ModelSpec(
        run_dir=rd.uri,
        base_model=base_model,
        dtype=cfg.images.dtype,
        attention=cfg.images.attention,
        cache_dir=cfg.storage.cache_dir,
        adapters=adapters,
        kinds=kinds,
        defaults=Defaults.from_images_config(cfg.variant_images(), limits),
        compile=cfg.serve.compile,
        safety_checker=cfg.images.safety_checker,
        channels_last=cfg.serve.channels_last,
        fuse_qkv=cfg.serve.fuse_qkv,
        hotswap=cfg.serve.compile if cfg.serve.lora_hotswap is None else cfg.serve.lora_hotswap,
    )


# --------------------------------------------------------------------------- the pipeline


@contextlib.contextmanager
def _quiet_lora_loading() -> Iterator[None]:
    """Hide the expected noise of loading several adapters (see ENVIRONMENT notes).

    PEFT warns "Already found a peft_config" for every adapter after the first, and diffusers
    logs "No LoRA keys associated to CLIPTextModel" for UNet-only LoRAs; both are expected here.
    """
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Already found a `peft_config`.*")
            yield
    finally:
        diffusers_logging.set_verbosity(level)


class VariantPipeline:
    """A diffusers pipeline with every adapter of a :class:`ModelSpec` loaded once.

    :meth:`generate` is thread-safe: switching the active adapter and denoising happen under one
    lock. ``torch_threads`` (if given) is applied in whichever thread generates.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        device: str | None = None,
        torch_threads: int | None = None,
        dtype: str | None = None,
    ) -> None:
        import torch

        from selma_ray.images.generate import default_device, load_pipeline

        self.torch_threads = torch_threads
        if torch_threads:
            torch.set_num_threads(torch_threads)
        t0 = time.perf_counter()
        self.spec = spec
        self.device = device or default_device()
        self.pipe = load_pipeline(
            spec.base_model,
            dtype=dtype or spec.dtype,
            attention=spec.attention,
            cache_dir=spec.cache_dir,
            device=self.device,
            safety_checker=spec.safety_checker,
            channels_last=spec.channels_last,
            fuse_qkv=spec.fuse_qkv,
        )
        self.load_seconds = time.perf_counter() - t0
        self.adapter_names: dict[str, str] = {}
        rd = RunDir(spec.run_dir)
        t1 = time.perf_counter()
        self._states: dict[str, tuple[Any, Any, Any]] = {}  # hot-swap: every variant's LoRA
        if spec.hotswap and spec.adapters:
            self._load_hotswap(rd)
        else:
            for variant, rel_path in spec.adapters.items():
                self._load_adapter(rd, variant, rel_path)
        self.adapter_load_seconds = time.perf_counter() - t1
        if spec.compile:  # in place (nn.Module.compile): diffusers still finds its adapters
            self.pipe.unet.compile()
        self._lock = threading.Lock()
        self._active: str | None = None
        self.stats: dict[str, float] = {
            "requests": 0,
            "images": 0,
            "switches": 0,
            "switch_seconds": 0.0,
            "generate_seconds": 0.0,
        }
        self.activate(BASE)

    @property
    def variants(self) -> tuple[str, ...]:
        return self.spec.variants

    def _load_adapter(self, rd: RunDir, variant: str, rel_path: str) -> None:
        if not rel_path.endswith(".safetensors"):
            msg = f"{rd.url(rel_path)}: only .safetensors adapters are loaded (never pickle)"
            raise ValueError(msg)
        name = adapter_name(variant)
        with tempfile.TemporaryDirectory(prefix="selma-lora-") as tmp:
            # the file alone, so nothing else in its folder (e.g. a .bin) can be picked up
            with open(os.path.join(tmp, layout.LORA_FILE), "wb") as f:
                f.write(rd.read_bytes(*rel_path.split("/")))
            try:
                with _quiet_lora_loading():
                    self.pipe.load_lora_weights(
                        tmp, weight_name=layout.LORA_FILE, adapter_name=name, use_safetensors=True
                    )
            except (ValueError, RuntimeError, KeyError) as e:
                msg = (
                    f"could not load {rd.url(rel_path)} as a LoRA of {self.spec.base_model!r} "
                    f"(variant {variant!r}): {e}. Was it trained on another base model?"
                )
                raise ValueError(msg) from e
        self.adapter_names[variant] = name

    def _load_hotswap(self, rd: RunDir) -> None:
        """Every adapter's LoRA in memory (tensors, alphas and the rank/alpha metadata its file
        carries), and one slot sized for the largest rank."""
        for variant, rel_path in self.spec.adapters.items():
            if not rel_path.endswith(".safetensors"):
                msg = f"{rd.url(rel_path)}: only .safetensors adapters are loaded (never pickle)"
                raise ValueError(msg)
            with tempfile.TemporaryDirectory(prefix="selma-lora-") as tmp:
                with open(os.path.join(tmp, layout.LORA_FILE), "wb") as f:
                    f.write(rd.read_bytes(*rel_path.split("/")))
                state, alphas, metadata = self.pipe.lora_state_dict(
                    tmp, weight_name=layout.LORA_FILE, return_lora_metadata=True
                )
            other = sorted(k for k in state if not k.startswith("unet."))
            if other:
                msg = (
                    f"{rd.url(rel_path)} (variant {variant!r}) adapts more than the UNet "
                    f"({other[0]}, ...); LoRA hot-swap covers the UNet only: set "
                    "serve.lora_hotswap=false"
                )
                raise ValueError(msg)
            self._states[variant] = (state, alphas, metadata)
        # BASE: the first adapter's shapes, all zero (the LoRA adds exactly nothing)
        state, alphas, metadata = next(iter(self._states.values()))
        self._states[BASE] = ({k: t.new_zeros(t.shape) for k, t in state.items()}, alphas, metadata)
        ranks = [t.shape[0] for s, _, _ in self._states.values() for k, t in s.items()
                 if "lora_A" in k or "lora.down" in k]  # fmt: skip
        self.pipe.enable_lora_hotswap(target_rank=max(ranks))
        self._swap_in(BASE, hotswap=False)
        # every variant swaps in once now: one that cannot (other modules, another alpha
        # pattern) stops the replica here, naming it, instead of failing its first request and
        # leaving the slot deleted (diffusers drops it when a hot-swap fails)
        for variant in self.spec.adapters:
            self._swap_in(variant)
        self._swap_in(BASE)
        self.adapter_names = {v: HOTSWAP_SLOT for v in self.spec.adapters}

    def _swap_in(self, variant: str, *, hotswap: bool = True) -> None:
        """Copy ``variant``'s LoRA into the slot (its tensors cloned: diffusers may keep the
        ones it is given as the slot's own, and later swaps write into those; its metadata
        copied: preparing the slot rewrites the first config's ``rank_pattern`` to the slot's
        rank, which would give that variant's lower-rank modules the wrong scale later)."""
        state, alphas, metadata = self._states[variant]
        try:
            with _quiet_lora_loading():
                self.pipe.load_lora_into_unet(
                    {k: t.clone() for k, t in state.items()},
                    copy.deepcopy(alphas),
                    unet=self.pipe.unet,
                    adapter_name=HOTSWAP_SLOT,
                    _pipeline=self.pipe,
                    hotswap=hotswap,
                    metadata=copy.deepcopy(metadata),
                )
        except (ValueError, RuntimeError, KeyError) as e:
            msg = (
                f"could not hot-swap variant {variant!r} into {self.spec.base_model!r}: {e}. "
                "Hot-swap needs every adapter to target the same modules (or set "
                "serve.lora_hotswap=false)"
            )
            raise ValueError(msg) from e

    def activate(self, variant: str) -> float:
        """Make ``variant`` the active adapter (callers hold the lock); returns its seconds."""
        if variant == self._active:
            return 0.0
        if variant != BASE and variant not in self.adapter_names:
            msg = f"model {variant!r} is not served here; available: {list(self.variants)}"
            raise KeyError(msg)
        t0 = time.perf_counter()
        self._active = None  # if switching fails midway, the next call switches again
        if self._states:
            self._swap_in(variant)
        elif variant == BASE:
            if self.adapter_names:
                self.pipe.disable_lora()
        else:
            self.pipe.enable_lora()
            self.pipe.set_adapters([self.adapter_names[variant]])
        if self.spec.fuse_qkv:  # the fused weights: base + this variant's LoRA, in place
            from selma_ray.images.generate import sync_fused_qkv

            sync_fused_qkv(self.pipe)
        self._active = variant
        seconds = time.perf_counter() - t0
        self.stats["switches"] += 1
        self.stats["switch_seconds"] += seconds
        return seconds

    def draw(self, job: GenerationJob) -> np.ndarray:
        """uint8 images ``(n, H, W, 3)`` of ``job`` (image i from seed ``job.seeds[i]``)."""
        import numpy as np
        import torch

        from selma_ray.images.generate import to_uint8

        if self.torch_threads and torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        with self._lock:
            self.activate(job.variant)
            t0 = time.perf_counter()
            generators = [torch.Generator(self.device).manual_seed(int(s)) for s in job.seeds]
            negative = job.negative_prompt or None
            with torch.inference_mode():
                out = self.pipe(
                    prompt=[job.prompt] * job.n,
                    negative_prompt=[negative] * job.n if negative else None,
                    generator=generators,
                    num_inference_steps=job.num_inference_steps,
                    guidance_scale=job.guidance_scale,
                    height=job.height,
                    width=job.width,
                    output_type="np",
                )
            self.stats["requests"] += 1
            self.stats["images"] += job.n
            self.stats["generate_seconds"] += time.perf_counter() - t0
        return to_uint8(np.asarray(out.images))

    def generate(self, job: GenerationJob | Mapping[str, Any]) -> list[bytes]:
        """PNG bytes of each image of ``job``."""
        from selma_ray.images.generate import encode_image

        if not isinstance(job, GenerationJob):
            job = GenerationJob.from_dict(job)
        return [encode_image(pixels, "png") for pixels in self.draw(job)]


class PipelineWorker:
    """A :class:`VariantPipeline` behind ONE worker thread, awaitable from an event loop.

    Generations run one at a time, off the loop (which keeps answering health checks and
    queueing requests); :meth:`generate` has the signature the HTTP app takes as its backend.
    """

    def __init__(self, engine: VariantPipeline) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="selma-generate")

    async def generate(self, job: GenerationJob | Mapping[str, Any]) -> list[bytes]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.engine.generate, job)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- demo run dirs


def make_random_run_dir(
    run_dir: str,
    *,
    base_model: str = "tiny:sd",
    skills: Sequence[str] = ("countbench", "whoops"),
    merged: bool = True,
    rank: int = 4,
    scale: float = 0.3,
    seed: int = 0,
    serve_overrides: Mapping[str, Any] | None = None,
) -> ModelSpec:
    """Write a servable run directory with random LoRAs (tests, benchmarks, smoke checks).

    The run's config (images.model = ``base_model``), one random expert per skill and, if
    ``merged``, a random merged LoRA, each saved with :func:`~selma_ray.training.lora.save_lora`
    with its metadata file. Every LoRA tensor (A and B) is ``scale * N(0, 1)`` so each variant
    visibly changes images.
    """
    import torch
    from diffusers import UNet2DConditionModel

    from selma_ray.config import SelmaConfig
    from selma_ray.models import resolve_model
    from selma_ray.training.lora import add_lora, save_lora

    rd = RunDir(run_dir)
    data: dict[str, Any] = {
        "images": {"model": base_model},
        "prompts": {"skills": list(skills)},
        "serve": dict(serve_overrides or {}),
    }
    cfg = SelmaConfig.model_validate(data)
    rd.write_text(cfg.to_yaml(), *layout.config())
    unet = UNet2DConditionModel.from_pretrained(resolve_model(base_model), subfolder="unet")
    add_lora(unet, rank, float(rank))
    targets = [(layout.expert_lora(s), layout.expert_meta(s), {"skill": s}) for s in skills]
    if merged:
        meta = {"method": "random", "experts": list(skills)}
        targets.append((layout.merged_lora(), layout.merged_meta(), meta))
    for i, (lora, meta_file, meta) in enumerate(targets):
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        with torch.no_grad():
            for name, p in unet.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * scale)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_lora(unet, tmp)
            with open(path, "rb") as f:
                rd.write_bytes(f.read(), *lora)
        rd.write_json({**meta, "base_model": base_model, "weights": lora[-1]}, *meta_file)
    return discover_variants(rd, cfg)
