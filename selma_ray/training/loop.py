"""Owns the expert training loop: one skill's LoRA, trained, validated, checkpointed, exported.

:func:`train_expert` runs without Ray. The Ray Train layer calls it inside each worker with
``reporter`` (forwarding to ``ray.train.report``), ``wrap_model`` (``prepare_model`` for DDP),
``world_size`` / ``rank`` and ``resume`` (from the latest Ray checkpoint); locally,
:class:`LocalReporter` keeps the checkpoints in a directory.

Determinism. Everything random is a pure function of ``(seed, step)``, never of a stateful
generator: the data order (one seeded permutation per epoch over the training rows), each
sample's flip, timestep and noise (drawn once per optimizer step for all its samples), the
fixed validation noise and timesteps. Resuming from a step-``k`` checkpoint therefore replays
exactly what an uninterrupted run does after step ``k``, and the result depends neither on how
many workers share the work nor on how a step's samples are cut into micro-batches: 16 x 4 and
64 x 1 train on the same samples with the same draws (equal up to float summation order).

Batches. ``cfg.batch_size`` is the *global* micro-batch: with ``world_size`` workers each rank
takes a disjoint contiguous slice of it (``batch_size >= world_size`` is required), and the
loss is scaled so that DDP's gradient average is exactly the mean over the global batch. One
optimizer step consumes ``batch_size * gradient_accumulation`` samples.

Speed (CUDA). The step never waits on the host: the cache lives on the GPU, the draws are
copied from pinned memory without blocking, and the loss stays on the device until the step
ends. ``cfg.mixed_precision`` (bf16: no loss scaling), ``gradient_checkpointing`` (off where
memory allows: a third fewer FLOPs), ``compile`` (the UNet, in place), ``channels_last`` and
``fused_optimizer`` (fused AdamW) are the knobs ``benchmarks/train_step.py --ladder`` measures
one by one.

Reports. Every ``cfg.checkpoint_every`` steps and after the last step, the loop computes the
validation loss (held-out prompts, or a fixed slice of the training pairs when nothing is held
out: ``val_source`` says which) and calls ``reporter.report(metrics, checkpoint_dir)`` on every
rank; rank 0 passes a temporary directory (valid only during the call: copy what you keep) that
:meth:`ExpertCheckpoint.from_dir` reads back, other ranks pass None.

Outputs (rank 0), in the skill's expert directory (:func:`selma_ray.layout.expert_dir`): the
LoRA of the step with the lowest validation loss (ties keep the earlier step;
:func:`~selma_ray.layout.expert_lora`), its metadata (:func:`~selma_ray.layout.expert_meta`)
and the loss curves (:func:`~selma_ray.layout.expert_curves`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from selma_ray import layout
from selma_ray.training.components import Components, load_components
from selma_ray.training.data import (
    files_hash,
    job_holdout,
    load_job_pairs,
    subseed,
    validation_slice,
)
from selma_ray.training.inputs import EncodedInputs, OnTheFlyInputs, encode_text, to_device
from selma_ray.training.lora import (
    add_lora,
    load_lora_state,
    lora_state,
    noise_pred_loss,
    save_lora,
    unwrap,
)
from selma_ray.training.store import cache_uri, load_or_build_cache

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from torch import nn

    from selma_ray.config import TrainConfig
    from selma_ray.storage import RunDir
    from selma_ray.training.data import Pair

__all__ = [
    "VAL_TIMESTEPS",
    "ExpertCheckpoint",
    "ExpertResult",
    "LocalReporter",
    "Reporter",
    "shard_bounds",
    "train_expert",
]

log = logging.getLogger(__name__)

#: Fixed timesteps per validation sample (stratified over the schedule).
VAL_TIMESTEPS = 4
ADAM_BETAS = (0.9, 0.999)
ADAM_WEIGHT_DECAY = 1e-2
ADAM_EPS = 1e-8
MAX_GRAD_NORM = 1.0

_STATE_FILE = "state.json"
#: The file a checkpoint folder is written with last: its step is there.
CHECKPOINT_STATE_FILE = _STATE_FILE
_LORA_FILE = "lora.safetensors"
_BEST_FILE = "best_lora.safetensors"
_OPTIM_FILE = "optimizer.pt"
_RNG_FILE = "rng.pt"
CHECKPOINT_FORMAT = 1
#: Keyword arguments of ``nn.Module.compile`` for ``train.compile`` (tests choose a backend).
COMPILE_OPTIONS: dict[str, Any] = {}
#: How an expert's step is chosen (``expert.json`` "selection").
SELECTION = "lowest validation loss at checkpoint steps (ties keep the earlier step)"
#: The identity fields every checkpoint records (the others joined later; see ``resume_from``).
_FIRST_IDENTITY = frozenset(
    {"skill", "seed", "files_hash", "rank", "alpha", "text_encoder_lora", "base_model"}
)


# --------------------------------------------------------------------------- interfaces


class Reporter(Protocol):
    """Receives metrics (and, on rank 0, a checkpoint directory) at every checkpoint step."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...


@dataclass
class ExpertResult:
    """What :func:`train_expert` produced."""

    skill: str
    best_step: int
    best_val_loss: float
    steps: int
    out_dir: str


@dataclass
class ExpertCheckpoint:
    """A resumable training state: LoRA, optimizer, step, RNG, curves and the best step so far."""

    step: int
    lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    #: LoRA of the best step so far, when that is not ``step`` itself.
    best_lora: dict[str, torch.Tensor] | None = None

    def to_dir(self, path: str) -> str:
        """Write the checkpoint files into the local directory ``path``."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        save_file(_contiguous(self.lora), os.path.join(path, _LORA_FILE))
        if self.best_lora is not None:
            save_file(_contiguous(self.best_lora), os.path.join(path, _BEST_FILE))
        torch.save(
            {"optimizer": self.optimizer, "scaler": self.scaler}, os.path.join(path, _OPTIM_FILE)
        )
        torch.save(self.rng, os.path.join(path, _RNG_FILE))
        state = {**self.state, "step": self.step, "format": CHECKPOINT_FORMAT}
        with open(os.path.join(path, _STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2)
        return path

    @classmethod
    def from_dir(cls, path: str) -> ExpertCheckpoint:
        """Read a checkpoint written by the training loop (a local directory)."""
        from safetensors.torch import load_file

        state_file = os.path.join(path, _STATE_FILE)
        if not os.path.isfile(state_file):
            msg = (
                f"{path!r} is not an expert checkpoint (no {_STATE_FILE}); pass a directory "
                "that train_expert reported"
            )
            raise ValueError(msg)
        with open(state_file, encoding="utf-8") as f:
            state = json.load(f)
        best_file = os.path.join(path, _BEST_FILE)
        optim: dict[str, Any] = {}
        if os.path.isfile(os.path.join(path, _OPTIM_FILE)):
            # a GPU run's optimizer state resumes on any device (load_state_dict moves it)
            optim = torch.load(
                os.path.join(path, _OPTIM_FILE), map_location="cpu", weights_only=True
            )
        rng: dict[str, Any] = {}
        if os.path.isfile(os.path.join(path, _RNG_FILE)):
            rng = torch.load(os.path.join(path, _RNG_FILE), map_location="cpu", weights_only=True)
        return cls(
            step=int(state["step"]),
            lora=load_file(os.path.join(path, _LORA_FILE)),
            optimizer=optim.get("optimizer"),
            scaler=optim.get("scaler"),
            rng=rng,
            state=state,
            best_lora=load_file(best_file) if os.path.isfile(best_file) else None,
        )


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


class LocalReporter:
    """A :class:`Reporter` without Ray: records metrics, copies checkpoints into a directory.

    ``directory`` is any fsspec URI (a local path, ``s3://...``): checkpoints go to
    ``<directory>/checkpoint_<step:06d>``, their state file last, so a folder whose state file
    reads is whole (:func:`~selma_ray.training.resume.checkpoint_steps`). With ``num_to_keep``
    only the newest that many are kept.
    """

    def __init__(self, directory: str | None = None, num_to_keep: int | None = None) -> None:
        from selma_ray.storage import open_filesystem

        self.directory = directory or tempfile.mkdtemp(prefix="selma-expert-ckpt-")
        self.fs, self.root = open_filesystem(self.directory)
        self.fs.makedirs(self.root, exist_ok=True)
        self.num_to_keep = num_to_keep
        self.history: list[dict[str, Any]] = []
        self.checkpoints: list[tuple[int, str]] = []

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir is None:
            return
        step = int(metrics["step"])
        dest = posixpath.join(self.root, f"checkpoint_{step:06d}")
        if self.fs.exists(dest):
            self.fs.rm(dest, recursive=True)
        files = sorted(
            os.path.relpath(os.path.join(folder, name), checkpoint_dir)
            for folder, _, names in os.walk(checkpoint_dir)
            for name in names
        )
        files.sort(key=lambda rel: rel == CHECKPOINT_STATE_FILE)  # the state file last
        for rel in files:
            target = posixpath.join(dest, *rel.split(os.sep))
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            self.fs.put_file(os.path.join(checkpoint_dir, rel), target)
        self.checkpoints = [(s, p) for s, p in self.checkpoints if s != step] + [(step, dest)]
        if self.num_to_keep is not None:
            while len(self.checkpoints) > self.num_to_keep:
                _, old = self.checkpoints.pop(0)
                self.fs.rm(old, recursive=True)

    def checkpoint_path(self, step: int) -> str:
        for s, p in self.checkpoints:
            if s == step:
                return p
        msg = f"no checkpoint for step {step}; kept: {[s for s, _ in self.checkpoints]}"
        raise KeyError(msg)

    def checkpoint(self, step: int) -> ExpertCheckpoint:
        from selma_ray.training.resume import load_checkpoint

        return load_checkpoint(self.fs, self.checkpoint_path(step))

    def latest(self) -> ExpertCheckpoint | None:
        return self.checkpoint(self.checkpoints[-1][0]) if self.checkpoints else None


# --------------------------------------------------------------------------- helpers


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.mixed_precision == "no":
        return None
    return torch.float16 if cfg.mixed_precision == "fp16" else torch.bfloat16


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, ValueError):  # other GPU count: skip
            torch.cuda.set_rng_state_all(state["cuda"])


def shard_bounds(batch_size: int, world_size: int, rank: int) -> tuple[int, int]:
    """The ``[lo, hi)`` slice of a global batch that ``rank`` trains on (contiguous, disjoint)."""
    return rank * batch_size // world_size, (rank + 1) * batch_size // world_size


def _dist_ready(world_size: int) -> bool:
    import torch.distributed as dist

    return world_size > 1 and dist.is_available() and dist.is_initialized()


class _SampleOrder:
    """Global sample index -> training row: one seeded permutation per epoch."""

    def __init__(self, rows: Sequence[int], seed: int) -> None:
        self.rows = list(rows)
        self.seed = seed
        self._epoch = -1
        self._perm: list[int] = []

    def __call__(self, index: int) -> int:
        epoch, pos = divmod(index, len(self.rows))
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(subseed(self.seed, "order", epoch))
            self._perm = torch.randperm(len(self.rows), generator=gen).tolist()
            self._epoch = epoch
        return self.rows[self._perm[pos]]


# --------------------------------------------------------------------------- the trainer


class _Trainer:
    """State of one expert's training run (see :func:`train_expert`)."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        skill: str,
        run_dir: RunDir,
        base_model: str,
        cache_dir: str | None,
        seed: int,
        device: torch.device,
        world_size: int,
        rank: int,
        model_cache_dir: str | None,
        sources: Sequence[str] = (),
    ) -> None:
        self.cfg = cfg
        self.skill = skill
        self.sources = tuple(sources)
        self.run_dir = run_dir
        self.base_model = base_model
        self.seed = seed
        self.device = device
        self.world_size = world_size
        self.rank = rank
        self.amp_dtype = _amp_dtype(cfg, device)
        self.te_lora = cfg.text_encoder_lora
        self.timings: dict[str, float] = {}
        with self._timed("load_pairs_s"):
            train_pairs, val_pairs = self._load_pairs()
        with self._timed("load_model_s"):
            self._load_model(model_cache_dir)
        with self._timed("inputs_s"):
            self.inputs = self._prepare_inputs(cache_dir)
        self._choose_rows(train_pairs, val_pairs)
        self._add_lora()
        self._make_optimizer()
        self._start_progress()

    # -- setup steps, in the order __init__ runs them
    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        """Record the seconds the block took as ``timings[name]`` (when it succeeds)."""
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0

    def _load_pairs(self) -> tuple[list[Pair], list[Pair]]:
        """Read the skill's pairs; returns the (train, held-out) split of them."""
        self.pairs, self.skipped = load_job_pairs(self.run_dir, self.skill, self.sources)
        split = job_holdout(self.pairs, self.cfg.validation_fraction, self.seed, self.sources)
        self.image_models = sorted({p.model for p in self.pairs if p.model})
        self.files_hash = files_hash(self.pairs)
        return split

    def _load_model(self, model_cache_dir: str | None) -> None:
        """Load the base model's frozen components on the CPU (UNet in the AMP dtype)."""
        from selma_ray.models import resolve_model

        self.model_path = resolve_model(self.base_model, model_cache_dir)
        self.comps: Components = load_components(
            self.model_path, device="cpu", unet_dtype=self.amp_dtype or torch.float32
        )
        self.sdxl = self.comps.kind == "sdxl"

    def _encoders_on_device(self) -> Components:
        """The components, with the VAE and text encoder(s) moved to the training device."""
        for m in (self.comps.vae, *self.comps.text_encoders):
            m.to(self.device)
        return self.comps

    def _prepare_inputs(self, cache_dir: str | None) -> EncodedInputs | OnTheFlyInputs:
        """The training inputs: encoded once (the cache) or every batch (``cache_inputs`` off)."""
        cfg = self.cfg
        self.cache_info: dict[str, Any] = {"enabled": cfg.cache_inputs}
        if cfg.cache_inputs:
            return self._cached_inputs(cache_dir or cache_uri(self.run_dir, self.skill))
        return OnTheFlyInputs(
            self._encoders_on_device(),
            self.pairs,
            resolution=cfg.resolution,
            center_crop=cfg.center_crop,
            random_flip=cfg.random_flip,
            seed=self.seed,
        )

    def _cached_inputs(self, uri: str) -> EncodedInputs:
        """Read (or build, and on rank 0 write) the input cache at ``uri``."""
        cfg, device = self.cfg, self.device
        # usually built already by the stage's encoding pass; the encoders only move to the
        # device when this worker must build it
        inputs, info = load_or_build_cache(
            uri,
            self.pairs,
            self._encoders_on_device,
            model=self.base_model,
            resolution=cfg.resolution,
            center_crop=cfg.center_crop,
            random_flip=cfg.random_flip,
            seed=self.seed,
            write=self.rank == 0,
        )
        if device.type == "cuda":
            inputs = inputs.to(device)
        self.cache_info.update(uri=info.uri, built=info.built, seconds=round(info.seconds, 3))
        # the encoded bytes are no longer needed; neither are the encoders on the GPU
        self.pairs = [dataclasses.replace(p, data=b"") for p in self.pairs]
        if device.type == "cuda":
            idle = [self.comps.vae] + ([] if self.te_lora else self.comps.text_encoders)
            for m in idle:
                m.to("cpu")
        return inputs

    def _choose_rows(self, train_pairs: list[Pair], val_pairs: list[Pair]) -> None:
        """Training rows, and validation rows: the held-out pairs, else a training slice."""
        self.train_rows = self.inputs.rows_of([p.file_name for p in train_pairs])
        if val_pairs:
            self.val_rows = self.inputs.rows_of([p.file_name for p in val_pairs])
            self.val_source = "holdout"
        else:
            self.val_rows = self.train_rows[: validation_slice(len(self.train_rows))]
            self.val_source = "train_slice"
            log.warning(
                "skill %r: no held-out prompts (validation_fraction=%s, %d prompt(s)); the "
                "validation loss uses a fixed slice of %d training pair(s)",
                self.skill,
                self.cfg.validation_fraction,
                len({p.prompt_id for p in self.pairs}),
                len(self.val_rows),
            )
        self.n_train_prompts = len({p.prompt_id for p in train_pairs})
        self.n_val_prompts = len({p.prompt_id for p in val_pairs})
        self.val_prompt_ids = sorted({p.prompt_id for p in val_pairs})

    def _add_lora(self) -> None:
        """LoRA layers, initialised on the CPU from the seed (so not device-dependent), then
        the trained models on the device (with gradient checkpointing when asked, on CUDA)."""
        cfg, device = self.cfg, self.device
        te = self.comps.text_encoder if self.te_lora else None
        te2 = self.comps.text_encoder_2 if self.te_lora else None
        for m in (te, te2):
            if m is not None:
                m.to("cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(subseed(self.seed, "lora-init") % (2**31))
            self.params = add_lora(self.comps.unet, cfg.rank, cfg.alpha, te, te2)
        self.lora_models: tuple[nn.Module | None, nn.Module | None] = (te, te2)
        self.comps.unet.to(device)
        for m in (te, te2):
            if m is not None:
                m.to(device)
        if cfg.channels_last:
            self.comps.unet.to(memory_format=torch.channels_last)
        if cfg.gradient_checkpointing and device.type == "cuda":
            self.comps.unet.enable_gradient_checkpointing()
            for m in (te, te2):
                if m is not None:
                    m.gradient_checkpointing_enable()
                    # transformers checkpoints a layer only in training mode (CLIP's dropout
                    # is 0, so the mode changes nothing else)
                    m.train()
        if cfg.compile:  # in place: parameter names (the LoRA state's keys) stay as they are
            self.comps.unet.compile(**COMPILE_OPTIONS)

    def _make_optimizer(self) -> None:
        """AdamW over the LoRA parameters (fused with ``fused_optimizer``); a gradient scaler
        for fp16."""
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=self.cfg.learning_rate,
            betas=ADAM_BETAS,
            weight_decay=ADAM_WEIGHT_DECAY,
            eps=ADAM_EPS,
            fused=self.cfg.fused_optimizer or None,
        )
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        )

    def _load_optimizer(self, state: dict[str, Any]) -> None:
        """Load an optimizer state saved by any run, keeping THIS run's implementation: torch
        restores the saved ``fused`` / ``foreach`` flags, and fused AdamW keeps its step counts
        on the parameters' device (the others on the CPU)."""
        self.optimizer.load_state_dict(state)
        fused = bool(self.cfg.fused_optimizer)
        for group in self.optimizer.param_groups:
            group["fused"], group["foreach"] = (True, None) if fused else (None, None)
            for p in group["params"]:
                st = self.optimizer.state.get(p)
                if st and "step" in st:
                    step = float(st["step"])
                    where = p.device if fused else torch.device("cpu")
                    st["step"] = torch.tensor(step, dtype=torch.float32, device=where)

    def _start_progress(self) -> None:
        """Step 0: empty curves, no best step yet, the seeded sample order, unwrapped models."""
        self.step = 0
        self.train_curve: list[list[float]] = []
        self.val_curve: list[list[float]] = []
        self.best_step = 0
        self.best_val = math.inf
        self.selection = SELECTION
        self.best_lora: dict[str, torch.Tensor] | None = None
        self.resumed_from: int | None = None
        self.order = _SampleOrder(self.train_rows, self.seed)
        self.model: nn.Module = self.comps.unet
        self.te_models: tuple[nn.Module | None, nn.Module | None] = self.lora_models

    # -- state
    def lora(self) -> dict[str, torch.Tensor]:
        te, te2 = self.lora_models
        return lora_state(self.comps.unet, te, te2)

    def load_lora(self, state: dict[str, torch.Tensor]) -> None:
        te, te2 = self.lora_models
        load_lora_state(self.comps.unet, state, te, te2)

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must have been made for to be resumed by this run: the inputs, the
        LoRA's shape, and what the remaining steps' samples and updates depend on (the model,
        the held-out split, the crops, the global batch, the learning rate)."""
        cfg = self.cfg
        return {
            "skill": self.skill,
            "seed": self.seed,
            "files_hash": self.files_hash,
            "rank": cfg.rank,
            "alpha": cfg.alpha,
            "text_encoder_lora": self.te_lora,
            "base_model": self.base_model,
            "resolution": cfg.resolution,
            "center_crop": cfg.center_crop,
            "random_flip": cfg.random_flip,
            "validation_fraction": cfg.validation_fraction,
            "global_batch": cfg.batch_size * cfg.gradient_accumulation,
            "learning_rate": cfg.learning_rate,
        }

    def resume_from(self, ckpt: ExpertCheckpoint) -> None:
        st = ckpt.state
        checks = self.identity()
        # checkpoints written before a field joined the identity do not record it
        diffs = [
            f"{k}: {st.get(k)!r} -> {v!r}"
            for k, v in checks.items()
            if st.get(k) != v and (k in st or k in _FIRST_IDENTITY)
        ]
        if diffs:
            msg = (
                f"skill {self.skill!r}: cannot resume from the step-{ckpt.step} checkpoint, it "
                f"was made for other inputs ({'; '.join(diffs)}); start without resume"
            )
            raise ValueError(msg)
        self.load_lora(ckpt.lora)
        if ckpt.optimizer is not None:
            self._load_optimizer(ckpt.optimizer)
        if self.scaler is not None and ckpt.scaler:
            self.scaler.load_state_dict(ckpt.scaler)
        _set_rng_state(ckpt.rng)
        self.step = ckpt.step
        self.resumed_from = ckpt.step
        self.train_curve = [list(x) for x in st.get("train_curve", [])]
        self.val_curve = [list(x) for x in st.get("val_curve", [])]
        self.best_step = int(st.get("best_step", 0))
        best_val = st.get("best_val_loss")
        self.best_val = float(best_val) if best_val is not None else math.inf
        if self.best_step == ckpt.step:
            self.best_lora = {k: v.clone() for k, v in ckpt.lora.items()}
        else:
            self.best_lora = ckpt.best_lora

    def wrap(self, wrap_model: Callable[[nn.Module], nn.Module] | None) -> None:
        if wrap_model is None:
            return
        self.model = wrap_model(self.comps.unet)
        self.te_models = tuple(  # type: ignore[assignment]
            wrap_model(m) if m is not None else None for m in self.lora_models
        )

    def checkpoint(self) -> ExpertCheckpoint:
        lora = self.lora()
        state = {
            **self.identity(),
            "train_curve": self.train_curve,
            "val_curve": self.val_curve,
            "best_step": self.best_step,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "val_source": self.val_source,
        }
        return ExpertCheckpoint(
            step=self.step,
            lora=lora,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            rng=_rng_state(),
            state=state,
            best_lora=self.best_lora if self.best_step != self.step else None,
        )

    # -- compute
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _per_sample_loss(
        self,
        model: nn.Module,
        rows: Sequence[int],
        flips: Sequence[bool],
        timesteps: torch.Tensor,
        noise_for: Callable[[torch.Size], torch.Tensor],
        te_models: tuple[nn.Module | None, nn.Module | None],
    ) -> torch.Tensor:
        batch = self.inputs.batch(rows, flips, self.device, with_text_states=not self.te_lora)
        embeds, pooled = batch.encoder_hidden_states, batch.pooled_embeds
        with self._autocast():
            if self.te_lora:
                embeds, pooled = encode_text(
                    self.comps, batch.input_ids, batch.input_ids_2, te_models[0], te_models[1]
                )
            if embeds is None:  # pragma: no cover - guarded by with_text_states
                msg = "no text states in the batch"
                raise RuntimeError(msg)
            latents = batch.latents
            noise = to_device(noise_for(latents.shape), self.device)
            if self.cfg.channels_last:
                latents = latents.contiguous(memory_format=torch.channels_last)
                noise = noise.contiguous(memory_format=torch.channels_last)
            return noise_pred_loss(
                model,
                self.comps.scheduler,
                latents,
                embeds,
                noise,
                to_device(timesteps, self.device),
                added_cond_kwargs=batch.added_cond_kwargs(pooled),
                reduction="none",
            )

    def train_step(self) -> float:
        """One optimizer step (``gradient_accumulation`` micro-batches); returns the mean loss."""
        return float(self.train_step_lazy())

    def _step_draws(self, step: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flip and timestep of each of optimizer step ``step``'s ``n`` samples."""
        gen = torch.Generator().manual_seed(subseed(self.seed, "step", step))
        flip_draw = torch.rand(n, generator=gen) < 0.5
        flips = flip_draw if self.cfg.random_flip else torch.zeros(n, dtype=torch.bool)
        n_timesteps = self.comps.scheduler.config.num_train_timesteps
        return flips, torch.randint(0, n_timesteps, (n,), generator=gen)

    def train_step_lazy(self) -> torch.Tensor:
        """:meth:`train_step` with the mean loss left on the device (a 0-d float64 tensor):
        reading it waits for the step's kernels, so :func:`_train` reads them at reports."""
        cfg = self.cfg
        step = self.step + 1
        b, w = cfg.batch_size, self.world_size
        lo, hi = shard_bounds(b, w, self.rank)
        accum = cfg.gradient_accumulation
        n = b * accum  # the step's samples; their draws do not depend on the micro-batch cut
        flips_all, timesteps_all = self._step_draws(step, n)
        noise_seed = subseed(self.seed, "noise", step)
        noise_all: list[torch.Tensor] = []  # all n samples' noise, drawn at the first need

        def noise_for(shape: torch.Size, first: int) -> torch.Tensor:
            if not noise_all:
                g = torch.Generator().manual_seed(noise_seed)
                noise_all.append(torch.randn((n, *shape[1:]), generator=g))
            return noise_all[0][first + lo : first + hi]

        scale = w / n  # DDP averages over ranks: the result is the global mean
        self.comps.unet.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for micro in range(accum):
            first = micro * b  # this micro-batch's first sample in the step
            rows = [self.order((step - 1) * n + first + j) for j in range(b)][lo:hi]
            sync = micro == accum - 1
            no_sync = getattr(self.model, "no_sync", None)
            ctx = no_sync() if (not sync and no_sync is not None) else contextlib.nullcontext()
            with ctx:
                per = self._per_sample_loss(
                    self.model,
                    rows,
                    flips_all[first + lo : first + hi].tolist(),
                    timesteps_all[first + lo : first + hi],
                    lambda shape, first=first: noise_for(shape, first),
                    self.te_models,
                )
                loss = per.sum() * scale
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            loss_sum += per.detach().double().sum()
        self._sync_grads()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step = step
        count = torch.full((), float((hi - lo) * accum), dtype=torch.float64, device=self.device)
        total = torch.stack([loss_sum, count])
        if _dist_ready(self.world_size):
            import torch.distributed as dist

            dist.all_reduce(total)
        return total[0] / total[1]

    def _sync_grads(self) -> None:
        """Average gradients across ranks when the model is not DDP-wrapped."""
        if not _dist_ready(self.world_size) or hasattr(self.model, "no_sync"):
            return
        import torch.distributed as dist

        for p in self.params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(self.world_size)

    @torch.no_grad()
    def validate(self) -> float:
        """Mean loss over the validation rows at fixed timesteps and noise (same every call)."""
        n_timesteps = self.comps.scheduler.config.num_train_timesteps
        fixed_t = [int((k + 0.5) * n_timesteps / VAL_TIMESTEPS) for k in range(VAL_TIMESTEPS)]
        unet = unwrap(self.model)
        unet.eval()
        te = tuple(unwrap(m) if m is not None else None for m in self.te_models)
        keys = [self.inputs.keys[r] for r in self.val_rows]
        total, count = 0.0, 0
        bs = max(1, self.cfg.batch_size)
        jobs = [(r, k, t) for r, k in zip(self.val_rows, keys, strict=True) for t in fixed_t]
        for start in range(0, len(jobs), bs):
            chunk = jobs[start : start + bs]

            def noise_for(shape: torch.Size, chunk: list[Any] = chunk) -> torch.Tensor:
                out = []
                for _, key, t in chunk:
                    g = torch.Generator().manual_seed(subseed(self.seed, "val-noise", key, t))
                    out.append(torch.randn(tuple(shape[1:]), generator=g))
                return torch.stack(out)

            per = self._per_sample_loss(
                unet,
                [r for r, _, _ in chunk],
                [False] * len(chunk),
                torch.tensor([t for _, _, t in chunk], dtype=torch.long),
                noise_for,
                te,  # type: ignore[arg-type]
            )
            total += float(per.double().sum())
            count += len(chunk)
        return total / count


# --------------------------------------------------------------------------- entry point


def _check_args(cfg: TrainConfig, world_size: int, rank: int) -> None:
    if cfg.max_steps < 1:
        msg = f"train.max_steps must be >= 1, got {cfg.max_steps}: training would do nothing"
        raise ValueError(msg)
    if world_size < 1 or not 0 <= rank < world_size:
        msg = f"need world_size >= 1 and 0 <= rank < world_size, got {world_size} / {rank}"
        raise ValueError(msg)
    if cfg.batch_size < world_size:
        msg = (
            f"train.batch_size ({cfg.batch_size}) is the global batch and must be >= the "
            f"number of workers ({world_size}); raise train.batch_size or lower train.num_workers"
        )
        raise ValueError(msg)
    if cfg.checkpoint_every < 1:
        msg = f"train.checkpoint_every must be >= 1, got {cfg.checkpoint_every}"
        raise ValueError(msg)


def train_expert(
    cfg: TrainConfig,
    *,
    skill: str,
    run_dir_uri: str,
    base_model: str,
    cache_dir: str | None = None,
    seed: int = 0,
    reporter: Reporter | None = None,
    resume: ExpertCheckpoint | None = None,
    device: str | torch.device | None = None,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    world_size: int = 1,
    rank: int = 0,
    model_cache_dir: str | None = None,
    sources: Sequence[str] = (),
) -> ExpertResult:
    """Train the LoRA expert of ``skill`` on its imagefolder and export the best step.

    ``cache_dir``: URI of the encoded-input cache (default: the skill's, in the run directory:
    :func:`~selma_ray.training.store.cache_uri`).
    ``model_cache_dir``: where ``tiny:*`` base models are built (default ``$SELMA_RAY_CACHE``).
    ``sources``: train on the union of these skills' pairs instead of ``skill``'s own (the
    joint multi-skill baseline, saved as the expert ``skill``; see
    :func:`~selma_ray.training.data.load_job_pairs`).
    ``device``: default CUDA when available. Mixed precision and gradient checkpointing apply
    on CUDA only; ``compile``, ``channels_last`` and ``fused_optimizer`` everywhere. See the
    module docstring for determinism, sharding and reporting.
    """
    from selma_ray.storage import RunDir

    _check_args(cfg, world_size, rank)
    started = time.perf_counter()
    reporter = reporter or LocalReporter()
    dev = _pick_device(device)
    trainer = _Trainer(
        cfg,
        skill=skill,
        run_dir=RunDir(run_dir_uri),
        base_model=base_model,
        cache_dir=cache_dir,
        seed=seed,
        device=dev,
        world_size=world_size,
        rank=rank,
        model_cache_dir=model_cache_dir,
        sources=sources,
    )
    if resume is not None:
        trainer.resume_from(resume)
        log.info("skill %r: resumed at step %d of %d", skill, trainer.step, cfg.max_steps)
    trainer.wrap(wrap_model)
    _train(trainer, reporter)
    _select_without_finite_validation(trainer)
    if rank == 0:
        _export(trainer, cfg, time.perf_counter() - started)
    return ExpertResult(
        skill=skill,
        best_step=trainer.best_step,
        best_val_loss=trainer.best_val,
        steps=trainer.step,
        out_dir=trainer.run_dir.url(*layout.expert_dir(skill)),
    )


def _train(trainer: _Trainer, reporter: Reporter) -> None:
    """Optimizer steps up to ``max_steps``; every ``checkpoint_every`` (and the last) step,
    validate and report (:func:`_checkpoint_step`)."""
    cfg = trainer.cfg
    interval_start = time.perf_counter()
    train_start = time.perf_counter()
    # wall-clock bounds of this process's training steps: comparable across workers and nodes
    trainer.timings["train_started_at"] = time.time()
    steps_run = 0
    pending: list[torch.Tensor] = []  # the interval's losses, still on the device
    while trainer.step < cfg.max_steps:
        pending.append(trainer.train_step_lazy())
        steps_run += 1
        if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.max_steps:
            first = trainer.step - len(pending) + 1
            losses = torch.stack(pending).cpu().tolist()  # waits for the steps
            pending = []
            trainer.train_curve.extend([first + i, loss] for i, loss in enumerate(losses))
            elapsed = time.perf_counter() - interval_start
            _checkpoint_step(trainer, reporter, losses, elapsed)
            interval_start = time.perf_counter()
    trainer.timings["train_s"] = time.perf_counter() - train_start
    trainer.timings["train_finished_at"] = time.time()
    trainer.timings["steps_run"] = steps_run


def _checkpoint_step(
    trainer: _Trainer, reporter: Reporter, interval_losses: list[float], elapsed: float
) -> None:
    """Validate, keep the best step's LoRA, report the interval's metrics (rank 0: checkpoint).

    ``interval_losses`` are the training losses of the steps since the last report, which took
    ``elapsed`` seconds.
    """
    cfg = trainer.cfg
    samples_per_step = cfg.batch_size * cfg.gradient_accumulation
    val = trainer.validate()
    trainer.val_curve.append([trainer.step, val])
    if not math.isfinite(val):
        log.warning(
            "skill %r step %d: validation loss %s; this step cannot be the expert",
            trainer.skill,
            trainer.step,
            val,
        )
    if val < trainer.best_val:
        trainer.best_val, trainer.best_step = val, trainer.step
        trainer.best_lora = trainer.lora()
    metrics = {
        "skill": trainer.skill,
        "step": trainer.step,
        "epoch": trainer.step * samples_per_step / len(trainer.train_rows),
        "train_loss": sum(interval_losses) / len(interval_losses),
        "val_loss": val,
        "best_step": trainer.best_step,
        "best_val_loss": trainer.best_val,
        "lr": cfg.learning_rate,
        "step_time_s": elapsed / len(interval_losses),
        "samples_per_s": samples_per_step * len(interval_losses) / max(elapsed, 1e-9),
        "done": trainer.step == cfg.max_steps,
    }
    log.info("skill %r step %d: %s", trainer.skill, trainer.step, metrics)
    _report(reporter, metrics, trainer if trainer.rank == 0 else None)


def _select_without_finite_validation(trainer: _Trainer) -> None:
    """When no checkpoint had a finite validation loss, the last step is the expert, if its
    LoRA is finite; a LoRA holding NaN or inf is refused (training diverged)."""
    if trainer.best_step:
        return
    bad = [k for k, v in trainer.lora().items() if not bool(torch.isfinite(v).all())]
    if bad:
        msg = (
            f"skill {trainer.skill!r}: training diverged: {len(bad)} LoRA tensor(s) hold NaN or "
            f"inf at step {trainer.step} (e.g. {bad[0]}) and no checkpoint had a finite "
            "validation loss; lower train.learning_rate or use train.mixed_precision=bf16, then "
            "rerun with --redo experts"
        )
        raise ValueError(msg)
    log.warning(
        "skill %r: no checkpoint had a finite validation loss (%s); the expert is the last "
        "step's LoRA",
        trainer.skill,
        ", ".join(f"step {s}: {v}" for s, v in trainer.val_curve) or "none",
    )
    trainer.best_step = trainer.step
    trainer.selection = "the last step: no checkpoint had a finite validation loss"


def _report(reporter: Reporter, metrics: dict[str, Any], trainer: _Trainer | None) -> None:
    if trainer is None:
        reporter.report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="selma-expert-ckpt-") as tmp:
        trainer.checkpoint().to_dir(tmp)
        reporter.report(metrics, tmp)


@contextlib.contextmanager
def _lora_swapped(trainer: _Trainer, state: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Temporarily load ``state`` (the best step) into the model."""
    if state is None:
        yield
        return
    current = trainer.lora()
    trainer.load_lora(state)
    try:
        yield
    finally:
        trainer.load_lora(current)


def _export(trainer: _Trainer, cfg: TrainConfig, seconds: float) -> None:
    """Write the expert: the best step's LoRA, the loss curves and the metadata."""
    run_dir, skill = trainer.run_dir, trainer.skill
    best = trainer.best_lora if trainer.best_step != trainer.step else None
    with _lora_swapped(trainer, best), tempfile.TemporaryDirectory() as tmp:
        te, te2 = trainer.lora_models
        path = save_lora(trainer.comps.unet, tmp, te, te2)
        run_dir.write_bytes(Path(path).read_bytes(), *layout.expert_lora(skill))
    curves = {"train_loss": trainer.train_curve, "val_loss": trainer.val_curve}
    run_dir.write_json(curves, *layout.expert_curves(skill))
    run_dir.write_json(_expert_meta(trainer, cfg, seconds), *layout.expert_meta(skill))


def _expert_meta(trainer: _Trainer, cfg: TrainConfig, seconds: float) -> dict[str, Any]:
    """The expert's metadata: what it was trained on and how, its curves and the chosen step."""
    return {
        "skill": trainer.skill,
        "sources": list(trainer.sources) or [trainer.skill],
        "base_model": trainer.base_model,
        "base_model_kind": trainer.comps.kind,
        "image_model": trainer.image_models[0] if len(trainer.image_models) == 1 else None,
        "image_models": trainer.image_models,
        "weights": layout.LORA_FILE,
        "rank": cfg.rank,
        "alpha": cfg.alpha,
        "text_encoder_lora": cfg.text_encoder_lora,
        "steps": trainer.step,
        "selected_step": trainer.best_step,
        "best_val_loss": trainer.best_val if math.isfinite(trainer.best_val) else None,
        "selection": trainer.selection,
        "val_source": trainer.val_source,
        "val_timesteps": VAL_TIMESTEPS,
        "prediction_type": trainer.comps.scheduler.config.prediction_type,
        "resumed_from": trainer.resumed_from,
        "mixed_precision": str(trainer.amp_dtype).removeprefix("torch.")
        if trainer.amp_dtype
        else "no",
        "device": str(trainer.device),
        "world_size": trainer.world_size,
        "seed": trainer.seed,
        "pairs": {
            "total": len(trainer.pairs),
            "train": len(trainer.train_rows),
            "val": len(trainer.val_rows),
            "train_prompts": trainer.n_train_prompts,
            "val_prompts": trainer.n_val_prompts,
        },
        # the prompts held out of training: stage 5 evaluates the skill prompts among them
        "held_out_prompts": trainer.val_prompt_ids,
        "skipped": trainer.skipped,
        "files_hash": trainer.files_hash,
        "cache": trainer.cache_info,
        "train_loss": trainer.train_curve,
        "val_loss": trainer.val_curve,
        "timings": {k: round(v, 3) for k, v in trainer.timings.items()} | {"total_s": seconds},
        "config": cfg.model_dump(mode="json"),
    }
