"""The orchestrator: manifest, skip-when-done, changed-config refusal, --redo."""

from __future__ import annotations

import pytest

from selma_ray.config import load_config
from selma_ray.pipeline import ConfigChangedError, run_pipeline
from selma_ray.storage import RunDir


def _cfg(*extra):
    return load_config(overrides=["prompts.num_prompts=6", "prompts.skills=[coco, whoops]", *extra])


def test_run_records_manifest_and_config(tmp_path):
    uri = str(tmp_path / "run")
    summary = run_pipeline(_cfg(), uri)
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
    run_pipeline(_cfg(), uri)
    before = RunDir(uri).read_text("prompts", "coco.jsonl")
    # runtime-only settings may change without invalidating the stage
    summary = run_pipeline(_cfg("prompts.max_rounds=7"), uri)
    assert summary.ran == [] and summary.skipped == ["prompts"]
    assert RunDir(uri).read_text("prompts", "coco.jsonl") == before


def test_changed_config_is_refused_then_redone(tmp_path):
    uri = str(tmp_path / "run")
    run_pipeline(_cfg(), uri)
    with pytest.raises(ConfigChangedError) as info:
        run_pipeline(_cfg("prompts.num_prompts=9"), uri)
    assert "prompts.num_prompts: 6 -> 9" in str(info.value)
    assert "--redo prompts" in str(info.value)
    # nothing was lost by the refusal
    assert len(RunDir(uri).read_jsonl("prompts", "coco.jsonl")) == 6
    summary = run_pipeline(_cfg("prompts.num_prompts=9"), uri, redo=["prompts"])
    assert summary.ran == ["prompts"]
    assert len(RunDir(uri).read_jsonl("prompts", "coco.jsonl")) == 9


def test_unknown_stage_is_a_config_error(tmp_path):
    from selma_ray.config import ConfigError

    with pytest.raises(ConfigError, match="unknown stage"):
        run_pipeline(_cfg(), str(tmp_path), stages=["paint"])


def test_run_dir_on_memory_filesystem():
    summary = run_pipeline(_cfg(), "memory://selma-pipeline-test/run")
    assert summary.ran == ["prompts"]
    assert RunDir("memory://selma-pipeline-test/run").read_json("manifest.json")["stages"]["prompts"]["status"] == "done"
