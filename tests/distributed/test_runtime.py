"""The run's Ray session: connect where told, else start a Ray here (never join another)."""

from __future__ import annotations

import pytest

from selma_ray.config import RayConfig
from selma_ray.distributed import runtime


class _FakeRay:
    """Records ``init`` / ``shutdown`` instead of starting Ray."""

    def __init__(self):
        self.inits: list[dict] = []
        self.shutdowns = 0

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.inits.append(kwargs)

    def shutdown(self):
        self.shutdowns += 1

    def cluster_resources(self):
        return {"CPU": 2.0}


@pytest.mark.parametrize(
    ("config_address", "env_address", "expected"),
    [
        (None, None, "local"),  # Ray would otherwise join the cluster `ray start` last made
        (None, "ray://head:10001", "ray://head:10001"),
        ("10.0.0.1:6379", "ray://head:10001", "10.0.0.1:6379"),
    ],
)
def test_without_an_address_the_run_starts_its_own_ray(
    monkeypatch, config_address, env_address, expected
):
    import ray

    fake = _FakeRay()
    for name in ("is_initialized", "init", "shutdown", "cluster_resources"):
        monkeypatch.setattr(ray, name, getattr(fake, name))
    if env_address:
        monkeypatch.setenv("RAY_ADDRESS", env_address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with runtime.ray_session(RayConfig(address=config_address, num_cpus=2)):
        pass
    assert [i["address"] for i in fake.inits] == [expected]
    assert ("num_cpus" in fake.inits[0]) == (expected == "local")  # only for a Ray made here
    assert fake.shutdowns == 1
