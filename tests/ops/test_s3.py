"""Run directories on S3, against a real S3-protocol server (moto) on 127.0.0.1.

The tiny pipeline on ``s3://bucket/run`` with the real Ray executor (Ray Data, Ray Train with
its checkpoints on S3), a rerun that does no work, serving read from the bucket, a CLI run
SIGKILLed during the experts stage and resumed, and the storage check (missing bucket, rejected
or missing credentials) that fails before any work.

Ray: the module stops the session's Ray (if up), sets the AWS variables, TMPDIR and the working
directory, then starts the shared Ray again, so its workers inherit them (checked); it stops
that Ray when the module ends, so no later test gets workers pointed at this server.
"""

from __future__ import annotations

import os
import posixpath
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from selma_ray import layout
from selma_ray.config import ConfigError, load_config
from selma_ray.storage import RunDir, arrow_filesystem

STAGES = ["prompts", "images", "experts", "merge", "eval"]
SKILLS = ["coco", "whoops"]
SMALL = [
    "prompts.num_prompts=3",
    "prompts.skills=[coco, whoops]",
    "images.resolution=32",
    "images.steps=2",
    "train.max_steps=2",
    "train.checkpoint_every=2",
    "train.batch_size=2",
    "train.resolution=32",
    "eval.max_items=2",
]


# --------------------------------------------------------------------------- helpers


def _s3():
    import boto3

    return boto3.client("s3")  # endpoint and credentials from the AWS_* variables


def _bucket(name: str) -> str:
    """A new bucket with versioning on, so every rewrite of a key shows as a new version."""
    s3 = _s3()
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def _versions(bucket: str, prefix: str = "") -> dict[str, int]:
    """key -> number of versions written (deletions not counted)."""
    counts: Counter[str] = Counter()
    for page in _s3().get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        counts.update(v["Key"] for v in page.get("Versions", []))
    return dict(counts)


def _keys(bucket: str, prefix: str = "") -> list[str]:
    pages = _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@dataclass(frozen=True)
class LocalDirs:
    cwd: Path  # working directory of the driver and of Ray's processes
    tmp: Path  # TMPDIR of the driver and of Ray's workers


def _run_dir_files_on_local_disk(local: LocalDirs, keys: list[str]) -> list[str]:
    """Local files named like a run-directory file (not model caches, which live elsewhere).

    Left out: expert checkpoint files (Ray Train stages a checkpoint in a temporary folder to
    upload it) and the LoRA file name (eval and serving copy a LoRA alone into a temporary
    folder for diffusers to load)."""
    names = {
        posixpath.basename(k)
        for k in keys
        if f"/{layout.TRAIN}/" not in k and not k.endswith(layout.LORA_FILE)
    }
    return sorted(
        str(p) for root in (local.cwd, local.tmp) for p in root.rglob("*") if p.name in names
    )


@pytest.fixture(scope="module")
def local_dirs(tmp_path_factory) -> LocalDirs:
    root = tmp_path_factory.mktemp("s3-local")
    (root / "cwd").mkdir()
    (root / "tmp").mkdir()
    return LocalDirs(cwd=root / "cwd", tmp=root / "tmp")


@pytest.fixture(scope="module")
def s3_ray(s3_env, local_dirs, request):
    """The shared Ray, (re)started after the AWS variables, TMPDIR and cwd are set."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        # Ray's own session files stay where they were; tempfile users go to local.tmp
        mp.setenv("RAY_TMPDIR", os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR", "/tmp"))
        mp.setenv("TMPDIR", str(local_dirs.tmp))
        mp.setattr(tempfile, "tempdir", None)
        mp.chdir(local_dirs.cwd)
        ray.shutdown()  # a Ray started earlier in the session has workers without these variables
        request.getfixturevalue("ray_module")

        def worker_view() -> dict[str, str | None]:  # nested: shipped by value, not by module
            import os
            import tempfile

            return {
                "endpoint": os.environ.get("AWS_ENDPOINT_URL"),
                "key": os.environ.get("AWS_ACCESS_KEY_ID"),
                "tmp": tempfile.gettempdir(),
            }

        seen = ray.get(ray.remote(worker_view).remote())
        assert seen == {
            "endpoint": s3_env["AWS_ENDPOINT_URL"],
            "key": s3_env["AWS_ACCESS_KEY_ID"],
            "tmp": str(local_dirs.tmp),
        }
        yield ray
        ray.shutdown()


@pytest.fixture
def fresh_s3fs():
    """s3fs instances are cached by their arguments, with the credentials they were built with:
    drop them around a test that changes the AWS variables."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


# --------------------------------------------------------------------------- storage check


def test_missing_bucket_fails_before_any_work_naming_the_fix(s3_env, fresh_s3fs, capsys):
    from selma_ray.cli import main
    from selma_ray.pipeline import run_pipeline

    uri = "s3://selma-no-such-bucket/run"
    expected = (
        f"--run-dir {uri}: bucket 'selma-no-such-bucket' does not exist at endpoint "
        f"{s3_env['AWS_ENDPOINT_URL']}; create it or fix --run-dir (or AWS_ENDPOINT_URL)"
    )
    with pytest.raises(ConfigError) as info:
        run_pipeline(load_config(overrides=SMALL), uri)
    assert str(info.value) == expected
    assert main(["run", "--run-dir", uri, "--no-progress"]) == 2
    assert capsys.readouterr().err == f"selma-ray: {expected}\n"
    # nothing created it on the way (an S3 makedirs creates a missing bucket)
    assert "selma-no-such-bucket" not in [b["Name"] for b in _s3().list_buckets()["Buckets"]]
    # train.storage_path is checked the same way
    with pytest.raises(ConfigError, match=r"^train.storage_path s3://selma-no-ckpt/x: bucket "):
        run_pipeline(
            load_config(overrides=["train.storage_path=s3://selma-no-ckpt/x"]),
            "memory://selma-s3-test/run",
        )


def test_rejected_credentials_fail_before_any_work(s3_env, fresh_s3fs, monkeypatch, capsys):
    """moto with its IAM checks on rejects a key it does not know (403), as S3 does."""
    from moto.core.authorization import enable_iam_authentication

    from selma_ray.cli import main

    bucket = _bucket("selma-auth")
    uri = f"s3://{bucket}/run"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    with enable_iam_authentication():
        rc = main(["run", "--run-dir", uri, "--no-progress", *[f"--set={o}" for o in SMALL]])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"selma-ray: --run-dir {uri}: access denied to bucket 'selma-auth' at endpoint "
        f"{s3_env['AWS_ENDPOINT_URL']} (PermissionError: "
    )
    assert err.rstrip().endswith(
        "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, the instance "
        "profile) and that they may list, read and write the bucket"
    )
    assert _keys(bucket) == []  # not even config.yaml


def test_read_only_credentials_fail_before_any_work(s3_env, fresh_s3fs, monkeypatch, capsys):
    """An IAM user that may list and read the bucket but not write: refused up front (the
    write probe), not with a raw PermissionError at the first write."""
    import json

    import boto3
    from moto.core.authorization import enable_iam_authentication

    from selma_ray.cli import main

    bucket = _bucket("selma-read-only")
    _s3().put_object(Bucket=bucket, Key="run/notes.txt", Body=b"already here")
    iam = boto3.client("iam")
    iam.create_user(UserName="reader")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    uri = f"s3://{bucket}/run"
    with enable_iam_authentication():
        rc = main(["run", "--run-dir", uri, "--no-progress", *[f"--set={o}" for o in SMALL]])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"selma-ray: --run-dir {uri}: access denied to bucket 'selma-read-only' at endpoint "
        f"{s3_env['AWS_ENDPOINT_URL']} (PermissionError: "
    )
    assert "they may list, read and write the bucket" in err
    monkeypatch.undo()
    assert _keys(bucket) == ["run/notes.txt"]  # nothing written, the probe not left behind


def test_missing_credentials_fail_before_any_work(s3_env, fresh_s3fs, tmp_path, monkeypatch):
    from selma_ray.pipeline import run_pipeline

    bucket = _bucket("selma-anon")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    # no shared credentials or config file either
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigError) as info:
        run_pipeline(load_config(overrides=SMALL), f"s3://{bucket}/run")
    assert str(info.value) == (
        f"--run-dir s3://{bucket}/run: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or give the nodes an instance profile)"
    )
    monkeypatch.undo()
    assert _keys(bucket) == []


def test_unreachable_endpoint_fails_naming_it(s3_env, fresh_s3fs, monkeypatch):
    import socket

    from selma_ray.pipeline import run_pipeline

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore: no retries with backoff
    with pytest.raises(ConfigError) as info:
        run_pipeline(load_config(overrides=SMALL), "s3://selma-e2e/run")
    assert str(info.value).startswith(
        f"--run-dir s3://selma-e2e/run: cannot reach bucket 'selma-e2e' at endpoint {endpoint} "
        "(EndpointConnectionError: "
    )
    assert str(info.value).endswith("): check AWS_ENDPOINT_URL and the network")


def test_arrow_filesystem_writes_where_the_run_dir_reads(s3_env, fresh_s3fs, tmp_path):
    """What Ray Train gets (a pickled pyarrow filesystem over the run dir's s3fs, a path with
    no scheme) writes into the same bucket keys the run directory reads."""
    import pickle

    bucket = _bucket("selma-arrow")
    fs, path = arrow_filesystem(f"s3://{bucket}/run/train")
    assert path == f"{bucket}/run/train"
    fs = pickle.loads(pickle.dumps(fs))  # as it travels to the Ray Train controller
    fs.create_dir(f"{path}/expert-coco")
    with fs.open_output_stream(f"{path}/expert-coco/state.json") as f:
        f.write(b'{"step": 2}')
    assert RunDir(f"s3://{bucket}/run").read_json("train", "expert-coco", "state.json") == {
        "step": 2
    }
    assert _keys(bucket) == ["run/train/expert-coco/state.json"]
    assert arrow_filesystem(str(tmp_path / "train")) == (None, str(tmp_path / "train"))


# --------------------------------------------------------------------------- the pipeline


def _job(variant: str):
    from selma_ray.serving.api import GenerationJob

    return GenerationJob(
        variant=variant, prompt="two red balls", n=1, width=32, height=32, seed=3,
        num_inference_steps=2, guidance_scale=5.0,
    )  # fmt: skip


@pytest.mark.slow
def test_tiny_run_on_s3_then_rerun_does_no_work_and_serving_reads_it(
    s3_ray, tiny_models, local_dirs, tmp_path
):
    from selma_ray.pipeline import run_pipeline
    from selma_ray.serving.model import VariantPipeline, discover_variants

    bucket = _bucket("selma-e2e")
    uri = f"s3://{bucket}/run"
    cfg = load_config(overrides=SMALL)
    summary = run_pipeline(cfg, uri)  # ray.executor: ray, on the module's Ray
    assert summary.ran == STAGES and not summary.incomplete

    rd = RunDir(uri)
    manifest = rd.read_json(*layout.manifest())["stages"]
    assert {s: manifest[s]["status"] for s in STAGES} == dict.fromkeys(STAGES, "done")
    for skill in SKILLS:
        meta = rd.read_jsonl(*layout.images_metadata(skill))
        assert len(meta) == 3
        assert all(rd.exists(*layout.images_dir(skill, m["file_name"])) for m in meta)
        assert rd.exists(*layout.cache_file(skill)) and rd.exists(*layout.cache_key(skill))
        assert rd.read_json(*layout.expert_meta(skill))["steps"] == 2
        assert rd.exists(*layout.expert_lora(skill))
        # Ray Train kept its run (checkpoints) under train/ in the bucket
        train_run = [*layout.train_dir(), layout.train_run_name(skill)]
        assert any(n.startswith("checkpoint_") for n in rd.listdir(*train_run))
    assert rd.read_json(*layout.merged_meta())["method"] == "linear"
    assert rd.exists(*layout.merged_lora())
    for part in (layout.eval_answers(), layout.eval_report(), layout.eval_report_html()):
        assert rd.exists(*part)

    first = _versions(bucket, "run/")
    images = [k for k in first if k.startswith(f"run/{layout.IMAGES}/") and k.endswith(".png")]
    assert len(images) == 6 and all(first[k] == 1 for k in images)  # each drawn once

    again = run_pipeline(cfg, uri)
    assert again.ran == [] and again.skipped == STAGES
    after = _versions(bucket, "run/")
    # nothing rewritten but the run's config, which every run records (and the storage
    # check's probe, written and deleted once per run)
    probes = {k for k in after if posixpath.basename(k).startswith(layout.WRITE_PROBE_PREFIX)}
    assert len(probes) == 2 and not probes & set(_keys(bucket, "run/"))
    changed = {k for k in after if after[k] != first.get(k)} - probes
    # besides: the driver's heartbeat and this session's log, records of every run
    records = {f"run/{layout.DRIVER_FILE}"} | {
        k for k in changed if k.startswith(f"run/{layout.LOGS}/driver-")
    }
    assert len(records) == 2
    assert changed - records == {f"run/{layout.CONFIG_FILE}"}

    # nothing of the run on local disk: no ./selma-runs, no ./s3:/..., no copies in TMPDIR
    assert list(local_dirs.cwd.iterdir()) == []
    assert _run_dir_files_on_local_disk(local_dirs, list(after)) == []

    # serving reads the variants from the bucket: the same images as from a local copy
    spec = discover_variants(uri)
    assert spec.run_dir == uri and spec.variants == ("base", "merged", "coco", "whoops")
    engine = VariantPipeline(spec, device="cpu", torch_threads=1)
    assert set(engine.adapter_names) == {"merged", "coco", "whoops"}
    served = {v: engine.generate(_job(v)) for v in spec.variants}
    copy = tmp_path / "copy"
    rd.fs.get(f"{rd.root}/", str(copy), recursive=True)
    local = VariantPipeline(discover_variants(str(copy)), device="cpu", torch_threads=1)
    assert {v: local.generate(_job(v)) for v in spec.variants} == served


# --------------------------------------------------------------------------- kill and resume

KILL_STEPS = 40  # long enough that the kill lands between the first checkpoint and the end
KILL_ARGS = [
    "--no-progress",
    "--set", "prompts.num_prompts=3",
    "--set", "prompts.skills=[coco]",
    "--set", "images.resolution=32",
    "--set", "images.steps=2",
    "--set", f"train.max_steps={KILL_STEPS}",
    "--set", "train.checkpoint_every=2",
    "--set", "train.batch_size=2",
    "--set", "train.resolution=32",
    "--set", "eval.max_items=2",
    "--set", "eval.variants=[merged]",
    "--set", "eval.clip_model=null",
]  # fmt: skip


@pytest.mark.slow
def test_cli_run_on_s3_killed_during_experts_resumes_them(s3_ray, tiny_models, local_dirs):
    """SIGKILL `selma-ray run` once Ray Train has recorded a checkpoint in the bucket; the rerun
    skips the finished stages and the expert continues from that checkpoint."""
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    bucket = _bucket("selma-kill")
    uri = f"s3://{bucket}/run"
    address = s3_ray.get_runtime_context().gcs_address  # the drivers join the module's Ray
    cmd = [sys.executable, "-m", "selma_ray.cli", "run", "--run-dir", uri, "--address", address]
    cmd += KILL_ARGS
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    log_path = local_dirs.cwd.parent / "kill-first.log"
    train_prefix = f"run/{layout.TRAIN}/{layout.train_run_name('coco')}/"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 420
        recorded: list[str] = []
        while proc.poll() is None and time.monotonic() < deadline:
            keys = _keys(bucket, train_prefix)
            if any(k.endswith(CHECKPOINT_MANAGER_SNAPSHOT_FILENAME) for k in keys):
                recorded = [k for k in keys if "/checkpoint_" in k]
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert recorded, log_path.read_text()[-4000:]
    rd = RunDir(uri)
    manifest = rd.read_json(*layout.manifest())["stages"]
    assert manifest["images"]["status"] == "done"
    assert manifest["experts"]["status"] == "running"
    assert not rd.exists(*layout.expert_lora("coco")), "killed too late to test resume"

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for stage in ("prompts", "images"):
        assert f"{stage}: already done with this config (skipped)" in rerun.stdout
    manifest = rd.read_json(*layout.manifest())["stages"]
    assert {s: manifest[s]["status"] for s in STAGES} == dict.fromkeys(STAGES, "done")
    meta = rd.read_json(*layout.expert_meta("coco"))
    assert meta["steps"] == KILL_STEPS
    assert meta["resumed_from"] is not None and 2 <= meta["resumed_from"] < KILL_STEPS, meta
    # the loss curve runs on from the checkpoint: every step once
    assert [int(step) for step, _ in meta["train_loss"]] == list(range(1, KILL_STEPS + 1))
    assert rd.exists(*layout.merged_lora()) and rd.exists(*layout.eval_report())
    assert list(local_dirs.cwd.iterdir()) == []
    assert _run_dir_files_on_local_disk(local_dirs, _keys(bucket)) == []
