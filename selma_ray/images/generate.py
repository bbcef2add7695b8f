"""SELMA stage 2 core (no Ray): image seeds, the row plan, and the diffusers image writer.

:func:`plan_rows` turns prompt rows into one row per (prompt, image index) with a seed derived
from (run seed, prompt id, index) alone. :class:`ImageGenerator` is a callable class in the Ray
Data style (load the pipeline once in ``__init__``, map a batch of rows in ``__call__``) that
draws each row not yet on storage, encodes it and writes it atomically to
``<out_uri>/<skill>/<file_name>``.

Determinism: every image has its own ``torch.Generator`` seeded from its row. With
``exact_per_image`` (the default) every image is denoised in its own pipeline call, so its bytes
do not depend on batch size, actor count, retries or resumes (a batch of another size takes
other kernels, whose results differ by ~1e-6, which can flip a uint8 rounding). With
``exact_per_image: false`` the images are drawn ``batch_size`` at a time, and a short batch
(the tail, a retry, a resume) is padded to ``batch_size`` with copies of its first row, so every
UNet call has the same shape: an image's bytes then depend on its prompt, seed and
``images.batch_size`` only, not on which rows shared its batch or where it sat, as long as the
UNet and VAE compute each sample independently of the others. That holds on the CPU (CLIP's text
encoder does not, so prompts are encoded one at a time); it does not hold for fp16 on an H200,
where only 1 to 11 of 16 images came out byte-identical when regrouped
(``benchmarks/batch_invariance.py``): on GPUs only exact mode is byte-reproducible across batch
plans. Bytes are always specific to the device type, dtype and library versions.
"""

from __future__ import annotations

import io
import logging
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

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


def load_pipeline(
    cfg: dict[str, Any],
    *,
    cache_dir: str | None = None,
    device: str | None = None,
) -> Any:
    """The diffusers pipeline of ``cfg["model"]`` on ``device``, configured as ``cfg`` says."""
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from selma_ray.models import resolve_model

    device = device or default_device()
    dtype = resolve_dtype(cfg.get("dtype", "auto"), device)
    path = resolve_model(cfg["model"], cache_dir)
    diffusers_logging.disable_progress_bar()
    with warnings.catch_warnings():
        # diffusers >= 0.40 renames torch_dtype -> dtype; older ones only know torch_dtype
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        try:
            pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype)
        except OSError as e:
            msg = (
                f"images.model {cfg['model']!r} (resolved to {path!r}) could not be loaded as a "
                f"diffusers pipeline: {e}. Give a diffusers model id, a local pipeline "
                "directory, or tiny:sd."
            )
            raise OSError(msg) from e
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    _set_attention(pipe, cfg.get("attention", "sdpa"))
    if cfg.get("compile"):
        denoiser = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
        setattr(pipe, denoiser, torch.compile(getattr(pipe, denoiser)))
    return pipe


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

    Args (picklable primitives, as Ray Data ships them to each actor):
        cfg: ``ImagesConfig.model_dump()``.
        out_uri: the images folder (``<run dir>/images``); images go to ``<skill>/<file_name>``.
        cache_dir: where ``tiny:`` models are built (None = default cache).
        num_threads: torch CPU threads (None = leave as set, e.g. by Ray's OMP_NUM_THREADS).
        device: torch device (None = cuda if available, else cpu).
    """

    def __init__(
        self,
        cfg: dict[str, Any],
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
        self.cfg = dict(cfg)
        self.device = device or default_device()
        self.out = RunDir(out_uri)
        self.model_name = str(cfg["model"])
        self.image_format = str(cfg.get("image_format", "png"))
        self.exact = bool(cfg.get("exact_per_image", True))
        self.batch_size = max(1, int(cfg.get("batch_size", 1)))
        self.pipe = load_pipeline(self.cfg, cache_dir=cache_dir, device=self.device)
        self.load_seconds = time.perf_counter() - t0
        self.init_finished_at = time.time()

    # ------------------------------------------------------------------ drawing
    def _generator(self, seed: int) -> torch.Generator:
        import torch

        return torch.Generator(self.device).manual_seed(int(seed))

    def draw(self, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
        """uint8 images (N, H, W, 3) for ``prompts``, one pipeline call (one generator each)."""
        import torch

        cfg = self.cfg
        with torch.inference_mode():
            out = self.pipe(
                **self._prompt_inputs(prompts),
                generator=[self._generator(s) for s in seeds],
                num_inference_steps=int(cfg["steps"]),
                guidance_scale=float(cfg["guidance_scale"]),
                height=int(cfg["resolution"]),
                width=int(cfg["resolution"]),
                output_type="np",
            )
        return to_uint8(np.asarray(out.images))

    def _prompt_inputs(self, prompts: Sequence[str]) -> dict[str, Any]:
        """The pipeline's text inputs. For Stable Diffusion (XL) pipelines each prompt is encoded
        on its own and the embeddings are passed in: CLIP's text encoder gives a prompt
        slightly different states (~1e-7) at different positions of a batch, which would make
        an image depend on where it sat. Other pipelines get the prompt strings."""
        import torch
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        cfg = self.cfg
        negative = cfg.get("negative_prompt") or None
        pipe = self.pipe
        cfg_on = float(cfg["guidance_scale"]) > 1.0
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
        """Like :meth:`draw`, in calls of exactly ``batch_size`` images (short ones padded with
        copies of their first row, whose images are dropped): every call has the same shape."""
        out = []
        for start in range(0, len(prompts), self.batch_size):
            p = list(prompts[start : start + self.batch_size])
            s = list(seeds[start : start + self.batch_size])
            pad = self.batch_size - len(p)
            out.append(self.draw(p + [p[0]] * pad, s + [s[0]] * pad)[: len(p)])
        return np.concatenate(out)

    def _write(self, skill: str, file_name: str, pixels: np.ndarray) -> None:
        self.out.write_bytes(encode_image(pixels, self.image_format), skill, file_name)

    def _exists(self, skill: str, file_name: str) -> bool:
        return self.out.exists(skill, file_name)

    # ------------------------------------------------------------------ Ray Data entry point
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["prompt_id"])
        rows = [{k: _py(v[i]) for k, v in batch.items()} for i in range(n)]
        started = [0.0] * n
        finished = [0.0] * n
        written = [False] * n
        todo = [i for i, r in enumerate(rows) if not self._exists(r["skill"], r["file_name"])]
        if self.exact:
            for i in todo:
                started[i] = time.time()
                pixels = self.draw([rows[i]["prompt"]], [rows[i]["seed"]])[0]
                self._write(rows[i]["skill"], rows[i]["file_name"], pixels)
                finished[i] = time.time()
                written[i] = True
        elif todo:
            t = time.time()
            images = self.draw_fixed(
                [rows[i]["prompt"] for i in todo], [rows[i]["seed"] for i in todo]
            )
            for i, pixels in zip(todo, images, strict=True):
                self._write(rows[i]["skill"], rows[i]["file_name"], pixels)
                started[i], finished[i], written[i] = t, time.time(), True
        pid = os.getpid()
        return {
            "file_name": np.array([r["file_name"] for r in rows], dtype=object),
            "text": np.array([r["prompt"] for r in rows], dtype=object),
            "skill": np.array([r["skill"] for r in rows], dtype=object),
            "prompt_id": np.array([r["prompt_id"] for r in rows], dtype=object),
            "image_index": np.array([int(r["image_index"]) for r in rows], dtype=np.int64),
            "seed": np.array([int(r["seed"]) for r in rows], dtype=np.int64),
            "model": np.array([self.model_name] * n, dtype=object),
            "written": np.array(written, dtype=bool),
            "started_at": np.array(started, dtype=np.float64),
            "finished_at": np.array(finished, dtype=np.float64),
            "worker_pid": np.array([pid] * n, dtype=np.int64),
            "worker_init_started_at": np.array([self.init_started_at] * n, dtype=np.float64),
            "worker_ready_at": np.array([self.init_finished_at] * n, dtype=np.float64),
        }


def _py(value: Any) -> Any:
    """numpy scalar -> Python scalar (str / int / float / bool)."""
    return value.item() if isinstance(value, np.generic) else value


def rows_to_batch(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Plan rows -> a numpy batch as Ray Data would pass it (for in-process use and tests)."""
    if not rows:
        return {}
    out: dict[str, np.ndarray] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        out[key] = np.array(values, dtype=object if isinstance(values[0], str) else None)
    return out


def result_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A numpy result batch -> list of row dicts with Python values."""
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: _py(batch[k][i]) for k in keys} for i in range(n)]
