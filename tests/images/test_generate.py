"""Stage 2 core without Ray: seeds, the row plan, and byte-exact image writing (memory:// too)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from selma_ray.config import ImagesConfig
from selma_ray.execution import batch_to_rows, rows_to_batch
from selma_ray.images.generate import (
    ImageGenerator,
    encode_image,
    image_seed,
    plan_rows,
    resolve_dtype,
)
from selma_ray.seeds import derive_seed
from selma_ray.storage import RunDir

PROMPTS = [
    {"id": f"coco-{i:05d}", "skill": "coco", "prompt": p}
    for i, p in enumerate(["a red cat", "two dogs on a table", "a blue image", "a person left"])
]


@pytest.fixture(scope="module")
def generator(tiny_models):
    """One tiny-SD generator (1 torch thread) for the module; tests swap its output dir."""
    gen = ImageGenerator(ImagesConfig(), "memory://unused", num_threads=1)
    return gen


def _run(gen: ImageGenerator, rows: list[dict], out_uri: str, batch_size: int) -> list[dict]:
    gen.out = RunDir(out_uri)
    out: list[dict] = []
    for i in range(0, len(rows), batch_size):
        out.extend(batch_to_rows(gen(rows_to_batch(rows[i : i + batch_size]))))
    return out


def _files(rd: RunDir, rows: list[dict]) -> dict[str, bytes]:
    return {r["file_name"]: rd.read_bytes(r["skill"], r["file_name"]) for r in rows}


def test_image_seed_is_derived_from_run_seed_prompt_and_index():
    s = image_seed(0, "coco-00001", 0)
    assert s == image_seed(0, "coco-00001", 0) == derive_seed(0, "image", "coco-00001", 0)
    assert 0 <= s < 2**63
    others = {image_seed(1, "coco-00001", 0), image_seed(0, "coco-00002", 0)}
    others.add(image_seed(0, "coco-00001", 1))
    assert s not in others and len(others) == 3


def test_plan_rows_one_row_per_prompt_and_index():
    rows = plan_rows(PROMPTS, 2, run_seed=7)
    assert len(rows) == 8
    assert [(r["prompt_id"], r["image_index"]) for r in rows[:2]] == [
        ("coco-00000", 0),
        ("coco-00000", 1),
    ]
    r = rows[3]
    assert r == {
        "prompt_id": "coco-00001",
        "skill": "coco",
        "prompt": "two dogs on a table",
        "image_index": 1,
        "seed": image_seed(7, "coco-00001", 1),
        "file_name": "coco-00001_1.png",
    }
    assert plan_rows(PROMPTS[:1], 1, 7, "jpeg")[0]["file_name"] == "coco-00000_0.jpg"
    # a prompt's seeds do not depend on the other prompts or on images_per_prompt
    assert plan_rows(PROMPTS[1:2], 3, 7)[1]["seed"] == r["seed"]


def test_plan_rows_errors_name_the_problem():
    with pytest.raises(ValueError, match="images_per_prompt"):
        plan_rows(PROMPTS, 0, 0)
    with pytest.raises(ValueError, match=r"lacks \['prompt'\]"):
        plan_rows([{"id": "x", "skill": "coco"}], 1, 0)
    with pytest.raises(ValueError, match="image_format"):
        plan_rows(PROMPTS, 1, 0, "gif")


def test_resolve_dtype():
    import torch

    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("auto", "cuda") is torch.float16
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="images.dtype"):
        resolve_dtype("int8", "cpu")


def test_exact_mode_is_byte_identical_across_batch_sizes(generator):
    rows = plan_rows(PROMPTS, 2, run_seed=0)  # 8 images
    assert generator.exact
    runs = {}
    for bs in (1, 3, 8):
        uri = f"memory://exact-bs{bs}/images"
        out = _run(generator, rows, uri, bs)
        assert all(r["written"] for r in out) and len(out) == 8
        runs[bs] = _files(RunDir(uri), rows)
    assert runs[1] == runs[3] == runs[8]
    # distinct seeds / prompts give distinct images
    assert len(set(runs[1].values())) == 8


def test_writer_skips_existing_and_writes_decodable_png(generator):
    from PIL import Image

    rows = plan_rows(PROMPTS[:2], 1, run_seed=3)
    uri = "memory://skip/images"
    first = _run(generator, rows, uri, 2)
    assert [r["written"] for r in first] == [True, True]
    assert {k: first[0][k] for k in ("file_name", "text", "skill", "prompt_id", "model")} == {
        "file_name": "coco-00000_0.png",
        "text": "a red cat",
        "skill": "coco",
        "prompt_id": "coco-00000",
        "model": "tiny:sd",
    }
    assert first[0]["seed"] == rows[0]["seed"] and first[0]["image_index"] == 0
    rd = RunDir(uri)
    before = rd.read_bytes("coco", "coco-00000_0.png")
    rd.remove("coco", "coco-00001_0.png")
    again = _run(generator, rows, uri, 2)
    assert [r["written"] for r in again] == [False, True]
    assert rd.read_bytes("coco", "coco-00000_0.png") == before
    image = Image.open(io.BytesIO(before))
    assert image.format == "PNG" and image.size == (64, 64) and image.mode == "RGB"


def test_batched_mode_is_byte_identical_whatever_shares_the_batch(generator, monkeypatch):
    """Batched mode pads every UNet call to images.images_per_call, so an image's bytes do not
    depend on which rows shared its batch, where it sat, or how many were left to draw."""
    rows = plan_rows(PROMPTS, 2, run_seed=0)  # 8 images
    monkeypatch.setattr(generator, "exact", False)
    monkeypatch.setattr(generator, "images_per_call", 4)
    calls = []
    draw = generator.draw
    monkeypatch.setattr(
        generator, "draw", lambda p, s: calls.append(len(p)) or draw(p, s), raising=True
    )
    runs = {}
    for name, order, ray_batch in (
        ("in-order", rows, 4),
        ("uneven", rows, 3),  # 3 + 3 + 2 rows, each call padded to 4
        ("reversed", rows[::-1], 5),  # other neighbours and positions
    ):
        uri = f"memory://batched-{name}/images"
        out = _run(generator, order, uri, ray_batch)
        assert all(r["written"] for r in out) and len(out) == 8
        runs[name] = _files(RunDir(uri), rows)
    assert set(calls) == {4}  # every pipeline call had the same shape
    assert runs["in-order"] == runs["uneven"] == runs["reversed"]
    assert len(set(runs["in-order"].values())) == 8
    # a resume that finds half the images drawn redraws the rest byte for byte
    uri = "memory://batched-resume/images"
    rd = RunDir(uri)
    for r in rows[::2]:
        rd.write_bytes(
            RunDir("memory://batched-in-order/images").read_bytes(r["skill"], r["file_name"]),
            r["skill"],
            r["file_name"],
        )
    out = _run(generator, rows, uri, 8)
    assert [r["written"] for r in out] == [False, True] * 4
    assert _files(rd, rows) == runs["in-order"]


def test_encode_image_png_is_lossless_and_jpeg_works():
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    png = encode_image(pixels, "png")
    assert png == encode_image(pixels, "png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)
    assert Image.open(io.BytesIO(encode_image(pixels, "jpeg"))).format == "JPEG"


def test_default_attention_processor(tiny_models):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from selma_ray.images.generate import load_pipeline

    pipe = load_pipeline("tiny:sd", attention="default", device="cpu")
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor}
    pipe = load_pipeline("tiny:sd", device="cpu")
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}


def test_gpu_unet_benchmark_tiny_runs_on_cpu():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_unet.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--tiny"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "images/s" in proc.stdout and "TFLOP/s" in proc.stdout


def test_images_do_not_depend_on_the_actors_cpu_threads(generator):
    """A pool's `cpus` sets its actors' torch threads; on the CPU a convolution's float sums
    depend on the thread count, so drawing runs on one thread whatever the process has."""
    import torch

    prompts = ["a red cat coco", "two dogs on a table coco", "a blue image on the left whoops"]
    seeds = [11, 22, 33]
    before = torch.get_num_threads()
    try:
        drawn = {}
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            drawn[threads] = generator.draw(prompts, seeds)
            assert torch.get_num_threads() == threads  # restored after drawing
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(drawn[1], drawn[2]) and np.array_equal(drawn[1], drawn[4])


def test_batch_plan_is_a_pure_function_of_the_rows_and_the_size():
    from selma_ray.images.generate import batch_plan, pack_groups, rows_to_draw, unpack_row

    rows = plan_rows(PROMPTS, 2, run_seed=0) + plan_rows(
        [{"id": "whoops-00000", "skill": "whoops", "prompt": "a fish in a tree"}], 3, run_seed=0
    )
    groups = batch_plan(rows, 3)
    # per skill, in (prompt id, index) order, cut in threes: coco 8 -> 3+3+2, whoops 3
    assert [[r["file_name"] for r in g] for g in groups] == [
        ["coco-00000_0.png", "coco-00000_1.png", "coco-00001_0.png"],
        ["coco-00001_1.png", "coco-00002_0.png", "coco-00002_1.png"],
        ["coco-00003_0.png", "coco-00003_1.png"],
        ["whoops-00000_0.png", "whoops-00000_1.png", "whoops-00000_2.png"],
    ]
    assert [g[0]["batch"] for g in groups] == ["coco/0", "coco/1", "coco/2", "whoops/0"]
    # not a function of row order
    assert batch_plan(rows[::-1], 3) == groups
    # a resume draws every group with an image missing, whole and tagged as planned
    have = {r["file_name"] for r in rows} - {"coco-00002_1.png", "whoops-00000_0.png"}
    cfg = ImagesConfig(exact_per_image=False, images_per_call=3)
    todo = rows_to_draw(rows, lambda r: r["file_name"] in have, cfg)
    assert todo == groups[1] + groups[3]
    assert rows_to_draw(rows, lambda r: r["file_name"] in have, ImagesConfig()) == [
        r for r in rows if r["file_name"] not in have
    ]
    # packing keeps the planned groups (one row per pipeline call) and unpacks to the rows
    packed = pack_groups(todo, 3)
    assert [p["batch"] for p in packed] == ["coco/1", "whoops/0"]
    assert [m for p in packed for m in unpack_row(p)] == todo


def test_the_vae_decodes_a_batched_call_one_image_at_a_time(generator, monkeypatch):
    """A batched call's decode peaks at one image's memory (SDXL's fp32 VAE at 1024 px: 3.9 GiB
    for one, +2.3 GiB per further image decoded together), and slicing leaves the images as a
    whole-batch decode draws them."""
    vae = generator.pipe.vae
    decoded = []
    inner = vae._decode
    monkeypatch.setattr(
        vae, "_decode", lambda z, *a, **k: decoded.append(len(z)) or inner(z, *a, **k)
    )
    prompts = ["a red cat coco", "two dogs on a table coco", "a blue image on the left whoops"]
    sliced = generator.draw(prompts, [11, 22, 33])
    assert decoded == [1, 1, 1]
    vae.disable_slicing()
    try:
        whole = generator.draw(prompts, [11, 22, 33])
    finally:
        vae.enable_slicing()
    assert decoded[3:] == [3]
    assert sliced.shape == whole.shape == (3, *sliced.shape[1:])
    assert np.abs(sliced.astype(int) - whole.astype(int)).max() <= 1
