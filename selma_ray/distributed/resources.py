"""What the Ray cluster of this session can offer, as the plain
:class:`~selma_ray.preflight.ClusterOffer` the preflight resource check takes.

A Ray started by this process (the run's local Ray) is one node that cannot grow. A cluster
this process connected to may have an autoscaler; Ray 2.60 does not show a driver the node
types it may add (``ray.autoscaler.v2.sdk.get_cluster_status`` reports the nodes, launches and
resource demands, not the node types' resources), so such a cluster is taken as able to grow
and a shortfall against its current nodes is only a warning.
"""

from __future__ import annotations

from selma_ray.preflight import ClusterOffer

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
            nodes=nodes, can_grow=False, where="local Ray, cannot grow", hosts=hosts
        )
    address = ray.get_runtime_context().gcs_address
    return ClusterOffer(
        nodes=nodes,
        can_grow=True,
        where=f"Ray cluster at {address}, whose autoscaler may add nodes",
        hosts=hosts,
    )
