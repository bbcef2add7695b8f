"""The vllm engine for real: vllm(-cpu) engines in a Ray Data actor pool, with the tiny LLM."""

from __future__ import annotations

import pytest

from selma_ray.config import load_config
from selma_ray.prompts.fewshot import build_request
from selma_ray.skills import BUILTIN_SKILLS

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def vllm_available():
    pytest.importorskip("vllm")


def test_vllm_engine_maps_requests_over_ray_data_actors(
    vllm_available, ray_cluster, tiny_models, tmp_path
):
    from selma_ray.distributed import RayExecutor
    from selma_ray.pipeline import run_pipeline
    from selma_ray.prompts.engines.vllm_engine import VllmEngine
    from selma_ray.storage import RunDir

    cfg = load_config(
        overrides=[
            "prompts.engine=vllm",
            "prompts.num_prompts=4",
            "prompts.max_rounds=1",
            "prompts.max_tokens=32",
            "prompts.requests_per_round=2",
            "prompts.skills=[coco, whoops]",
            "prompts.vllm.rows_per_task=2",
            "prompts.vllm.max_model_len=512",
        ]
    )
    engine = VllmEngine(cfg.prompts.model, cfg.prompts.vllm, RayExecutor())
    reqs = [
        build_request(BUILTIN_SKILLS["coco"], ["a", "b", "c"], n_items=2, seed=s, max_tokens=16)
        for s in range(3)
    ]
    out = engine.generate(reqs)
    assert len(out) == 3 and all(isinstance(c.text, str) and c.text for c in out)
    # noise from a random model: 16 tokens without an end token means cut at the limit
    assert all(c.truncated for c in out)

    # the whole stage through the orchestrator: one round, two skills, one Ray Data job
    summary = run_pipeline(cfg, str(tmp_path / "run"), stages=["prompts"])
    rd = RunDir(str(tmp_path / "run"))
    stats = rd.read_json("prompts", "stats.json")
    assert set(stats) == {"coco", "whoops"}
    for s in stats.values():
        assert s["rounds"] == 1 and s["responses"] == 2
        assert s["requested"] == 2 * cfg.prompts.prompts_per_request
        # every list item the engine returned is either accepted or counted under a reason
        assert s["parsed"] == s["accepted"] + sum(s["dropped"].values())
    # a random model does not reach the target: the stage says so instead of claiming done
    manifest = rd.read_json("manifest.json")
    if any(s["accepted"] < 4 for s in stats.values()):
        assert manifest["stages"]["prompts"]["status"] == "incomplete"
        assert any("reached" in n for n in summary.notes)
