"""The Llama 3.1 Instruct stand-in (``tiny:llama31-instruct``): format, build, and stage 1 and
the DSG questions on it.

The fast tests build a micro version of the recipe (a few steps); the slow ones use the real
build, made once per session by the registry (``standin`` fixture, a few minutes on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
import time
from collections import Counter
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from selma_ray.models.llm_standin import (
    EOT,
    LLAMA31_CHAT_TEMPLATE,
    RECIPE_FILE,
    StandinRecipe,
    _encode,
    dsg_conversations,
    make_llama31_instruct,
    training_conversations,
)
from selma_ray.prompts.dsg.answer import BROAD_CATEGORIES, parse_answer, split_sections
from selma_ray.prompts.dsg.requests import build_request as build_dsg_request
from selma_ray.prompts.dsg.requests import example_pool
from selma_ray.prompts.fewshot import build_request, parse_response
from selma_ray.skills import BUILTIN_SKILLS

#: A recipe that builds in seconds: same code path, far too little training to write lists.
MICRO = StandinRecipe(
    conversations=20, pool_per_skill=8, steps=3, vocab_size=700, dsg_conversations=10, dsg_steps=2
)
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
    assert config.max_position_embeddings == 1024
    assert config.rope_parameters["rope_type"] == "llama3"
    # the hub's spelling, which transformers 4 reads too
    raw = json.loads(Path(micro, "config.json").read_text())
    assert raw["rope_theta"] == 500000.0 and raw["rope_scaling"]["rope_type"] == "llama3"
    assert "rope_parameters" not in raw
    raw_tok = json.loads(Path(micro, "tokenizer_config.json").read_text())
    assert raw_tok["chat_template"] == LLAMA31_CHAT_TEMPLATE
    meta = json.loads(Path(micro, RECIPE_FILE).read_text())
    assert meta["recipe"]["steps"] == MICRO.steps == len(meta["loss"])
    assert meta["recipe"]["dsg_steps"] == MICRO.dsg_steps == len(meta["dsg_loss"])
    assert meta["conversations"] == MICRO.conversations + meta["dsg_conversations"]
    assert meta["dsg_conversations"] == MICRO.dsg_conversations


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


def _dsg_prompt(req) -> str:
    """The prompt a DSG request asks about (its last ``Text:`` line)."""
    return req.messages[-1]["content"].rsplit("\nText: ", 1)[1]


def test_dsg_conversations_are_the_pipelines_requests_answered_with_known_scene_graphs(micro):
    from functools import partial

    from transformers import AutoTokenizer

    from selma_ray.config import DsgQuestionsConfig
    from selma_ray.prompts.dsg.answer import format_answer
    from selma_ray.prompts.engines.base import TokenBudget, count_prompt_tokens

    cfg = DsgQuestionsConfig()
    pool = {e.item_id: e for e in example_pool()}
    by_text = {e.text: e for e in pool.values()}
    data = dsg_conversations(MICRO, seed=0)
    n_captions = round(MICRO.dsg_conversations * MICRO.dsg_caption_fraction)
    assert len(data) == MICRO.dsg_conversations
    skills = list(BUILTIN_SKILLS)  # the built-in skills in turn
    assert Counter(r.skill for r, _ in data[:n_captions]) == Counter(
        skills[i % len(skills)] for i in range(n_captions)
    )
    assert {r.skill for r, _ in data[n_captions:]} == {"dsg1k"}
    for req, answer in data:
        prompt = _dsg_prompt(req)
        examples = [pool[i] for i in req.examples]
        assert len(examples) == cfg.examples
        # the request is the DSG pipeline's own, for its prompt and DSG-1k examples
        again = build_dsg_request(
            req.skill,
            prompt,
            examples,
            seed=req.seed,
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
        )
        assert again == req
        # the answer is a complete scene graph of dsg_tuples tuples, in the examples' format
        parsed = parse_answer(answer)
        assert parsed.dropped is None and len(parsed.questions) == MICRO.dsg_tuples
        assert format_answer(parsed.questions) == answer
        if req.skill == "dsg1k":  # an item's own annotation, not shown as its example
            item = by_text[prompt]
            assert answer == format_answer(list(item.questions))
            assert item.item_id not in req.examples
        else:  # a stage-1 caption of its skill's length, with the scene-graph engine's graph
            limit = BUILTIN_SKILLS[req.skill].word_limit * MICRO.answer_word_fraction
            assert len(prompt.split()) <= limit
            assert prompt not in by_text
    assert dsg_conversations(MICRO, seed=0) == data  # seeded
    # fitted into the stand-in's context as the vllm engine fits them: fewer examples
    tok = AutoTokenizer.from_pretrained(micro)
    budget = TokenBudget(
        MICRO.max_position_embeddings, partial(count_prompt_tokens, tok, plain_special_tokens=True)
    )
    fitted = dsg_conversations(MICRO, 0, budget)
    assert fitted and all(budget.count(r) + r.max_tokens <= budget.max_model_len for r, _ in fitted)
    assert any(len(r.examples) < cfg.examples for r, _ in fitted)
    assert {_dsg_prompt(r) for r, _ in fitted} <= {_dsg_prompt(r) for r, _ in data}


def test_dsg_training_spans_are_the_answer_and_the_short_examples_shown(micro):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro)
    pool = {e.item_id: e for e in example_pool()}
    for req, answer in dsg_conversations(MICRO, seed=0):
        ids, spans = _encode(tok, req, answer, example_loss=True, example_max_tuples=5)
        *shown, (start, end) = spans
        assert end == len(ids)
        assert tok.decode(ids[start:end]) == answer + EOT
        short = [i for i in req.examples if len(pool[i].questions) <= 5]
        assert len(shown) == len(short)
        for (a, b), item_id in zip(shown, short, strict=True):
            text = tok.decode(ids[a:b])
            assert text.startswith("Tuples:\n1 | ")
            sections = split_sections(text)
            assert [len(sections[s]) for s in ("tuples", "dependencies")] == [
                len(pool[item_id].questions)
            ] * 2
        _, answer_only = _encode(tok, req, answer)
        assert answer_only == spans[-1:]


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
def test_prompts_stage_on_the_transformers_engine_reaches_its_target_with_dsg_questions(standin):
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
    )
    assert cfg.dsg_questions.enabled  # asked of the same engine after each round
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
        # the stand-in's DSG answers parse for most of its prompts (each kept on its row)
        dsg = s["dsg"]
        assert dsg["asked"] == 8 and dsg["parsed"] >= 5, stats
        assert dsg["parsed"] + sum(dsg["dropped"].values()) == dsg["asked"]
        assert sum(r["questions"] is not None for r in rows) == dsg["parsed"]


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
    assert budget.max_model_len == 1024
    # vLLM fed each prompt as rendered by the template, with no second <|begin_of_text|>
    assert [c.prompt_tokens for c in completions] == [budget.count(r) for r in requests]
    items = _accepted(requests, completions)
    counts: dict[str, list[int]] = {}
    for req, kept in zip(requests, items, strict=True):
        counts.setdefault(req.skill, []).append(len(kept))
        assert _max_rouge_to_examples(kept, req.examples) <= 0.8
    print(f"\nvLLM ({seconds:.1f} s with engine start): items accepted per request", counts)
    _assert_most_requests_yield_items(counts)


#: DSG questions the stand-in must give on the vllm engine: at least this many of the 20
#: prompts parse (below what the registry's build was measured to give, with margin).
DSG_MIN_PARSED = 12
_TUPLE = re.compile(r"^([a-z]+) - (.+) \((.+)\)$")


@pytest.mark.slow
@pytest.mark.vllm
def test_dsg_pipeline_on_the_vllm_engine_parses_questions_for_most_prompts(
    standin, require_vllm, monkeypatch
):
    """The DSG step as a rehearsal runs it: the stand-in's own stage-1 prompts, asked through
    the real pipeline (``ask_questions``: requests fitted to the engine's budget, one generate
    call, the parser) of the real vLLM engine, in this process."""
    from selma_ray.config import load_config
    from selma_ray.execution import InProcessExecutor
    from selma_ray.prompts.dsg.pipeline import PromptToAsk, ask_questions
    from selma_ray.prompts.engines.vllm_engine import VllmEngine

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    cfg = load_config(
        overrides=["prompts.engine=vllm", "prompts.model=tiny:llama31-instruct"]
    ).prompts
    engine = VllmEngine(cfg.model, cfg.vllm, InProcessExecutor())
    requests = [r for name in BUILTIN_SKILLS for r in _requests(name, 3)]
    items: list[PromptToAsk] = []
    for req, kept in zip(requests, _accepted(requests, engine.generate(requests)), strict=True):
        have = sum(i.skill == req.skill for i in items)
        items += [
            PromptToAsk(f"{req.skill}-{have + i:05d}", req.skill, p)
            for i, p in enumerate(kept[: 4 - have])
        ]
    assert len(items) == 20, [i.prompt_id for i in items]
    t0 = time.perf_counter()
    outcomes = ask_questions(engine, items, cfg.dsg_questions, seed=0, budget=engine.token_budget())
    seconds = time.perf_counter() - t0
    parsed = [o.questions for o in outcomes if o.questions is not None]
    print(
        f"\nDSG on vLLM: {len(parsed)} of {len(items)} parsed in {seconds:.1f} s (engine start "
        f"included); dropped {Counter(o.dropped for o in outcomes if o.dropped)}; "
        f"{sum(o.shortened for o in outcomes)} sent with fewer examples"
    )
    assert len(parsed) >= DSG_MIN_PARSED
    for questions in parsed:  # every question a DSG question tied to its tuple's id
        ids = [q.proposition_id for q in questions]
        assert ids == list(range(1, len(ids) + 1))
        for q in questions:
            m = _TUPLE.match(q.tuple)
            assert m and m.groups()[:2] == (q.category_broad, q.category_detailed)
            assert q.category_broad in BROAD_CATEGORIES
            assert set(q.dependency) <= set(ids) - {q.proposition_id}
            assert q.question.strip() and q.question == q.question.strip()
