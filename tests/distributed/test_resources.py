"""Whether a joined cluster can grow, read from its monitor's status (no cluster needed: the
status a static head and an autoscaling head reported, as recorded from Ray 2.60)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from selma_ray.distributed import resources

STATIC_V1 = {  # `ray start --head` + a worker: the read-only provider, one type per node
    "autoscaler_report": {
        "active_nodes": {"node_246ce2": 1, "node_f9076b": 1},
        "node_type_mapping": {"246ce2": "node_246ce2", "f9076b": "node_f9076b"},
        "legacy": True,
    }
}
AUTOSCALING_V1 = {  # `ray start --head --autoscaling-config=...`: the config's node types
    "autoscaler_report": {
        "active_nodes": {"ray.head.default": 1},
        "node_type_mapping": {"fff00000": "ray.head.default"},
        "legacy": True,
    }
}


def _v2(version: str, types: dict[str, str]) -> SimpleNamespace:
    nodes = [SimpleNamespace(node_id=i, ray_node_type_name=t) for i, t in types.items()]
    return SimpleNamespace(
        stats=SimpleNamespace(autoscaler_version=version), active_nodes=nodes, idle_nodes=[]
    )


@pytest.mark.parametrize(
    ("v1", "v2", "expected"),
    [
        (STATIC_V1, None, False),
        (AUTOSCALING_V1, None, True),
        ({"autoscaler_report": {"node_type_mapping": {}}}, None, None),  # no nodes reported
        (None, _v2("4", {"b98": "node_b98", "e70": "node_e70"}), False),  # v2, static head
        (None, _v2("4", {"b98": "gpu_worker", "e70": "node_e70"}), True),
        (None, _v2("0", {"fff": "node_fff"}), None),  # v2 autoscaler has not reported yet
    ],
    ids=["v1-static", "v1-autoscaling", "v1-empty", "v2-static", "v2-autoscaling", "v2-none"],
)
def test_a_monitor_on_the_read_only_provider_means_the_cluster_cannot_grow(
    monkeypatch, v1, v2, expected
):
    import ray.autoscaler.v2.sdk as sdk
    import ray.experimental.internal_kv as kv

    monkeypatch.setattr(kv, "_internal_kv_get", lambda key: json.dumps(v1).encode() if v1 else None)
    monkeypatch.setattr(sdk, "get_cluster_status", lambda address: v2)
    assert resources._autoscaler_can_add_nodes("10.0.0.1:6379") is expected


def test_an_unreadable_status_leaves_it_unknown(monkeypatch):
    """A Ray whose private status API moved or fails: unknown, so taken as able to grow."""
    import ray.experimental.internal_kv as kv

    def broken(key):
        raise RuntimeError("internal KV not initialized")

    monkeypatch.setattr(kv, "_internal_kv_get", broken)
    assert resources._autoscaler_can_add_nodes("10.0.0.1:6379") is None
