from __future__ import annotations

from selma_ray.config import TransformersEngineConfig
from selma_ray.prompts.engines.transformers_engine import TransformersEngine, _batches
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


def test_token_budget_counts_what_generate_feeds_and_fitted_requests_fit(tiny_models):
    """The model's 512 positions are the budget; generate() is fed exactly the counted tokens,
    and each cut request asks for exactly the room its prompt leaves."""
    from selma_ray.prompts.engines.base import TokenBudget
    from selma_ray.prompts.fewshot import fit_request

    engine = TransformersEngine("tiny:llm", TransformersEngineConfig(batch_size=4))
    assert engine.token_budget().max_model_len == 512  # max_position_embeddings of tiny:llm
    # a smaller context with the engine's own count, so the test generates few tokens
    budget = TokenBudget(340, engine.token_budget().count)
    coco = BUILTIN_SKILLS["coco"]
    examples = list(coco.seeds)
    # asking for 200 response tokens: one example, response cut to the room left
    fits = [
        fit_request(coco, examples[: 1 + s % 3], budget, n_items=3, seed=s, max_tokens=200)
        for s in range(3)
    ]
    reqs = [f.request for f in fits]
    assert all(r is not None and len(r.examples) == 1 and f.max_tokens_reduced for r, f in
               zip(reqs, fits, strict=True))  # fmt: skip
    # plus one short request that fits as built, batched apart (another max_tokens)
    reqs.append(fit_request(coco, examples, budget, n_items=3, seed=9, max_tokens=8).request)
    assert reqs[-1].max_tokens == 8 and len(reqs[-1].examples) == 3
    # generate() gets max_new_tokens per batch: the cut requests never share the long one's
    assert [[r.max_tokens for r in b] for b in _batches(reqs, 4)] == [[reqs[0].max_tokens] * 3, [8]]
    out = engine.generate(reqs)
    for req, completion in zip(reqs, out, strict=True):
        assert completion.prompt_tokens == budget.count(req)
        assert completion.prompt_tokens + req.max_tokens == 340 or req is reqs[-1]
    engine.close()


def test_a_plain_prompt_starts_with_the_tokenizers_bos_as_vllm_feeds_it(tiny_models):
    """A model without a chat template (a base model) is fed its plain prompt with the
    tokenizer's special tokens (BOS), as vLLM's generate() does, and the budget counts them;
    a chat template's text is fed as rendered (it writes its own)."""
    engine = TransformersEngine("tiny:llm", TransformersEngineConfig(batch_size=1))
    engine._load()
    tok = engine._tokenizer
    req = build_request(BUILTIN_SKILLS["coco"], ["a", "b"], n_items=2, seed=1, max_tokens=4)
    fed: list[list[int]] = []
    generate = engine._model.generate

    def spy(**kwargs):
        fed.append(kwargs["input_ids"][0].tolist())
        return generate(**kwargs)

    engine._model.generate = spy
    chat = engine.generate([req])[0]
    assert chat.prompt_tokens == engine.token_budget().count(req) == len(fed[-1])
    assert fed[-1].count(tok.bos_token_id) <= 1  # the template's own BOS, not a second one
    tok.chat_template = None  # a base model's tokenizer
    plain = engine.generate([req])[0]
    assert fed[-1] == tok(req.prompt)["input_ids"] and fed[-1][0] == tok.bos_token_id
    assert plain.prompt_tokens == engine.token_budget().count(req) == len(fed[-1])
    engine.close()


def test_a_requests_text_depends_on_its_seed_not_on_its_batch(tiny_models):
    """Each request samples with its own seed (as vLLM's per-request seed): alone, in another
    order or with another batch size it gets the same text, so a resume that re-asks only some
    of a round's requests reproduces them. Another seed gives another text."""
    coco = BUILTIN_SKILLS["coco"]
    reqs = [
        build_request(coco, ["a", "b", "c"][: 1 + s % 3], n_items=2, seed=s, max_tokens=10)
        for s in (5, 6, 7, 8)
    ]
    batched = TransformersEngine("tiny:llm", TransformersEngineConfig(batch_size=4))
    together = [c.text for c in batched.generate(reqs)]
    reordered = [c.text for c in batched.generate(reqs[::-1])][::-1]
    single = TransformersEngine("tiny:llm", TransformersEngineConfig(batch_size=1))
    alone = [single.generate([r])[0].text for r in reqs]
    assert together == reordered == alone
    assert len(set(together)) == len(reqs)
    reseeded = build_request(coco, ["a"], n_items=2, seed=105, max_tokens=10)
    assert single.generate([reseeded])[0].text != alone[0]
    batched.close()
    single.close()


def test_sampler_draws_from_the_top_p_nucleus_at_the_requests_temperature():
    """The per-request sampler keeps only the top-p nucleus (the first token always), draws
    with the request's generator, and leaves a greedy (temperature 0) row as it is."""
    import dataclasses

    import torch

    from selma_ray.prompts.engines.transformers_engine import _PerRequestSampler

    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two tokens
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 2))
    hot = build_request(BUILTIN_SKILLS["coco"], ["a"], n_items=1, seed=3, max_tokens=4)
    hot = dataclasses.replace(hot, top_p=0.7, temperature=1.0)
    greedy = dataclasses.replace(hot, temperature=0.0)
    seen = []
    sampler = _PerRequestSampler([hot, greedy])
    for _ in range(400):
        out = sampler(None, logits)
        assert torch.equal(out[1], logits[1])
        (kept,) = torch.nonzero(out[0] == 0).flatten().tolist()
        assert torch.isinf(out[0]).sum() == 3
        seen.append(kept)
    assert set(seen) == {0, 1}
    assert abs(seen.count(0) / len(seen) - 0.5 / 0.8) < 0.08
    again = _PerRequestSampler([hot, greedy])
    assert [int(torch.argmax(again(None, logits)[0])) for _ in range(400)] == seen
