"""The Llama 3.1 Instruct stand-in (``tiny:llama31-instruct``): format, build, and stage 1 on it.

The fast tests build a micro version of the recipe (a few steps); the slow ones use the real
build, made once per session by the registry (``standin`` fixture, a few minutes on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
import time
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from selma_ray.models.llm_standin import (
    EOT,
    LLAMA31_CHAT_TEMPLATE,
    RECIPE_FILE,
    StandinRecipe,
    make_llama31_instruct,
    training_conversations,
)
from selma_ray.prompts.fewshot import build_request, parse_response
from selma_ray.skills import BUILTIN_SKILLS

#: A recipe that builds in seconds: same code path, far too little training to write lists.
MICRO = StandinRecipe(conversations=20, pool_per_skill=8, steps=3, vocab_size=700)
#: What the slow tests ask, as the tiny preset's stage 1 does: 3 examples, 10 new prompts.
K, M, MAX_TOKENS, TEMPERATURE = 3, 10, 512, 1.0


def _hashes(root: str | Path) -> dict[str, str]:
    root = Path(root)
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.iterdir())
        if p.is_file()
    }


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny model gains nothing from more threads, and on busy shared cores their
    spin-waits made generation several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_llama31_instruct(tmp_path_factory.mktemp("micro"), seed=0, recipe=MICRO)


@pytest.fixture(scope="session")
def standin(_offline_cache) -> str:
    """The registry's build of ``tiny:llama31-instruct`` (once per session)."""
    from selma_ray.models import resolve_model

    t0 = time.perf_counter()
    path = resolve_model("tiny:llama31-instruct")
    print(f"\ntiny:llama31-instruct ready in {time.perf_counter() - t0:.1f} s")
    return path


def _requests(skill_name: str, n: int = 4) -> list:
    skill = BUILTIN_SKILLS[skill_name]
    return [
        build_request(
            skill,
            list(skill.seeds)[:K],
            n_items=M,
            seed=1000 + i,
            temperature=TEMPERATURE,
            max_tokens=MAX_TOKENS,
        )
        for i in range(n)
    ]


def _accepted(requests: list, completions: list) -> list[list[str]]:
    """The items parse_response keeps from each completion."""
    return [
        parse_response(
            c.text, word_limit=r.word_limit, examples=r.examples, truncated=c.truncated
        ).items
        for r, c in zip(requests, completions, strict=True)
    ]


def _max_rouge_to_examples(items: list[str], examples: tuple[str, ...]) -> float:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return max(
        (scorer.score(e, item)["rougeL"].fmeasure for item in items for e in examples),
        default=0.0,
    )


# --------------------------------------------------------------------------- format and build


def test_chat_template_renders_llama31_instruct_prompts(micro):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro)
    assert tok.chat_template == LLAMA31_CHAT_TEMPLATE
    messages = [
        {"role": "system", "content": "  Be brief.\n"},
        {"role": "user", "content": "Hi there \n"},
    ]
    # Llama-3.1-8B-Instruct's rendering of the same conversation, written out by hand
    expected = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Hi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        expected
    )
    answer = [*messages, {"role": "assistant", "content": "1. A cat.\n"}]
    assert tok.apply_chat_template(answer, tokenize=False) == (expected + "1. A cat.<|eot_id|>")
    no_system = tok.apply_chat_template(messages[1:], add_generation_prompt=False, tokenize=False)
    assert no_system == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
    )
    # every special token is one id, and the text tokenizes back exactly
    ids = tok(expected, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:2] == ["<|begin_of_text|>", "<|start_header_id|>"]
    assert tok.decode(ids) == expected
    # a plain encode adds bos, as Llama 3's tokenizer does
    assert tok("A cat.")["input_ids"][0] == tok.convert_tokens_to_ids("<|begin_of_text|>")


def test_model_ends_answers_on_eot_and_fits_vllm_cpu(micro):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(micro)
    config = AutoConfig.from_pretrained(micro)
    gen = GenerationConfig.from_pretrained(micro)
    eot = tok.convert_tokens_to_ids(EOT)
    assert tok.eos_token == EOT and tok.eos_token_id == eot
    assert eot in gen.eos_token_id and eot in config.eos_token_id
    assert config.model_type == "llama" and config.architectures == ["LlamaForCausalLM"]
    assert config.head_dim == config.hidden_size // config.num_attention_heads == 32
    assert config.max_position_embeddings == 2048
    assert config.rope_parameters["rope_type"] == "llama3"
    # the hub's spelling, which transformers 4 reads too
    raw = json.loads(Path(micro, "config.json").read_text())
    assert raw["rope_theta"] == 500000.0 and raw["rope_scaling"]["rope_type"] == "llama3"
    assert "rope_parameters" not in raw
    raw_tok = json.loads(Path(micro, "tokenizer_config.json").read_text())
    assert raw_tok["chat_template"] == LLAMA31_CHAT_TEMPLATE
    meta = json.loads(Path(micro, RECIPE_FILE).read_text())
    assert meta["recipe"]["steps"] == MICRO.steps == len(meta["loss"])


def test_training_conversations_are_stage_requests_answered_as_numbered_lists():
    data = training_conversations(MICRO, seed=0)
    assert len(data) == MICRO.conversations
    assert {r.skill for r, _ in data} == set(BUILTIN_SKILLS)
    for req, answer in data:
        skill = BUILTIN_SKILLS[req.skill]
        # the request is build_request's for its examples and item count
        again = build_request(skill, list(req.examples), n_items=req.n_items, seed=req.seed)
        assert req.messages == again.messages
        lines = answer.splitlines()
        numbers = [int(re.match(r"(\d+)\. ", line).group(1)) for line in lines]
        assert numbers == list(range(req.start_index, req.start_index + req.n_items))
        parsed = parse_response(answer, word_limit=skill.word_limit, examples=req.examples)
        assert len(parsed.items) == req.n_items and not parsed.dropped
    assert training_conversations(MICRO, seed=0) == data  # seeded


def test_build_is_deterministic_in_its_seed(micro, tmp_path):
    again = make_llama31_instruct(tmp_path / "again", seed=0, recipe=MICRO)
    other = make_llama31_instruct(tmp_path / "other", seed=1, recipe=MICRO)
    assert _hashes(again) == _hashes(micro)
    assert _hashes(other)["model.safetensors"] != _hashes(micro)["model.safetensors"]


# --------------------------------------------------------------------------- the real build


def _assert_most_requests_yield_items(counts: dict[str, list[int]]) -> None:
    """Below what the stand-in was measured to give (4 requests per skill, M = 10), with
    margin: 3 or more items from most requests, some from every skill."""
    flat = [n for c in counts.values() for n in c]
    assert sum(n >= 3 for n in flat) >= 13, counts
    assert statistics.mean(flat) >= 6, counts
    assert all(sum(c) >= 6 for c in counts.values()), counts


@pytest.mark.slow
def test_generate_writes_lists_the_parser_accepts_for_every_skill(standin):
    from selma_ray.config import TransformersEngineConfig
    from selma_ray.prompts.engines.transformers_engine import TransformersEngine
    from selma_ray.prompts.fewshot import _normalise_key

    trained = {
        _normalise_key(line.split(". ", 1)[1])
        for _, answer in training_conversations(StandinRecipe(), seed=0)
        for line in answer.splitlines()
    }
    engine = TransformersEngine("tiny:llama31-instruct", TransformersEngineConfig(batch_size=4))
    counts: dict[str, list[int]] = {}
    recalled = 0
    for name in BUILTIN_SKILLS:
        requests = _requests(name)
        items = _accepted(requests, engine.generate(requests))
        counts[name] = [len(i) for i in items]
        for req, kept in zip(requests, items, strict=True):
            # new prompts: no (near-)copy of an example shown, hardly any training caption
            assert _max_rouge_to_examples(kept, req.examples) <= 0.8
            recalled += sum(_normalise_key(i) in trained for i in kept)
    print("\ntransformers: items accepted per request", counts, "recalled", recalled)
    _assert_most_requests_yield_items(counts)
    assert recalled <= 0.1 * sum(map(sum, counts.values()))


@pytest.mark.slow
def test_prompts_stage_on_the_transformers_engine_reaches_its_target(standin):
    from selma_ray.config import PromptsConfig
    from selma_ray.execution import InProcessExecutor
    from selma_ray.prompts.engines import make_engine
    from selma_ray.prompts.stage import generate_prompts, read_prompts
    from selma_ray.storage import RunDir

    cfg = PromptsConfig(
        engine="transformers",
        model="tiny:llama31-instruct",
        skills=["coco", "whoops"],
        num_prompts=8,
        examples_per_request=K,
        prompts_per_request=M,
        requests_per_round=2,
        max_rounds=3,
        max_tokens=MAX_TOKENS,
        temperature=TEMPERATURE,
        # DSG questions, asked of the same engine, are a format the stand-in is not trained on
        dsg_questions={"enabled": False},
    )
    run_dir = RunDir("memory://selma-llm-standin/run")
    engine = make_engine(cfg, executor=InProcessExecutor())
    stats = generate_prompts(cfg, run_dir, engine, seed=0)
    print("\nstage stats", json.dumps(stats))
    for name, s in stats.items():
        assert s["accepted"] == 8 and s["rounds"] <= 3, stats
        rows = read_prompts(run_dir, name)
        seeds = set(BUILTIN_SKILLS[name].seeds)
        assert len({r["prompt"] for r in rows}) == 8
        assert all(r["engine"] == "transformers" and r["prompt"] not in seeds for r in rows)
        # every list item the model wrote was accepted or counted under a reason
        assert s["parsed"] == s["accepted"] + sum(s["dropped"].values())


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_engine_writes_lists_the_parser_accepts(standin, require_vllm, monkeypatch):
    from selma_ray.config import load_config
    from selma_ray.execution import InProcessExecutor
    from selma_ray.prompts.engines.vllm_engine import VllmEngine

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    cfg = load_config(
        overrides=["prompts.engine=vllm", "prompts.model=tiny:llama31-instruct"]
    ).prompts
    assert cfg.vllm.dtype == "float32" and cfg.vllm.enforce_eager  # the tiny preset's CPU setup
    engine = VllmEngine(cfg.model, cfg.vllm, InProcessExecutor())
    requests = [r for name in BUILTIN_SKILLS for r in _requests(name)]
    t0 = time.perf_counter()
    completions = engine.generate(requests)
    seconds = time.perf_counter() - t0
    budget = engine.token_budget()
    assert budget.max_model_len == 2048
    # vLLM fed each prompt as rendered by the template, with no second <|begin_of_text|>
    assert [c.prompt_tokens for c in completions] == [budget.count(r) for r in requests]
    items = _accepted(requests, completions)
    counts: dict[str, list[int]] = {}
    for req, kept in zip(requests, items, strict=True):
        counts.setdefault(req.skill, []).append(len(kept))
        assert _max_rouge_to_examples(kept, req.examples) <= 0.8
    print(f"\nvLLM ({seconds:.1f} s with engine start): items accepted per request", counts)
    _assert_most_requests_yield_items(counts)
