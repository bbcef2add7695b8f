"""SELMA stage 2 core (no Ray): image seeds, the row plan, and the diffusers image writer.

:func:`plan_rows` turns prompt rows into one row per (prompt, image index) with a seed derived
from (run seed, prompt id, index) alone. :class:`ImageGenerator` is a callable class in the Ray
Data style (load the pipeline once in ``__init__``, map a batch of rows in ``__call__``) that
draws each row not yet on storage, encodes it and writes it atomically to
``<out_uri>/<skill>/<file_name>``.

Determinism: every image has its own ``torch.Generator`` seeded from its row. With
``exact_per_image`` (the default) every image is denoised in its own pipeline call, so its bytes
do not depend on batch size, actor count, retries or resumes (a batch of another size takes
other kernels, which can flip a uint8 rounding). With ``exact_per_image: false`` the images are
drawn ``images_per_call`` at a time in the calls of :func:`batch_plan`: each skill's rows in
(prompt id, image index) order, cut into groups of ``images_per_call``, a pure function of the
rows and that size. A group travels to the workers as one packed row (:func:`pack_groups`), so
no actor count or task split can break it up; a group with any image missing (a resume, a
retried task) is drawn whole, in the same positions, and only its missing images are written;
a short group is padded to ``images_per_call`` with copies of its first row, so every UNet call
has the same shape. An image's bytes then depend on its group (prompts, seeds, positions) only,
whatever the actor count, retries and resumes: on GPUs too, where fp16 kernels depend on a
sample's position in the batch (measured in ``benchmarks/batch_invariance.py``). Prompts are
encoded one at a time (CLIP's text encoder gives a prompt other states at other batch
positions). Bytes are always specific to the device type, dtype and library versions, and to
``images.channels_last`` / ``images.fuse_qkv`` (other kernels, other float sums: both are in the
stage fingerprint).

Safety checker (``images.safety_checker``): off, a pipeline that ships one is loaded without
it. On, the images it flags (which it blacks out) are not written: an empty marker
(:func:`selma_ray.layout.flagged_marker`) is written in their place, which counts as drawn, so
a resume does not draw them again. :class:`ImageGenerator` subclasses with ``drop_flagged``
False (the evaluation's) write the image as the pipeline returned it beside its marker.
"""

from __future__ import annotations

import io
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from selma_ray.config import ImagesConfig
from selma_ray.execution import batch_to_rows
from selma_ray.layout import flagged_marker
from selma_ray.seeds import derive_seed
from selma_ray.storage import RunDir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: ``ImagesConfig.image_format`` -> file extension.
EXTENSIONS: dict[str, str] = {"png": "png", "jpeg": "jpg"}
#: Image file extensions the stage recognises as its own outputs.
IMAGE_SUFFIXES: tuple[str, ...] = tuple(f".{e}" for e in sorted(set(EXTENSIONS.values())))
#: Columns of the imagefolder ``metadata.jsonl`` (one line per image), in this order.
METADATA_COLUMNS: tuple[str, ...] = (
    "file_name",
    "text",
    "skill",
    "prompt_id",
    "image_index",
    "seed",
    "model",
)
#: Columns :class:`ImageGenerator` returns per row (metadata + bookkeeping).
RESULT_COLUMNS: tuple[str, ...] = (
    *METADATA_COLUMNS,
    "written",
    "nsfw_flagged",
    "started_at",
    "finished_at",
    "worker_pid",
    "worker_init_started_at",
    "worker_ready_at",
)
JPEG_QUALITY = 95


def image_seed(run_seed: int, prompt_id: str, image_index: int) -> int:
    """The seed of image ``image_index`` of prompt ``prompt_id`` (independent of all else)."""
    return derive_seed(run_seed, "image", prompt_id, image_index)


def image_file_name(prompt_id: str, image_index: int, image_format: str = "png") -> str:
    if image_format not in EXTENSIONS:
        msg = f"images.image_format: {image_format!r} is not one of {sorted(EXTENSIONS)}"
        raise ValueError(msg)
    return f"{prompt_id}_{image_index}.{EXTENSIONS[image_format]}"


def plan_rows(
    prompt_rows: Iterable[dict[str, Any]],
    images_per_prompt: int,
    run_seed: int,
    image_format: str = "png",
) -> list[dict[str, Any]]:
    """One row per (prompt, image index): prompt_id, skill, prompt, image_index, seed, file_name."""
    if images_per_prompt < 1:
        msg = f"images.images_per_prompt must be >= 1 (got {images_per_prompt})"
        raise ValueError(msg)
    rows: list[dict[str, Any]] = []
    for p in prompt_rows:
        missing = [k for k in ("id", "skill", "prompt") if k not in p]
        if missing:
            msg = f"prompt row {p!r} lacks {missing}: expected rows written by the prompts stage"
            raise ValueError(msg)
        for index in range(images_per_prompt):
            rows.append(
                {
                    "prompt_id": str(p["id"]),
                    "skill": str(p["skill"]),
                    "prompt": str(p["prompt"]),
                    "image_index": index,
                    "seed": image_seed(run_seed, str(p["id"]), index),
                    "file_name": image_file_name(str(p["id"]), index, image_format),
                }
            )
    return rows


#: Row column naming a row's pipeline call in batched drawing (:func:`batch_plan`).
BATCH_COLUMN = "batch"
#: Column of a packed row (:func:`pack_groups`): the JSON list of its group's rows.
PACKED_COLUMN = "rows"


def batch_plan(rows: Iterable[dict[str, Any]], images_per_call: int) -> list[list[dict[str, Any]]]:
    """Batched drawing's pipeline calls: each skill's rows (skills in name order) sorted by
    (prompt id, image index) and cut into groups of ``images_per_call``, each row tagged with
    its group (``batch``: ``<skill>/<k>``). A pure function of the rows and the size."""
    if images_per_call < 1:
        msg = f"images.images_per_call must be >= 1 (got {images_per_call})"
        raise ValueError(msg)
    by_skill: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_skill.setdefault(str(r["skill"]), []).append(r)
    groups = []
    for skill in sorted(by_skill):
        ordered = sorted(by_skill[skill], key=lambda r: (str(r["prompt_id"]), r["image_index"]))
        for k in range(0, len(ordered), images_per_call):
            key = f"{skill}/{k // images_per_call}"
            groups.append([{**r, BATCH_COLUMN: key} for r in ordered[k : k + images_per_call]])
    return groups


def rows_to_draw(
    rows: list[dict[str, Any]], present: Callable[[dict[str, Any]], bool], cfg: ImagesConfig
) -> list[dict[str, Any]]:
    """The rows a drawing pass must draw, ``present(row) -> bool`` saying which images exist:
    the missing ones (exact mode), or every row of each :func:`batch_plan` group with an image
    missing (batched: a group is always drawn whole, so its images keep their positions)."""
    if cfg.exact_per_image:
        return [r for r in rows if not present(r)]
    return [
        r
        for group in batch_plan(rows, cfg.images_per_call)
        if not all(present(r) for r in group)
        for r in group
    ]


def pack_groups(rows: list[dict[str, Any]], images_per_call: int) -> list[dict[str, Any]]:
    """One row per pipeline call: ``skill``, ``batch`` and the JSON of the group's rows. Rows
    already tagged by :func:`batch_plan` keep their groups; untagged rows are planned here."""
    import json

    if rows and all(BATCH_COLUMN in r for r in rows):
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(str(r[BATCH_COLUMN]), []).append(r)
        planned = list(groups.values())
    else:
        planned = batch_plan(rows, images_per_call)
    return [
        {"skill": g[0]["skill"], BATCH_COLUMN: g[0][BATCH_COLUMN], PACKED_COLUMN: json.dumps(g)}
        for g in planned
    ]


def unpack_row(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The image rows of a packed row (:func:`pack_groups`); a plain row is its own list."""
    import json

    return json.loads(row[PACKED_COLUMN]) if PACKED_COLUMN in row else [row]


def encode_image(pixels: np.ndarray, image_format: str = "png") -> bytes:
    """uint8 HxWx3 pixels -> PNG (lossless) or JPEG bytes; same pixels give the same bytes."""
    from PIL import Image

    image = Image.fromarray(pixels)
    buf = io.BytesIO()
    if image_format == "png":
        image.save(buf, format="PNG", compress_level=6)
    elif image_format == "jpeg":
        image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        msg = f"images.image_format: {image_format!r} is not one of {sorted(EXTENSIONS)}"
        raise ValueError(msg)
    return buf.getvalue()


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (diffusers ``output_type="np"``) -> uint8, as diffusers rounds."""
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``images.dtype`` -> torch dtype; ``auto`` is float16 on CUDA and float32 on CPU."""
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        msg = f"images.dtype: {name!r} is not one of {['auto', *table]}"
        raise ValueError(msg)
    return table[name]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block (None: unchanged). On the CPU a
    convolution's float sums depend on how many threads share it, so images would change
    with a pool's ``cpus``; drawing on one thread keeps the bytes the same everywhere."""
    import torch

    if n is None or torch.get_num_threads() == n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _DropTruncationWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "input was truncated because CLIP" not in record.getMessage()


def _quiet_truncation(pipe: Any) -> int | None:
    """Silence the pipeline module's per-prompt truncation warning (the stage counts them
    instead, :meth:`ImageGenerator.truncates`); the tokenizer's length limit, if it has one."""
    logging.getLogger(type(pipe).__module__).addFilter(_DropTruncationWarning())
    tokenizer = getattr(pipe, "tokenizer", None)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and limit < 100_000 else None


def load_pipeline(
    model: str,
    *,
    dtype: str = "auto",
    attention: str = "sdpa",
    compile: bool = False,
    cache_dir: str | None = None,
    device: str | None = None,
    safety_checker: bool | None = None,
    channels_last: bool = False,
    fuse_qkv: bool = False,
) -> Any:
    """The diffusers pipeline of ``model`` on ``device`` (``images.*`` settings of that name).

    ``safety_checker``: False loads a pipeline that ships one (SD 1.x/2.x on the hub) without
    it, True keeps it (it blacks out flagged images; :class:`ImageGenerator` reads its flags),
    None loads the pipeline as it ships. ``channels_last``: the UNet's and VAE's weights in
    that memory format. ``fuse_qkv``: their attention with fused QKV projections
    (:func:`fuse_qkv_projections`; whoever then loads or switches a LoRA calls
    :func:`sync_fused_qkv`, or the fused weights keep the old one). The VAE decodes a batched
    call's images one at a time (memory: one image's decode, however many a call draws).
    """
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from selma_ray.models import resolve_model

    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    path = resolve_model(model, cache_dir)
    diffusers_logging.disable_progress_bar()
    with warnings.catch_warnings():
        # diffusers >= 0.40 renames torch_dtype -> dtype; older ones only know torch_dtype
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        try:
            pipe = DiffusionPipeline.from_pretrained(
                path, torch_dtype=torch_dtype, **_without_checker(path, safety_checker)
            )
        except OSError as e:
            msg = (
                f"images.model {model!r} (resolved to {path!r}) could not be loaded as a "
                f"diffusers pipeline: {e}. Give a diffusers model id, a local pipeline "
                "directory, or tiny:sd."
            )
            raise OSError(msg) from e
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    _set_attention(pipe, attention)
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_slicing"):
        # a batched call decodes its latents one image at a time. SDXL's VAE decodes in fp32
        # (force_upcast): at 1024 px one image peaks at 3.9 GiB, and each further image in the
        # same decode adds 2.3 GiB (measured on the CPU), so eight at once take ~20 GiB of an
        # eval actor's GPU. The UNet's steps dwarf the decode, so this costs well under 1 %.
        vae.enable_slicing()
    if channels_last:
        import torch

        for name in ("unet", "transformer", "vae"):
            if getattr(pipe, name, None) is not None:
                getattr(pipe, name).to(memory_format=torch.channels_last)
    if fuse_qkv:
        if attention != "sdpa":
            msg = (
                f"images.fuse_qkv needs images.attention: sdpa (got {attention!r}): the fused "
                "processor is torch SDPA"
            )
            raise ValueError(msg)
        fuse_qkv_projections(pipe)
    if compile:  # in place (nn.Module.compile): LoRA loading still finds the module's adapters
        denoiser = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
        getattr(pipe, denoiser).compile()
    return pipe


def fuse_qkv_projections(pipe: Any) -> None:
    """Fused QKV projections in the UNet and (an ``AutoencoderKL``) VAE: diffusers'
    ``fuse_qkv_projections``, which adds ``to_qkv`` (self-attention) / ``to_kv``
    (cross-attention) layers holding copies of the projections' weights, and its
    ``FusedAttnProcessor2_0`` that calls them instead of ``to_q/to_k/to_v``."""
    from diffusers import AutoencoderKL

    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "fuse_qkv_projections"):
        msg = (
            f"images.fuse_qkv: {type(pipe).__name__} has no UNet whose QKV projections diffusers "
            "can fuse; set fuse_qkv=false"
        )
        raise ValueError(msg)
    unet.fuse_qkv_projections()
    if isinstance(getattr(pipe, "vae", None), AutoencoderKL):
        pipe.vae.fuse_qkv_projections()
    sync_fused_qkv(pipe)  # a LoRA loaded before: folded in now


def sync_fused_qkv(pipe: Any) -> int:
    """Rebuild every fused QKV weight (:func:`fuse_qkv_projections`) from what its projections
    compute now: the base weight plus each active, unmerged PEFT LoRA's ``scale * B @ A``.

    diffusers builds ``to_qkv`` from the base weights alone and its fused processor never calls
    the LoRA layers of ``to_q/to_k/to_v``, so without this a LoRA loaded, switched (set_adapters,
    hot-swap) or unloaded after fusing would be silently ignored, or kept. The fused weights are
    written in place (a compiled UNet is not recompiled) and always from the untouched base
    weights, so a variant's fused weights do not depend on which variants came before. Returns
    how many fused layers were rebuilt (0: nothing fused)."""
    import torch

    rebuilt = 0
    for model in (getattr(pipe, "unet", None), getattr(pipe, "vae", None)):
        if model is None or not hasattr(model, "modules"):
            continue
        for module in model.modules():
            if not getattr(module, "fused_projections", False):
                continue
            if getattr(module, "to_qkv", None) is not None and not module.is_cross_attention:
                fused, parts = module.to_qkv, (module.to_q, module.to_k, module.to_v)
            elif getattr(module, "to_kv", None) is not None:
                fused, parts = module.to_kv, (module.to_k, module.to_v)
            else:
                continue
            with torch.no_grad():
                start = 0
                for layer in parts:
                    weight = _effective_weight(layer)
                    fused.weight[start : start + weight.shape[0]].copy_(weight)
                    start += weight.shape[0]
            rebuilt += 1
    return rebuilt


def _effective_weight(layer: Any) -> torch.Tensor:
    """The weight a linear layer applies now: a plain ``nn.Linear``'s own; a PEFT LoRA layer's
    base weight plus each active adapter's delta (none when disabled or already merged)."""
    import torch

    base = getattr(layer, "base_layer", None)
    if base is None:
        return layer.weight
    weight = base.weight
    if getattr(layer, "disable_adapters", False) or getattr(layer, "merged", False):
        return weight
    deltas = []
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if name in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(name):
            msg = (
                f"images.fuse_qkv: adapter {name!r} is a DoRA or has a LoRA bias, which fused "
                "QKV projections cannot hold; set fuse_qkv=false"
            )
            raise ValueError(msg)
        deltas.append(layer.get_delta_weight(name).to(torch.float32))
    if not deltas:
        return weight
    return (weight.to(torch.float32) + sum(deltas)).to(weight.dtype)


def _without_checker(path: str, safety_checker: bool | None) -> dict[str, Any]:
    """``from_pretrained`` arguments that leave out the pipeline's safety checker (when
    ``safety_checker`` is False and its ``model_index.json`` names one; else none)."""
    from diffusers import DiffusionPipeline

    if safety_checker is not False:
        return {}
    try:
        index = DiffusionPipeline.load_config(path)
    except (OSError, ValueError):  # from_pretrained says what is wrong with the path
        return {}
    if "safety_checker" not in index:
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


def _set_attention(pipe: Any, attention: str) -> None:
    """``sdpa``: AttnProcessor2_0 (torch SDPA); ``default``: AttnProcessor."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if attention not in ("sdpa", "default"):
        msg = f"images.attention: {attention!r} is not one of ['sdpa', 'default']"
        raise ValueError(msg)
    processor_cls = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "set_attn_processor"):
        log.warning("images.attention=%s ignored: the pipeline has no UNet", attention)
        return
    current = unet.attn_processors.values()
    if all(type(p) is processor_cls for p in current):
        return
    if not all(type(p) in (AttnProcessor, AttnProcessor2_0) for p in current):
        # e.g. IP-adapter or custom processors: replacing them would change the model
        log.warning("images.attention=%s ignored: the UNet uses custom processors", attention)
        return
    unet.set_attn_processor(processor_cls())


class ImageGenerator:
    """Ray Data callable class: draws and writes every row of a batch not yet on storage.

    Args:
        cfg: the ``images`` section, typed (a mapping is validated into one here, on the
            worker).
        out_uri: the images folder (``<run dir>/images``); images go to ``<skill>/<file_name>``.
        cache_dir: where ``tiny:`` models are built (None = default cache).
        num_threads: torch CPU threads (None = leave as set, e.g. by Ray's OMP_NUM_THREADS).
        device: torch device (None = cuda if available, else cpu).

    Each result row says whether its image was ``written`` and whether the pipeline's safety
    checker flagged it (``nsfw_flagged``; see the module doc).
    """

    #: Whether a flagged image is dropped (only its marker written) or written as drawn.
    drop_flagged: bool = True

    def __init__(
        self,
        cfg: ImagesConfig | dict[str, Any],
        out_uri: str,
        cache_dir: str | None = None,
        num_threads: int | None = None,
        device: str | None = None,
    ) -> None:
        self.init_started_at = time.time()
        import torch

        t0 = time.perf_counter()
        if num_threads:
            torch.set_num_threads(num_threads)
        self.cfg = ImagesConfig.model_validate(cfg)
        self.device = device or default_device()
        self.out = RunDir(out_uri)
        self.model_name = self.cfg.model
        self.image_format = self.cfg.image_format
        self.exact = self.cfg.exact_per_image
        self.images_per_call = self.cfg.images_per_call
        self.pipe = load_pipeline(
            self.cfg.model,
            dtype=self.cfg.dtype,
            attention=self.cfg.attention,
            compile=self.cfg.compile,
            cache_dir=cache_dir,
            device=self.device,
            safety_checker=self.cfg.safety_checker,
            channels_last=self.cfg.channels_last,
            fuse_qkv=self.cfg.fuse_qkv,
        )
        self.load_seconds = time.perf_counter() - t0
        self.last_flags: list[bool] = []  # per image of the last draw: flagged by the checker
        self.text_limit = _quiet_truncation(self.pipe)
        self.init_finished_at = time.time()

    def truncates(self, prompt: str) -> bool:
        """Whether the text encoder cuts ``prompt`` (longer than its ``model_max_length``
        tokens, 77 for CLIP): counted per stage instead of diffusers' warning per prompt."""
        if self.text_limit is None:
            return False
        return len(self.pipe.tokenizer(prompt).input_ids) > self.text_limit

    # ------------------------------------------------------------------ drawing
    def _generator(self, seed: int) -> torch.Generator:
        import torch

        return torch.Generator(self.device).manual_seed(int(seed))

    def draw(self, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
        """uint8 images (N, H, W, 3) for ``prompts``, one pipeline call (one generator each).
        :attr:`last_flags` then says which ones the pipeline's safety checker flagged."""
        import torch

        cfg = self.cfg
        with (
            torch.inference_mode(),
            _cpu_threads(1 if str(self.device).startswith("cpu") else None),
        ):
            out = self.pipe(
                **self._prompt_inputs(prompts),
                generator=[self._generator(s) for s in seeds],
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance_scale,
                height=cfg.resolution,
                width=cfg.resolution,
                output_type="np",
            )
        flags = getattr(out, "nsfw_content_detected", None)  # None: the pipeline has no checker
        self.last_flags = [bool(f) for f in flags] if flags is not None else [False] * len(seeds)
        return to_uint8(np.asarray(out.images))

    def _prompt_inputs(self, prompts: Sequence[str]) -> dict[str, Any]:
        """The pipeline's text inputs. For Stable Diffusion (XL) pipelines each prompt is encoded
        on its own and the embeddings are passed in: CLIP's text encoder gives a prompt
        slightly different states (~1e-7) at different positions of a batch, which would make
        an image depend on where it sat. Other pipelines get the prompt strings."""
        import torch
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        negative = self.cfg.negative_prompt or None
        pipe = self.pipe
        cfg_on = self.cfg.guidance_scale > 1.0
        if isinstance(pipe, StableDiffusionXLPipeline):
            names = (
                "prompt_embeds",
                "negative_prompt_embeds",
                "pooled_prompt_embeds",
                "negative_pooled_prompt_embeds",
            )
            parts = [
                pipe.encode_prompt(
                    prompt=p,
                    device=pipe._execution_device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=cfg_on,
                    negative_prompt=negative,
                )
                for p in prompts
            ]
        elif isinstance(pipe, StableDiffusionPipeline):
            names = ("prompt_embeds", "negative_prompt_embeds")
            parts = [
                pipe.encode_prompt(p, pipe._execution_device, 1, cfg_on, negative) for p in prompts
            ]
        else:
            return {
                "prompt": list(prompts),
                "negative_prompt": [negative] * len(prompts) if negative else None,
            }
        return {
            name: None if tensors[0] is None else torch.cat(tensors)
            for name, tensors in zip(names, zip(*parts, strict=True), strict=True)
        }

    def draw_fixed(self, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
        """Like :meth:`draw`, in calls of exactly ``images_per_call`` images (short ones padded
        with copies of their first row, whose images are dropped): every call has the same
        shape."""
        out = []
        flags: list[bool] = []
        n = self.images_per_call
        for start in range(0, len(prompts), n):
            p = list(prompts[start : start + n])
            s = list(seeds[start : start + n])
            pad = n - len(p)
            out.append(self.draw(p + [p[0]] * pad, s + [s[0]] * pad)[: len(p)])
            flags.extend(self.last_flags[: len(p)])
        self.last_flags = flags
        return np.concatenate(out)

    def _write(self, skill: str, file_name: str, pixels: np.ndarray) -> None:
        self.out.write_bytes(encode_image(pixels, self.image_format), skill, file_name)

    def _keep(self, skill: str, file_name: str, pixels: np.ndarray, flagged: bool) -> bool:
        """Write a drawn image; a flagged one gets its marker first (``layout.flagged_marker``)
        and, when :attr:`drop_flagged`, no image. Whether the image was written."""
        if flagged:
            self.out.write_bytes(b"", skill, flagged_marker(file_name))
            if self.drop_flagged:
                return False
        elif self.cfg.safety_checker:  # flagged once, not now (e.g. another device): unmark
            self.out.remove(skill, flagged_marker(file_name))
        self._write(skill, file_name, pixels)
        return True

    def _exists(self, skill: str, file_name: str) -> bool:
        if self.out.exists(skill, file_name):
            return True
        # a dropped image's marker stands for it (only while the checker runs)
        if not (self.drop_flagged and self.cfg.safety_checker):
            return False
        return self.out.exists(skill, flagged_marker(file_name))

    # ------------------------------------------------------------------ Ray Data entry point
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        packed = [unpack_row(r) for r in batch_to_rows(batch)]
        rows = [r for group in packed for r in group]
        n = len(rows)
        started = [0.0] * n
        finished = [0.0] * n
        written = [False] * n
        flagged = [False] * n
        todo = [i for i, r in enumerate(rows) if not self._exists(r["skill"], r["file_name"])]

        def keep(i: int, pixels: np.ndarray, flag: bool) -> None:
            flagged[i] = flag
            written[i] = self._keep(rows[i]["skill"], rows[i]["file_name"], pixels, flag)

        if self.exact:
            for i in todo:
                started[i] = time.time()
                pixels = self.draw([rows[i]["prompt"]], [rows[i]["seed"]])[0]
                keep(i, pixels, self.last_flags[0])
                finished[i] = time.time()
        elif PACKED_COLUMN in batch:  # whole groups, as planned: one call per group
            todo_set = set(todo)
            first = 0
            for group in packed:
                index = list(range(first, first + len(group)))
                first += len(group)
                missing = [i for i in index if i in todo_set]
                if not missing:
                    continue
                t = time.time()
                images = self.draw_fixed(
                    [rows[i]["prompt"] for i in index], [rows[i]["seed"] for i in index]
                )
                for i in missing:
                    keep(i, images[i - index[0]], self.last_flags[i - index[0]])
                    started[i], finished[i] = t, time.time()
        elif todo:
            t = time.time()
            images = self.draw_fixed(
                [rows[i]["prompt"] for i in todo], [rows[i]["seed"] for i in todo]
            )
            for k, (i, pixels) in enumerate(zip(todo, images, strict=True)):
                keep(i, pixels, self.last_flags[k])
                started[i], finished[i] = t, time.time()
        pid = os.getpid()
        truncated = [i in todo and self.truncates(rows[i]["prompt"]) for i in range(n)]
        return {
            "truncated": np.array(truncated, dtype=bool),
            "file_name": np.array([r["file_name"] for r in rows], dtype=object),
            "text": np.array([r["prompt"] for r in rows], dtype=object),
            "skill": np.array([r["skill"] for r in rows], dtype=object),
            "prompt_id": np.array([r["prompt_id"] for r in rows], dtype=object),
            "image_index": np.array([int(r["image_index"]) for r in rows], dtype=np.int64),
            "seed": np.array([int(r["seed"]) for r in rows], dtype=np.int64),
            "model": np.array([self.model_name] * n, dtype=object),
            "written": np.array(written, dtype=bool),
            "nsfw_flagged": np.array(flagged, dtype=bool),
            "started_at": np.array(started, dtype=np.float64),
            "finished_at": np.array(finished, dtype=np.float64),
            "worker_pid": np.array([pid] * n, dtype=np.int64),
            "worker_init_started_at": np.array([self.init_started_at] * n, dtype=np.float64),
            "worker_ready_at": np.array([self.init_finished_at] * n, dtype=np.float64),
        }
