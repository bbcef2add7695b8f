from __future__ import annotations

import pytest

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


@pytest.mark.parametrize(
    ("temperature", "top_p"), [(1.0, 0.7), (0.5, 0.7), (1.0, 1.0), (2.0, 0.95)]
)
def test_sampler_draws_as_transformers_temperature_and_top_p_warpers(temperature, top_p):
    """The per-request sampler's token frequencies over 4,000 seeds match the distribution
    of transformers' own TemperatureLogitsWarper + TopPLogitsWarper (the library reference);
    top_p 1 keeps every token, however unlikely. The same seeds draw the same tokens again,
    and a temperature-0 row is left to generate()'s greedy choice."""
    import dataclasses

    import torch
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from selma_ray.prompts.engines.transformers_engine import _PerRequestSampler

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]]))
    warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits))
    reference = torch.softmax(warped, dim=-1)[0]
    base = build_request(BUILTIN_SKILLS["coco"], ["a"], n_items=1, seed=0, max_tokens=4)
    n = 4000
    reqs = [
        dataclasses.replace(base, seed=s, temperature=temperature, top_p=top_p) for s in range(n)
    ]
    greedy = dataclasses.replace(base, temperature=0.0)
    scores = logits.repeat(n + 1, 1)
    out = _PerRequestSampler([*reqs, greedy])(None, scores)
    assert torch.equal(out[-1], scores[-1])
    assert torch.isinf(out[:-1]).sum(dim=-1).tolist() == [4] * n  # one token left per row
    tokens = out[:-1].argmax(dim=-1)
    freq = torch.bincount(tokens, minlength=5).double() / n
    assert torch.allclose(freq, reference.double(), atol=0.025), (freq, reference)
    assert (freq > 0).tolist() == (reference > 0).tolist()
    again = _PerRequestSampler(reqs)(None, scores[:-1]).argmax(dim=-1)
    assert torch.equal(again, tokens)


def test_the_models_own_generation_settings_do_not_change_the_texts(tiny_models):
    """A model whose generation_config asks for a repetition penalty, n-gram blocking, beams
    or several sequences answers as one without: the sampler alone picks each token (as the
    vllm engine's explicit sampling settings)."""
    coco = BUILTIN_SKILLS["coco"]
    reqs = [build_request(coco, ["a", "b"], n_items=2, seed=s, max_tokens=12) for s in (1, 2)]
    engine = TransformersEngine("tiny:llm", TransformersEngineConfig(batch_size=2))
    plain = [c.text for c in engine.generate(reqs)]
    config = engine._model.generation_config
    config.repetition_penalty, config.no_repeat_ngram_size = 1.8, 2
    config.num_beams, config.num_return_sequences, config.do_sample = 3, 2, True
    config.temperature, config.top_k = 0.1, 3
    assert [c.text for c in engine.generate(reqs)] == plain
    engine.close()
