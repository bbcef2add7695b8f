"""What the Ray cluster of this session can offer, as the plain
:class:`~selma_ray.preflight.ClusterOffer` the preflight resource check takes.

A Ray started by this process (the run's local Ray) is one node that cannot grow. A cluster
this process connected to may have an autoscaler. Ray's monitor runs on every head; without an
autoscaling config (``ray start --head`` by hand, a fixed set of machines) it runs Ray's
read-only provider, which reports each node as its own node type named
``format_readonly_node_type(node_id)``. Such a cluster cannot grow, and a request no node can
hold is an error. Otherwise the cluster is taken as able to grow: Ray 2.60 does not show a
driver the node types an autoscaler may add (its status reports the nodes, launches and
resource demands, not the node types' resources), so a shortfall against the current nodes is
only a warning; so is one on a cluster whose monitor has not reported yet.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from selma_ray.preflight import ClusterOffer

log = logging.getLogger(__name__)

__all__ = ["cluster_offer"]


def _started_here() -> bool:
    """Whether this process started the Ray head it is connected to (``ray.init()`` without an
    address); False when it is unknown (e.g. a Ray Client connection)."""
    import ray._private.worker as worker

    node = getattr(worker, "_global_node", None)
    return bool(node is not None and getattr(node, "head", False))


def cluster_offer() -> ClusterOffer | None:
    """The live nodes' resources (CPUs, GPUs, custom ones) and whether the cluster can grow;
    None without a Ray session in this process."""
    import ray

    if not ray.is_initialized():
        return None
    alive = [n for n in ray.nodes() if n.get("Alive")]
    nodes = tuple(
        {"CPU": 0.0, "GPU": 0.0, **{r: float(v) for r, v in n.get("Resources", {}).items()}}
        for n in alive
    )
    hosts = tuple(str(n.get("NodeManagerAddress", "")) for n in alive)
    if _started_here():
        return ClusterOffer(
            nodes=nodes, can_grow=False, where="local Ray, cannot grow", hosts=hosts, local=True
        )
    address = ray.get_runtime_context().gcs_address
    if _autoscaler_can_add_nodes(address) is False:
        return ClusterOffer(
            nodes=nodes,
            can_grow=False,
            where=f"Ray cluster at {address}, which has no autoscaler",
            hosts=hosts,
        )
    return ClusterOffer(
        nodes=nodes,
        can_grow=True,
        where=f"Ray cluster at {address}, whose autoscaler may add nodes",
        hosts=hosts,
    )


def _autoscaler_can_add_nodes(gcs_address: str) -> bool | None:
    """False when the cluster's monitor runs Ray's read-only provider (no autoscaling config:
    every node type is ``node_<node id>``), True when it runs node types of a config, None
    when it has not reported or cannot be read. Reads the v1 monitor's status (Ray's internal
    KV, as ``ray status`` does) and else autoscaler v2's cluster status."""
    try:
        from ray._private import ray_constants
        from ray.autoscaler._private.util import format_readonly_node_type
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        if raw:
            report = json.loads(raw).get("autoscaler_report") or {}
            return _grows(report.get("node_type_mapping") or {}, format_readonly_node_type)
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(gcs_address)
        if str(getattr(status.stats, "autoscaler_version", "0") or "0") == "0":
            return None  # no autoscaler v2 state reported (yet)
        types = {n.node_id: n.ray_node_type_name for n in status.active_nodes + status.idle_nodes}
        return _grows(types, format_readonly_node_type)
    except Exception as e:  # private APIs: a Ray that moved them leaves the answer unknown
        log.debug("cannot read the cluster's autoscaler status: %s", e)
        return None


def _grows(node_types: dict[str, Any], readonly_name: Any) -> bool | None:
    """Whether a monitor's node types (node id -> type name) are a config's (True) or the
    read-only provider's, one per node (False); None without nodes."""
    if not node_types:
        return None
    return not all(name == readonly_name(node_id) for node_id, name in node_types.items())
