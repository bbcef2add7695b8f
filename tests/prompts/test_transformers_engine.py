from __future__ import annotations

from selma_ray.config import TransformersEngineConfig
from selma_ray.prompts.engines.transformers_engine import TransformersEngine
from selma_ray.prompts.fewshot import build_request
from selma_ray.skills import BUILTIN_SKILLS


def test_batched_generate_is_seeded_and_flags_truncation(tiny_models):
    engine = TransformersEngine("tiny:llm", TransformersEngineConfig(batch_size=2))
    reqs = [
        build_request(BUILTIN_SKILLS["coco"], ["a", "b", "c"], n_items=2, seed=s, max_tokens=12)
        for s in (5, 6, 7)
    ]
    first = engine.generate(reqs)
    again = engine.generate(reqs)
    assert len(first) == 3
    assert [c.text for c in first] == [c.text for c in again]
    # a random model rarely emits its end token within 12 tokens: those answers are cut
    assert any(c.truncated for c in first)
    other = engine.generate(
        [build_request(BUILTIN_SKILLS["coco"], ["a"], n_items=2, seed=99, max_tokens=12)]
    )
    assert other[0].text != first[0].text
    engine.close()
