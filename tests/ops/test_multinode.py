"""Several nodes: the tiny pipeline on a Ray cluster of a head and two worker raylets.

One cluster for the module (:class:`tests.ops.conftest.LocalCluster`, every process with the
AWS variables of a moto S3 server), on which:

- the pipeline is submitted with the real ``ray job submit`` on an ``s3://`` run directory, and
  Ray's state API shows the image actors and the experts' training workers on both workers;
- a second run (same config, the CLI as a driver joining the cluster) loses a worker node in
  the middle of the image stage and another in the middle of the experts stage (a fresh node
  joins after each, as an autoscaler would replace it): it still ends with exactly one image
  per (prompt, index), byte-identical to the undisturbed run, and experts equal to its
  experts, the lost one resumed from its checkpoint on another node.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from selma_ray import layout
from selma_ray.storage import RunDir
from tests.ops.conftest import ROOT, LocalCluster

pytestmark = pytest.mark.slow

SKILLS = ["coco", "whoops"]
PROMPTS = 8
STEPS = 16  # training steps per expert: long enough to lose a node between checkpoints
SETTINGS = [
    f"prompts.num_prompts={PROMPTS}",
    "prompts.skills=[coco, whoops]",
    "images.resolution=64",
    "images.steps=12",
    "images.rows_per_task=2",
    # one image actor per worker node: each asks for all of a node's CPUs
    "images.pool.min_size=2",
    "images.pool.max_size=2",
    "images.pool.cpus=2",
    f"train.max_steps={STEPS}",
    "train.checkpoint_every=2",
    "train.batch_size=2",
    "train.resolution=32",
    "train.cpus_per_worker=2",  # one expert per worker node, both at once
    "eval.max_items=2",
    "eval.variants=[merged]",
    "eval.clip_model=null",
]
SETS = [arg for s in SETTINGS for arg in ("--set", s)]


@pytest.fixture(scope="module")
def cluster(s3_env, _offline_cache):
    import ray

    ray.shutdown()  # the session's Ray; `ray stop` below would take it down anyway
    c = LocalCluster(dict(os.environ))
    c.start_head()
    try:
        c.add_worker(cpus=2)
        c.add_worker(cpus=2)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def job_run(cluster, tiny_models, s3_env):
    """The undisturbed pipeline, submitted as a Ray job on ``s3://selma-multinode/run``."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="selma-multinode")
    uri = "s3://selma-multinode/run"
    submit = [
        "job", "submit", "--address", cluster.dashboard, "--working-dir", str(ROOT),
        "--submission-id", "selma-multinode", "--no-wait", "--",
        "python", "jobs/run_pipeline.py", "--run-dir", uri, "--no-progress", *SETS,
    ]  # fmt: skip
    deadline = time.time() + 90
    while True:  # the job agent comes up a few seconds after `ray start`
        out = cluster.ray(*submit)
        if out.returncode == 0 or time.time() > deadline:
            break
        assert "No available agent" in out.stderr + out.stdout, out.stderr[-3000:]
        time.sleep(2)
    assert out.returncode == 0, out.stderr[-3000:]
    deadline = time.time() + 600
    state = ""
    while time.time() < deadline:
        state = cluster.ray("job", "status", "--address", cluster.dashboard, "selma-multinode")
        if any(s in state.stdout.upper() for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(3)
    logs = cluster.ray("job", "logs", "--address", cluster.dashboard, "selma-multinode").stdout
    assert "SUCCEEDED" in state.stdout.upper(), logs[-5000:]
    # what ran where, before later runs add their own actors
    return {
        "uri": uri,
        "logs": logs,
        "image_actors": cluster.actors("ImageGenerator"),
        "train_workers": cluster.actors("RayTrainWorker"),
        "workers": cluster.worker_nodes(),
    }


def test_a_cluster_started_by_hand_is_seen_as_fixed(cluster):
    """`ray start` without an autoscaling config: Ray's monitor runs its read-only provider,
    so the preflight check takes the cluster as unable to grow (a request no node holds is
    an error, not a warning) and counts its three nodes on one host."""
    offer = cluster.offer()
    assert offer["can_grow"] is False
    assert offer["where"].endswith(f":{cluster.port}, which has no autoscaler")
    assert len(offer["nodes"]) == 3 and sorted(n["CPU"] for n in offer["nodes"]) == [0, 2, 2]
    assert len(set(offer["hosts"])) == 1  # three raylets, one machine


def test_job_on_s3_ran_image_actors_and_experts_on_both_worker_nodes(job_run):
    assert "run directory: s3://selma-multinode/run" in job_run["logs"]
    assert "experts: done" in job_run["logs"]
    rd = RunDir(job_run["uri"])
    manifest = rd.read_json(*layout.manifest())["stages"]
    assert {s: e["status"] for s, e in manifest.items()} == dict.fromkeys(
        ["prompts", "images", "experts", "merge", "eval"], "done"
    )
    workers = set(job_run["workers"])
    image_nodes = {a["node_id"] for a in job_run["image_actors"]}
    train_nodes = {a["node_id"] for a in job_run["train_workers"]}
    assert image_nodes == workers, (image_nodes, workers)  # never the head: it has no CPUs
    assert train_nodes == workers, (train_nodes, workers)
    for skill in SKILLS:
        assert rd.read_json(*layout.expert_meta(skill))["steps"] == STEPS
        assert len(rd.read_jsonl(*layout.images_metadata(skill))) == PROMPTS
        assert rd.exists(*layout.expert_lora(skill))
    assert rd.exists(*layout.merged_lora()) and rd.exists(*layout.eval_report_html())


# --------------------------------------------------------------------------- nodes lost


@dataclass
class Losses:
    """What the node killer did, for the assertions."""

    images_at_kill: int | None = None
    checkpoints_at_kill: dict[str, list[str]] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


def _pngs(run: Path) -> int:
    return sum(1 for _ in (run / layout.IMAGES).rglob("*.png")) if run.exists() else 0


def _checkpoints(run: Path) -> dict[str, list[str]]:
    out = {}
    for skill in SKILLS:
        folder = run.joinpath(*layout.train_dir(), layout.train_run_name(skill))
        out[skill] = sorted(p.name for p in folder.glob("checkpoint_*")) if folder.exists() else []
    return out


def _kill_nodes(cluster: LocalCluster, run: Path, driver: subprocess.Popen, out: Losses) -> None:
    """Lose the node of a live image actor once the first image is on disk, then the node of a
    live training worker once both experts have a checkpoint; a new node joins after each."""
    try:
        while driver.poll() is None and _pngs(run) == 0:
            time.sleep(0.1)
        actors = cluster.actors("ImageGenerator", alive_only=True)
        if driver.poll() is not None or not actors:
            return
        out.images_at_kill = _pngs(run)
        cluster.kill_node(actors[0]["node_id"])
        out.killed.append("images")
        cluster.add_worker(cpus=2)
        while driver.poll() is None and not all(_checkpoints(run).values()):
            time.sleep(0.2)
        workers = cluster.actors("RayTrainWorker", alive_only=True)
        if driver.poll() is not None or not workers:
            return
        out.checkpoints_at_kill = _checkpoints(run)
        cluster.kill_node(workers[0]["node_id"])
        out.killed.append("experts")
        cluster.add_worker(cpus=2)
    except BaseException as e:  # noqa: BLE001 - reported by the tests
        out.errors.append(e)


@pytest.fixture(scope="module")
def disturbed(cluster, job_run, tmp_path_factory):
    """The same run (CLI driver joining the cluster, local run dir: every node is this host)
    through prompts..experts, losing a node in the image stage and another in the experts."""
    run = tmp_path_factory.mktemp("disturbed") / "run"
    log_file = run.parent / "driver.log"
    with open(log_file, "w") as log:
        driver = subprocess.Popen(
            [sys.executable, "-m", "selma_ray.cli", "run", "--address", cluster.address,
             "--run-dir", str(run), "--stages", "prompts,images,experts", "--no-progress",
             *SETS],
            env=cluster.env, stdout=log, stderr=subprocess.STDOUT, cwd=run.parent,
        )  # fmt: skip
        losses = Losses()
        killer = threading.Thread(target=_kill_nodes, args=(cluster, run, driver, losses))
        killer.start()
        try:
            code = driver.wait(timeout=600)
        finally:
            if driver.poll() is None:
                driver.kill()
            killer.join(timeout=120)
    assert not losses.errors, losses.errors
    assert code == 0, log_file.read_text()[-5000:]
    return run, losses


def test_node_lost_mid_images_leaves_one_identical_image_per_prompt_index(job_run, disturbed):
    run, losses = disturbed
    assert "images" in losses.killed, "the image stage ended before a node could be lost"
    ref = RunDir(job_run["uri"])
    total = len(SKILLS) * PROMPTS
    assert 0 < losses.images_at_kill < total, losses.images_at_kill  # lost mid-stage
    ours = RunDir(str(run))
    for skill in SKILLS:
        meta = ours.read_jsonl(*layout.images_metadata(skill))
        keys = [(m["prompt_id"], m["image_index"]) for m in meta]
        assert len(keys) == len(set(keys)) == PROMPTS  # exactly one per (prompt, index)
        assert meta == ref.read_jsonl(*layout.images_metadata(skill))
        files = sorted(p.name for p in (run / layout.IMAGES / skill).glob("*.png"))
        assert files == sorted(m["file_name"] for m in meta)  # nothing extra, nothing missing
        for m in meta:
            mine = ours.read_bytes(*layout.images_dir(skill, m["file_name"]))
            assert mine == ref.read_bytes(*layout.images_dir(skill, m["file_name"])), m


def test_node_lost_mid_experts_resumes_from_its_checkpoint_and_matches_undisturbed(
    job_run, disturbed
):
    from safetensors.torch import load

    run, losses = disturbed
    assert "experts" in losses.killed, "the experts finished before a node could be lost"
    assert all(losses.checkpoints_at_kill.values()), losses.checkpoints_at_kill
    ref, ours = RunDir(job_run["uri"]), RunDir(str(run))
    resumed = {}
    for skill in SKILLS:
        meta = ours.read_json(*layout.expert_meta(skill))
        assert meta["steps"] == STEPS
        resumed[skill] = meta["resumed_from"]
        mine = load(ours.read_bytes(*layout.expert_lora(skill)))
        theirs = load(ref.read_bytes(*layout.expert_lora(skill)))
        assert set(mine) == set(theirs)
        assert all((mine[k] == theirs[k]).all() for k in theirs), skill
        assert meta["train_loss"] == ref.read_json(*layout.expert_meta(skill))["train_loss"]
    # the lost expert went on from a checkpoint it had made (not from step 0)
    assert any(step is not None and 2 <= step < STEPS for step in resumed.values()), resumed


# --------------------------------------------------------------------------- Serve


def _serve_status(cluster: LocalCluster) -> str:
    out = cluster.ray_tool("serve", "status", "--address", cluster.dashboard)
    return out.stdout + out.stderr


def _deploy(cluster: LocalCluster, config: Path, models: set[str], url: str) -> None:
    """`serve deploy` (Ray's REST path), then wait until the app lists exactly ``models``."""
    import httpx

    out = cluster.ray_tool("serve", "deploy", str(config), "--address", cluster.dashboard)
    assert out.returncode == 0, out.stderr[-3000:]
    deadline, seen = time.time() + 240, None
    while time.time() < deadline:
        try:
            r = httpx.get(f"{url}/v1/models", timeout=10)
            seen = {m["id"] for m in r.json()["data"]} if r.status_code == 200 else r.status_code
        except (httpx.HTTPError, ValueError, KeyError) as e:
            seen = repr(e)
        if seen == models and "DEPLOY_FAILED" not in (status := _serve_status(cluster)):
            if "RUNNING" in status:
                return
        time.sleep(2)
    raise AssertionError(f"app serves {seen!r}, not {models}:\n{_serve_status(cluster)[-3000:]}")


def test_serve_deploy_on_the_running_cluster_serves_the_s3_run_and_a_new_expert(
    cluster, job_run, tmp_path
):
    """Ray's `serve deploy` of the repo's serve_config.yaml (run_dir on S3) onto the running
    cluster; the openai client draws with the merged model and an expert. An expert whose
    weights appear after the deploy (its training finished later) is served after a
    redeploy with a new ``args.revision``, on the same cluster."""
    import base64

    import yaml
    from openai import OpenAI

    from tests.ops.conftest import free_port

    rd = RunDir(job_run["uri"])
    weights = rd.path(*layout.expert_lora("whoops"))
    rd.fs.mv(weights, weights + ".later")  # training of `whoops` not finished yet
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["proxy_location"] = "HeadOnly"  # one host: proxies of every node would share a port
    (app,) = config["applications"]
    app["args"]["run_dir"] = job_run["uri"]
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    _deploy(cluster, path, {"base", "merged", "coco"}, url)

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    pngs = {}
    for model in ("merged", "coco"):
        result = client.images.generate(
            model=model, prompt="two red balls", response_format="b64_json", size="32x32",
            extra_body={"seed": 3, "num_inference_steps": 2},
        )  # fmt: skip
        pngs[model] = base64.b64decode(result.data[0].b64_json)
        assert pngs[model].startswith(b"\x89PNG")
    assert pngs["merged"] != pngs["coco"]  # two different adapters drew them

    rd.fs.mv(weights + ".later", weights)  # the expert is done: redeploy
    app["args"]["revision"] = int(app["args"]["revision"]) + 1  # Serve skips unchanged configs
    path.write_text(yaml.safe_dump(config))
    _deploy(cluster, path, {"base", "merged", "coco", "whoops"}, url)
    result = client.images.generate(
        model="whoops", prompt="two red balls", response_format="b64_json", size="32x32",
        extra_body={"seed": 3, "num_inference_steps": 2},
    )  # fmt: skip
    assert base64.b64decode(result.data[0].b64_json).startswith(b"\x89PNG")
    cluster.ray_tool("serve", "shutdown", "--address", cluster.dashboard, "--yes")
