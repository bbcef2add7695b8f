"""Stage 2 end to end: imagefolder outputs, resume, errors; on Ray: actor pool, a killed actor."""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from selma_ray.config import ImagesConfig, load_config
from selma_ray.execution import InProcessExecutor, task_plan
from selma_ray.images.generate import ImageGenerator
from selma_ray.images.stage import ImagesIncompleteError, plan, run_images_stage
from selma_ray.storage import RunDir

SKILLS = ("coco", "whoops")
N_PROMPTS = 3
N_IMAGES = 2
WORDS = ("a red cat", "two dogs on a table", "a blue image on the left")


def _cfg(*extra: str):
    return load_config(
        overrides=[
            f"prompts.skills=[{', '.join(SKILLS)}]",
            f"images.images_per_prompt={N_IMAGES}",
            "images.rows_per_task=4",
            *extra,
        ]
    )


def _write_prompts(rd: RunDir, skills=SKILLS, n: int = N_PROMPTS) -> None:
    for skill in skills:
        rows = [
            {"id": f"{skill}-{i:05d}", "skill": skill, "prompt": f"{WORDS[i % 3]} {skill}"}
            for i in range(n)
        ]
        rd.write_jsonl(rows, "prompts", f"{skill}.jsonl")


def _images(rd: RunDir) -> dict[str, bytes]:
    out = {}
    for skill in SKILLS:
        for name in rd.listdir("images", skill):
            if name.endswith(".png"):
                out[f"{skill}/{name}"] = rd.read_bytes("images", skill, name)
    return out


class SpyExecutor(InProcessExecutor):
    """The in-process executor, recording every row it maps (and returning every result)."""

    def __init__(self, draw: bool = True) -> None:
        self.rows: list[dict] = []
        self.results: list[dict] = []
        self.draw = draw

    def map_rows(self, rows, fn_cls, **kw):
        self.rows.extend(rows)
        out = super().map_rows(rows, fn_cls, **kw) if self.draw else []
        self.results.extend(out)
        return out


@pytest.fixture(scope="module")
def in_process(tiny_models):
    """The in-process executor: fast stage tests, no Ray."""
    return InProcessExecutor()


@pytest.fixture(scope="module")
def reference(in_process, tmp_path_factory):
    """An undisturbed run drawn in process: the bytes every other run must reproduce."""
    rd = RunDir(str(tmp_path_factory.mktemp("reference")))
    _write_prompts(rd)
    counts = run_images_stage(_cfg(), rd, in_process)
    assert counts == {s: N_PROMPTS * N_IMAGES for s in SKILLS}
    return rd


# --------------------------------------------------------------------------- fast, no Ray


def test_stage_writes_imagefolder_per_skill(reference, tmp_path):
    datasets = pytest.importorskip("datasets")
    rd = reference
    images = _images(rd)
    assert len(images) == len(SKILLS) * N_PROMPTS * N_IMAGES
    for skill in SKILLS:
        meta = rd.read_jsonl("images", skill, "metadata.jsonl")
        assert [(m["prompt_id"], m["image_index"]) for m in meta] == [
            (f"{skill}-{i:05d}", k) for i in range(N_PROMPTS) for k in range(N_IMAGES)
        ]
        assert list(meta[0]) == [
            "file_name", "text", "skill", "prompt_id", "image_index", "seed", "model"
        ]  # fmt: skip
        assert {m["model"] for m in meta} == {"tiny:sd"} and {m["skill"] for m in meta} == {skill}
        assert len({m["seed"] for m in meta}) == len(meta)
        ds = datasets.load_dataset(
            "imagefolder", data_dir=rd.path("images", skill), cache_dir=str(tmp_path / "hf")
        )["train"]
        assert len(ds) == N_PROMPTS * N_IMAGES
        assert set(ds.column_names) == {
            "image", "text", "skill", "prompt_id", "image_index", "seed", "model"
        }  # fmt: skip
        row = sorted(ds, key=lambda r: (r["prompt_id"], r["image_index"]))[1]
        assert row["image"].size == (64, 64)
        assert (row["text"], row["image_index"]) == (meta[1]["text"], 1)
    stats = rd.read_json("images", "stats.json")
    assert stats["model"] == "tiny:sd"
    assert stats["skills"]["coco"] == {
        "prompts": N_PROMPTS,
        "images": N_PROMPTS * N_IMAGES,
        "drawn_now": N_PROMPTS * N_IMAGES,
        "already_present": 0,
    }


def test_stage_on_memory_run_dir_is_identical(in_process, reference):
    rd = RunDir("memory://images-stage-run")
    _write_prompts(rd)
    # another batch size: exact mode gives the same bytes
    run_images_stage(_cfg("images.rows_per_task=1"), rd, in_process)
    assert _images(rd) == _images(reference)
    assert rd.read_text("images", "coco", "metadata.jsonl") == reference.read_text(
        "images", "coco", "metadata.jsonl"
    )


def test_resume_draws_only_missing_images(in_process, reference, tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    shutil.copytree(reference.path(), rd.path())
    gone = ["coco/coco-00001_0.png", "whoops/whoops-00002_1.png"]
    for g in gone:
        os.remove(rd.path("images", g))
    # a temp file left by a writer killed mid-write is cleaned up, never taken for an image
    with open(rd.path("images", "coco", "coco-00000_0.png.tmp-deadbeef"), "wb") as f:
        f.write(b"partial")
    mtimes = {k: os.stat(rd.path("images", k)).st_mtime_ns for k in _images(rd) if k not in gone}
    spy = SpyExecutor()
    run_images_stage(_cfg(), rd, spy)
    assert sorted(f"{r['skill']}/{r['file_name']}" for r in spy.rows) == sorted(gone)
    assert {k: os.stat(rd.path("images", k)).st_mtime_ns for k in mtimes} == mtimes
    assert _images(rd) == _images(reference)
    assert not any(".tmp-" in n for n in rd.listdir("images", "coco"))
    assert rd.read_json("images", "stats.json")["skills"]["coco"]["already_present"] == 5


def test_missing_or_empty_prompts_name_the_skill(tmp_path):
    rd = RunDir(str(tmp_path))
    _write_prompts(rd, skills=("coco",))
    with pytest.raises(FileNotFoundError, match="skill 'whoops' has no prompts"):
        plan(_cfg(), rd)
    rd.write_text("", "prompts", "whoops.jsonl")
    with pytest.raises(ValueError, match="skill 'whoops' has no prompts.*empty"):
        plan(_cfg(), rd)


def test_verification_names_missing_and_unexpected_files(tmp_path):
    rd = RunDir(str(tmp_path))
    _write_prompts(rd)
    rd.write_bytes(b"x", "images", "coco", "stray_0.png")
    with pytest.raises(ImagesIncompleteError) as err:
        run_images_stage(_cfg(), rd, SpyExecutor(draw=False))
    text = str(err.value)
    assert "coco: 6 missing: coco-00000_0.png" in text and "whoops: 6 missing" in text
    assert "coco: 1 unexpected: stray_0.png" in text


def test_ray_layer_refuses_memory_run_dir():
    from selma_ray.distributed import RayExecutor

    rd = RunDir("memory://run-for-ray")
    _write_prompts(rd)
    with pytest.raises(ValueError, match="memory.*cannot see.*in-process"):
        run_images_stage(_cfg(), rd, RayExecutor())


def test_task_plan_spreads_small_inputs_over_every_actor():
    assert task_plan(12, 8, 2) == (6, 2)  # a small input still gives every actor a batch
    assert task_plan(20, 8, 2) == (7, 3)
    assert task_plan(1000, 8, 4) == (8, 125)
    assert task_plan(0, 8, 4) == (8, 0)


# --------------------------------------------------------------------------- Ray


@pytest.mark.slow
def test_ray_stage_matches_in_process_bytes(ray_cluster, reference, tmp_path):
    from selma_ray.distributed import RayExecutor

    class SpyRay(RayExecutor):
        def map_rows(self, rows, fn_cls, **kw):
            out = super().map_rows(rows, fn_cls, **kw)
            seen.extend(out)
            return out

    rd = RunDir(str(tmp_path / "run"))
    _write_prompts(rd)
    seen: list[dict] = []
    counts = run_images_stage(
        _cfg("images.pool.max_size=2", "images.rows_per_task=8"), rd, SpyRay()
    )
    assert counts == {s: N_PROMPTS * N_IMAGES for s in SKILLS}
    assert len(seen) == 12 and all(r["written"] for r in seen)
    assert len({r["worker_pid"] for r in seen}) == 2  # 12 rows, 2 actors: both got a batch
    # 2 actors, batches of 6, other processes: still the in-process bytes
    assert _images(rd) == _images(reference)
    for skill in SKILLS:
        assert rd.read_text("images", skill, "metadata.jsonl") == reference.read_text(
            "images", skill, "metadata.jsonl"
        )
    # batched drawing (the GPU presets' default) through Ray Data: groups travel packed, every
    # image comes back as a row, and the bytes are the in-process batched run's
    batched = ("images.exact_per_image=false", "images.images_per_call=4")
    ray_rd, local_rd = RunDir(str(tmp_path / "ray-batched")), RunDir(str(tmp_path / "batched"))
    for target in (ray_rd, local_rd):
        _write_prompts(target)
    seen.clear()
    run_images_stage(_cfg("images.pool.max_size=2", "images.rows_per_task=8", *batched), ray_rd,
                     SpyRay())  # fmt: skip
    assert len(seen) == 12 and all(r["written"] for r in seen)
    run_images_stage(_cfg(*batched), local_rd, InProcessExecutor())
    assert _images(ray_rd) == _images(local_rd) and len(_images(ray_rd)) == 12


def _alive_map_workers() -> dict[str, dict]:
    """Ray Data's map actors, from the GCS (ray.util.state needs the dashboard, off in tests)."""
    import ray

    return {
        actor_id: info
        for actor_id, info in ray._private.state.actors().items()
        if "MapWorker" in (info.get("ActorClassName") or "") and info.get("State") == "ALIVE"
    }


@pytest.mark.slow
def test_killed_actor_is_restarted_and_images_match(ray_cluster, reference, tmp_path):
    import ray

    from selma_ray.distributed import RayExecutor

    rd = RunDir(str(tmp_path / "run"))
    _write_prompts(rd)
    # one actor, 3 batches of 4: the kill lands while work is left
    cfg = _cfg(
        "images.pool.max_size=1", "images.rows_per_task=4", "images.pool.max_task_retries=2"
    )

    def drawn() -> int:
        return sum(len([n for n in rd.listdir("images", s) if n.endswith(".png")]) for s in SKILLS)

    before = set(_alive_map_workers())
    pool = ThreadPoolExecutor(1)
    future = pool.submit(run_images_stage, cfg, rd, RayExecutor())
    killed, at_kill = None, -1
    deadline = time.monotonic() + 90
    while killed is None and not future.done() and time.monotonic() < deadline:
        if drawn() >= 1:
            workers = [a for a in _alive_map_workers() if a not in before]
            if workers:
                at_kill = drawn()
                core_worker = ray._private.worker.global_worker.core_worker
                handle = core_worker.get_actor_handle(ray.ActorID.from_hex(workers[0]))
                ray.kill(handle, no_restart=False)  # like a crash: Ray restarts it
                killed = workers[0]
        time.sleep(0.02)
    counts = future.result(timeout=120)
    pool.shutdown()
    assert killed is not None, "the stage finished before an actor could be killed"
    assert at_kill < 12, "the kill came after the last image"
    assert counts == {s: N_PROMPTS * N_IMAGES for s in SKILLS}
    assert ray._private.state.actors(killed)["NumRestarts"] >= 1
    # exactly one file per (prompt, index), byte-identical to the undisturbed run
    assert _images(rd) == _images(reference)
    for skill in SKILLS:
        assert not any(".tmp-" in n for n in rd.listdir("images", skill))


def test_prompts_longer_than_the_text_encoder_are_counted_once_per_stage(
    in_process, tmp_path, caplog
):
    """Not diffusers' warning per prompt: one line for the stage, and the count in stats."""
    import logging

    from selma_ray.models import resolve_model

    limit = json.loads(
        (Path(resolve_model("tiny:sd")) / "tokenizer" / "tokenizer_config.json").read_text()
    )["model_max_length"]
    rd = RunDir(str(tmp_path / "run"))
    long = " ".join(["a red cat beside a blue dog"] * limit)  # far more tokens than the limit
    rd.write_jsonl(
        [
            {"id": "coco-00000", "skill": "coco", "prompt": long},
            {"id": "coco-00001", "skill": "coco", "prompt": "a red cat"},
        ],
        "prompts", "coco.jsonl",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        run_images_stage(
            load_config(overrides=["prompts.skills=[coco]", "images.images_per_prompt=2"]),
            rd, in_process,
        )  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if "truncat" in r.getMessage()]
    assert lines == [
        "images: 2 of 4 prompts drawn were longer than the text encoder's token limit and were "
        "truncated (only their first tokens shaped the image)"
    ]
    assert rd.read_json("images", "stats.json")["truncated_prompts"] == 2


class _CallRecorder(ImageGenerator):
    """An image generator that records every pipeline call's (prompts, seeds)."""

    calls: list = []

    def draw(self, prompts, seeds):
        type(self).calls.append((tuple(prompts), tuple(seeds)))
        return super().draw(prompts, seeds)


def test_batched_calls_are_the_plans_whatever_the_task_split_or_resume(in_process, tmp_path):
    """Batched drawing (the GPU presets' default): every pipeline call is one group of the batch
    plan, whatever the rows per task, and a resume redraws whole groups in their positions."""
    from selma_ray.images.generate import batch_plan, plan_rows
    from selma_ray.images.stage import draw_rows

    prompts = [{"id": f"coco-{i:05d}", "skill": "coco", "prompt": f"a cat {i}"} for i in range(5)]
    rows = plan_rows(prompts, 1, run_seed=0)
    expected = {
        (tuple(r["prompt"] for r in g) + (g[0]["prompt"],) * (2 - len(g)),
         tuple(r["seed"] for r in g) + (g[0]["seed"],) * (2 - len(g)))
        for g in batch_plan(rows, 2)
    }  # fmt: skip
    files = {}
    for rows_per_task in (2, 5):
        cfg = ImagesConfig(exact_per_image=False, images_per_call=2, rows_per_task=rows_per_task)
        uri = str(tmp_path / f"split-{rows_per_task}")
        _CallRecorder.calls = []
        out = draw_rows(rows[::-1], cfg, uri, in_process, generator_cls=_CallRecorder)
        assert sorted(r["file_name"] for r in out) == sorted(r["file_name"] for r in rows)
        assert set(_CallRecorder.calls) == expected and len(_CallRecorder.calls) == 3
        files[rows_per_task] = {r["file_name"]: RunDir(uri).read_bytes("coco", r["file_name"])
                                for r in rows}  # fmt: skip
    assert files[2] == files[5]
    # resume: coco-00003 is missing, so its group (00002, 00003) is redrawn whole
    rd = RunDir(str(tmp_path / "split-2"))
    rd.remove("coco", "coco-00003_0.png")
    cfg = ImagesConfig(exact_per_image=False, images_per_call=2)
    from selma_ray.images.generate import rows_to_draw

    todo = rows_to_draw(rows, lambda r: rd.exists("coco", r["file_name"]), cfg)
    _CallRecorder.calls = []
    out = draw_rows(todo, cfg, rd.uri, in_process, generator_cls=_CallRecorder)
    assert _CallRecorder.calls == [(("a cat 2", "a cat 3"), (rows[2]["seed"], rows[3]["seed"]))]
    assert {r["file_name"]: r["written"] for r in out} == {
        "coco-00002_0.png": False, "coco-00003_0.png": True
    }  # fmt: skip
    assert rd.read_bytes("coco", "coco-00003_0.png") == files[5]["coco-00003_0.png"]
