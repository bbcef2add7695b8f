"""The orchestrator: manifest, skip-when-done, changed-config refusal, --redo."""

from __future__ import annotations

import pytest

from selma_ray.config import load_config
from selma_ray.pipeline import ConfigChangedError, run_pipeline
from selma_ray.storage import RunDir


def _cfg(*extra):
    return load_config(overrides=["prompts.num_prompts=6", "prompts.skills=[coco, whoops]", *extra])


PROMPTS = ["prompts"]


def test_run_records_manifest_and_config(tmp_path):
    uri = str(tmp_path / "run")
    summary = run_pipeline(_cfg(), uri, stages=PROMPTS)
    assert summary.ran == ["prompts"] and not summary.incomplete
    rd = RunDir(uri)
    entry = rd.read_json("manifest.json")["stages"]["prompts"]
    assert entry["status"] == "done"
    assert entry["counts"] == {"coco": 6, "whoops": 6}
    assert len(entry["config_hash"]) == 16 and entry["seconds"] >= 0
    saved = load_config(rd.path("config.yaml"))
    assert saved.prompts.num_prompts == 6


def test_finished_stage_is_skipped(tmp_path):
    uri = str(tmp_path / "run")
    run_pipeline(_cfg(), uri, stages=PROMPTS)
    before = RunDir(uri).read_text("prompts", "coco.jsonl")
    # runtime-only settings may change without invalidating the stage
    summary = run_pipeline(_cfg("prompts.max_rounds=7"), uri, stages=PROMPTS)
    assert summary.ran == [] and summary.skipped == ["prompts"]
    assert RunDir(uri).read_text("prompts", "coco.jsonl") == before


def test_changed_config_is_refused_then_redone(tmp_path):
    uri = str(tmp_path / "run")
    run_pipeline(_cfg(), uri, stages=PROMPTS)
    with pytest.raises(ConfigChangedError) as info:
        run_pipeline(_cfg("prompts.num_prompts=9"), uri, stages=PROMPTS)
    assert "prompts.num_prompts: 6 -> 9" in str(info.value)
    assert "--redo prompts" in str(info.value)
    # nothing was lost by the refusal
    assert len(RunDir(uri).read_jsonl("prompts", "coco.jsonl")) == 6
    summary = run_pipeline(_cfg("prompts.num_prompts=9"), uri, stages=PROMPTS, redo=["prompts"])
    assert summary.ran == ["prompts"]
    assert len(RunDir(uri).read_jsonl("prompts", "coco.jsonl")) == 9


def test_redoing_a_stage_alone_discards_the_later_stages_built_from_it(tmp_path):
    """``--stages prompts --redo prompts`` replaces the prompts; the images drawn from the old
    ones are discarded (and their manifest entry reset), so the next full run draws them again
    instead of skipping them as done."""
    uri = str(tmp_path / "run")
    run_pipeline(_cfg(), uri, stages=["prompts", "images"])
    rd = RunDir(uri)
    assert rd.read_json("manifest.json")["stages"]["images"]["status"] == "done"
    summary = run_pipeline(_cfg(), uri, stages=PROMPTS, redo=["prompts"])
    assert summary.ran == ["prompts"]
    assert any(n.startswith("images: discarded") for n in summary.notes)
    assert "images" not in rd.read_json("manifest.json")["stages"]
    assert not rd.exists("images")
    again = run_pipeline(_cfg(), uri, stages=["prompts", "images"])
    assert again.skipped == ["prompts"] and again.ran == ["images"]


def test_a_run_directory_whose_driver_is_alive_is_refused(tmp_path):
    """A second driver would overwrite the first one's manifest and outputs. A live driver on
    this host (its process exists) is refused, naming it; a dead one's run resumes."""
    import os
    import socket
    import time

    from selma_ray.config import ConfigError

    uri = str(tmp_path / "run")
    run_pipeline(_cfg(), uri, stages=PROMPTS)
    rd = RunDir(uri)
    beat = {"host": socket.gethostname(), "state": "running", "beat_at": time.time()}
    rd.write_json({**beat, "pid": os.getppid()}, "driver.json")  # a live process, not us
    with pytest.raises(ConfigError, match=rf"in use: its driver \(pid {os.getppid()} on "):
        run_pipeline(_cfg(), uri, stages=PROMPTS)
    rd.write_json({**beat, "pid": 2**22 + 12345}, "driver.json")  # no such process
    assert run_pipeline(_cfg(), uri, stages=PROMPTS).skipped == ["prompts"]


def test_unknown_stage_is_a_config_error(tmp_path):
    from selma_ray.config import ConfigError

    with pytest.raises(ConfigError, match="unknown stage"):
        run_pipeline(_cfg(), str(tmp_path), stages=["paint"])


def test_run_dir_on_memory_filesystem():
    summary = run_pipeline(_cfg(), "memory://selma-pipeline-test/run", stages=PROMPTS)
    assert summary.ran == ["prompts"]
    assert (
        RunDir("memory://selma-pipeline-test/run").read_json("manifest.json")["stages"]["prompts"][
            "status"
        ]
        == "done"
    )


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_then_nothing_to_do(ray_cluster, tiny_models, tmp_path):
    """prompts -> images -> experts on the tiny models; a rerun skips every stage."""
    small = [
        "prompts.num_prompts=3",
        "train.max_steps=2",
        "train.checkpoint_every=2",
        "train.batch_size=2",
        "train.resolution=32",
        "images.resolution=32",
        "eval.max_items=2",
    ]
    cfg = _cfg(*small, "images.steps=2")
    uri = str(tmp_path / "run")
    summary = run_pipeline(cfg, uri)
    assert summary.ran == ["prompts", "images", "experts", "merge", "eval"]
    rd = RunDir(uri)
    for skill in ("coco", "whoops"):
        meta = rd.read_jsonl("images", skill, "metadata.jsonl")
        assert len(meta) == 3 and all(rd.exists("images", skill, m["file_name"]) for m in meta)
        assert rd.exists("experts", skill, "pytorch_lora_weights.safetensors")
        assert rd.read_json("experts", skill, "expert.json")["steps"] == 2
    manifest = rd.read_json("manifest.json")["stages"]
    assert [manifest[s]["status"] for s in ("prompts", "images", "experts", "merge", "eval")] == [
        "done"
    ] * 5
    assert rd.exists("eval", "report.html") and rd.exists("eval", "answers.parquet")
    assert rd.exists("merged", "pytorch_lora_weights.safetensors")
    assert rd.read_json("merged", "merge.json")["method"] == "linear"
    again = run_pipeline(cfg, uri)
    assert again.ran == []
    assert again.skipped == ["prompts", "images", "experts", "merge", "eval"]
    # a changed image setting is refused (first at the images stage), naming the field
    with pytest.raises(ConfigChangedError, match="stage images .*\n  images.steps: 2 -> 3"):
        run_pipeline(_cfg(*small, "images.steps=3"), uri)
