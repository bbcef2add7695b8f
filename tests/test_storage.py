from __future__ import annotations

import os

import pytest

from selma_ray.storage import Manifest, RunDir


@pytest.fixture(params=["local", "file", "memory"])
def run_dir(request, tmp_path):
    if request.param == "local":
        return RunDir(str(tmp_path / "run"))
    if request.param == "file":
        return RunDir(f"file://{tmp_path}/run")
    return RunDir(f"memory://selma-test-{os.getpid()}-{id(request)}/run")


def test_write_read_roundtrip(run_dir):
    run_dir.write_json({"a": 1}, "x", "y.json")
    run_dir.write_jsonl([{"p": "one"}, {"p": "two"}], "x", "z.jsonl")
    assert run_dir.read_json("x", "y.json") == {"a": 1}
    assert run_dir.read_jsonl("x", "z.jsonl") == [{"p": "one"}, {"p": "two"}]
    assert run_dir.listdir("x") == ["y.json", "z.jsonl"]
    run_dir.remove("x")
    assert not run_dir.exists("x", "y.json")


def test_local_write_leaves_no_temp_files(tmp_path):
    rd = RunDir(str(tmp_path))
    for i in range(3):
        rd.write_text(f"v{i}", "f.txt")
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]
    assert rd.read_text("f.txt") == "v2"


def test_a_write_on_another_filesystem_goes_through_a_temp_file_moved_into_place(monkeypatch):
    """Neither local disk nor an object store (fsspec's memory://, as sftp or hdfs would be):
    the bytes go to a temp file that is then renamed, so a killed writer never leaves half a
    file under the real name, and no temp file stays behind."""
    rd = RunDir(f"memory://selma-test-{os.getpid()}-atomic/run")
    assert not rd.is_local and not rd.is_object_store
    written: list[str] = []
    pipe = rd.fs.pipe_file
    monkeypatch.setattr(
        rd.fs, "pipe_file", lambda path, data: written.append(path) or pipe(path, data)
    )
    for i in range(3):
        rd.write_text(f"v{i}", "d", "f.txt")
    assert rd.listdir("d") == ["f.txt"] and rd.read_text("d", "f.txt") == "v2"
    assert len(written) == 3 and all(".tmp-" in p and not p.endswith("f.txt") for p in written)


def test_manifest_records_and_diffs(run_dir):
    m = Manifest(run_dir)
    fp = {"seed": 0, "prompts": {"num_prompts": 5, "engine": "scene-graph"}}
    m.start("prompts", fp, "h1")
    m.finish("prompts", {"coco": 5}, 1.25)
    again = Manifest(run_dir)
    assert again.status("prompts") == "done"
    assert again.stages["prompts"]["counts"] == {"coco": 5}
    assert again.changes("prompts", fp) == []
    changed = again.changes(
        "prompts", {"seed": 0, "prompts": {"num_prompts": 9, "engine": "scene-graph"}}
    )
    assert changed == ["prompts.num_prompts: 5 -> 9"]


def test_empty_uri_is_rejected():
    with pytest.raises(ValueError, match="--run-dir"):
        RunDir("")
