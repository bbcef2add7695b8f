"""cluster.yaml passes Ray's own cluster-config validation (no cloud calls)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_is_valid_for_the_ray_cluster_launcher():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    # what `ray up` does before launching anything: fill defaults, then check the schema
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert config["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["min_workers"] == 0 and types["gpu_worker"]["max_workers"] >= 1
    assert "llm_worker" in types
    assert config["docker"]["image"].startswith("rayproject/ray:2.60")
    assert any("[gpu,cloud]" in c for c in config["setup_commands"])
    # the mounted checkout leaves out what git ignores (the local .venv, runs)
    assert config["rsync_filter"] == [".gitignore"]


def test_invalid_cluster_yaml_is_rejected_naming_the_bad_field():
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError) as e:
        validate_config(prepare_config(config))
    assert e.value.message == "'zero' is not of type 'integer'"
    assert list(e.value.absolute_path) == ["available_node_types", "gpu_worker", "min_workers"]
    assert "On instance['available_node_types']['gpu_worker']['min_workers']" in str(e.value)


@pytest.mark.parametrize("preset", ["sd15", "sd2", "sdxl"])
def test_every_stage_of_the_gpu_presets_fits_a_node_type_of_cluster_yaml(preset):
    """What each pool's actor and each training worker asks for (the preflight's view) fits on
    the node types the autoscaler can add, at their max_workers: the presets, and
    configs/<preset>.yaml, whose vLLM engines ask for the llm_worker nodes' ``llm_node``."""
    from selma_ray.config import load_config
    from selma_ray.preflight import ClusterOffer, check_resources

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = {n: t for n, t in config["available_node_types"].items() if n != "head"}
    nodes = tuple(
        {r: float(v) for r, v in t["resources"].items()}
        for t in types.values()
        for _ in range(t["max_workers"])
    )
    offer = ClusterOffer(nodes=nodes, can_grow=False, where="cluster.yaml at full size")
    stages = ["prompts", "images", "experts", "merge", "eval"]
    found = check_resources(load_config(preset=preset), stages, offer)
    assert not found.errors and not found.warnings, [p.line() for p in found.errors]
    pinned = load_config(str(ROOT / "configs" / f"{preset}.yaml"))
    assert pinned.prompts.vllm.pool.resources == {"llm_node": 1.0}
    found = check_resources(pinned, stages, offer)
    assert not found.errors and not found.warnings, [p.line() for p in found.errors]
    # as many engines at once as llm_worker nodes have GPUs, and no more
    llm = types["llm_worker"]
    assert llm["resources"]["llm_node"] == llm["resources"]["GPU"]
    most = int(llm["resources"]["GPU"]) * llm["max_workers"]
    sized = [f"prompts.vllm.pool.max_size={most + 1}", f"prompts.vllm.pool.min_size={most + 1}"]
    over = load_config(str(ROOT / "configs" / f"{preset}.yaml"), overrides=sized)
    assert [p.field for p in check_resources(over, stages, offer).errors] == [
        "prompts.vllm.pool.min_size"
    ]
    # a GPU pool that no node type could hold is refused, so the check above can fail
    big = load_config(preset=preset, overrides=["images.pool.gpus=16"])
    assert [p.field for p in check_resources(big, stages, offer).errors] == ["images.pool.gpus"]
