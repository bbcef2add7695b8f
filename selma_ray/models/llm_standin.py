"""``tiny:llama31-instruct``: a tiny Llama 3.1 Instruct stand-in for stage 1's lists and DSG.

Owns the stand-in's recipe (:class:`StandinRecipe`): a byte-level BPE tokenizer with Llama 3's
pre-tokenizer, special tokens and chat template (:data:`LLAMA31_CHAT_TEMPLATE`; tools
simplified), a small ``LlamaForCausalLM`` (head_dim 32, so vLLM's CPU backend runs it, Llama
3.1's ``llama3`` RoPE), its training conversations in two formats and a short AdamW run on the
assistant tokens, one CPU thread:

- stage 1's self-instruct lists (:func:`training_conversations`): requests made by stage 1's
  own :func:`~selma_ray.prompts.fewshot.build_request`, answered with the scene-graph engine's
  numbered lists, for every built-in skill;
- DSG scene graphs (:func:`dsg_conversations`): requests made by the DSG pipeline's own
  :func:`~selma_ray.prompts.dsg.pipeline.plan_request` (its DSG-1k few-shot examples, fitted
  into the stand-in's context as the vllm engine fits them), answered with the known scene
  graph of the prompt: a stage-1 caption of the scene-graph engine with the questions it
  wrote, or a DSG-1k item that is not among its request's examples with its annotation. The
  short examples a request shows are trained on too (the same format as the answer).

What makes DSG learnable in a few CPU minutes: a context of 1024 positions, so the pipeline
fits each DSG request with one or two examples instead of three (short sequences, the prompt
close to the answer); answers of one size (``dsg_tuples`` tuples), so ending each section is
a decision about the current line, not a count kept across the answer; and extra weight on the
answer's ``<|eot_id|>``. The stand-in therefore writes scene graphs of that size whatever the
prompt, well formed but with little of the prompt's content: enough for a rehearsal's DSG step
to parse real generated text.

:func:`make_llama31_instruct` saves the result with ``save_pretrained`` (model, tokenizer,
``generation_config`` ending on ``<|eot_id|>``): it loads like
``meta-llama/Llama-3.1-8B-Instruct`` in transformers and vLLM, and a rehearsal run parses real
numbered lists (stage 1) and real scene graphs (its DSG questions) from it.

Built once per cache directory by :mod:`selma_ray.models.registry`; bump
``selma_ray.models.tiny.FORMAT_VERSION`` when the recipe here changes (it names the cache
directory). Every random choice is seeded: the same seed and torch build give the same files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selma_ray.seeds import derive_seed

if TYPE_CHECKING:
    import os

    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from selma_ray.config import DsgQuestionsConfig
    from selma_ray.prompts.dsg.pipeline import PromptToAsk
    from selma_ray.prompts.engines.base import GenerationRequest, Question, TokenBudget

__all__ = [
    "BOS",
    "EOT",
    "LLAMA31_CHAT_TEMPLATE",
    "RECIPE_FILE",
    "StandinRecipe",
    "dsg_conversations",
    "make_llama31_instruct",
    "training_conversations",
]

log = logging.getLogger(__name__)

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOM = "<|eom_id|>"
EOT = "<|eot_id|>"
PYTHON_TAG = "<|python_tag|>"
PAD = "<|finetune_right_pad_id|>"
#: Llama 3.1's named special tokens in its order (their ids follow from this order here).
SPECIAL_TOKENS = (BOS, EOS, "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
                  PAD, "<|reserved_special_token_2|>", START_HEADER, END_HEADER, EOM, EOT,
                  PYTHON_TAG)  # fmt: skip

#: Llama 3's pre-tokenizer: contractions, letter runs, 1-3 digit groups, punctuation, spaces.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: meta-llama/Llama-3.1-8B-Instruct's chat template. All but tools is as the original (bos,
#: the system block with the knowledge cut-off and default date, trimmed contents, the
#: assistant header as generation prompt); tool definitions are not rendered, tool results
#: render as ``ipython`` turns and tool calls are refused.
LLAMA31_CHAT_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if 'tool_calls' in message %}
        {{- raise_exception("This stand-in model does not call tools.") }}
    {%- elif message.role == 'ipython' or message.role == 'tool' %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""  # noqa: E501 - the template's lines are kept as in the original

#: What the build writes next to the weights: the recipe, data counts and the loss curve.
RECIPE_FILE = "standin.json"


@dataclass(frozen=True)
class StandinRecipe:
    """Sizes, data and optimisation of the stand-in; the defaults are what the registry builds.

    The default budget trains for a few minutes on one CPU thread.
    """

    vocab_size: int = 3072
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    #: the context: a stage-1 request and its list, or a DSG request fitted to 1-2 examples
    #: and its answer (longer list conversations are cut to it)
    max_position_embeddings: int = 1024
    #: training conversations (one request and its answer each), skills in turn
    conversations: int = 1500
    #: captions per skill in the pool a request's examples are drawn from (besides the seeds)
    pool_per_skill: int = 200
    #: items asked per request (M): ``common_items`` half the time, else from the range
    common_items: int = 10
    min_items: int = 4
    max_items: int = 20
    #: answers keep to this fraction of the skill's word limit, so sampled items have room
    answer_word_fraction: float = 0.8
    #: DSG conversations (one prompt's scene-graph request and its answer each)
    dsg_conversations: int = 1000
    #: of those, the share about stage-1 captions (the rest: DSG-1k items, as many as have
    #: ``dsg_tuples`` tuples)
    dsg_caption_fraction: float = 0.8
    #: tuples of every scene graph answered (prompts with other counts are not asked)
    dsg_tuples: int = 5
    #: the examples a request shows are trained on when they have at most this many tuples
    dsg_example_max_tuples: int = 5
    #: also train on the DSG-1k examples a DSG request shows (written as its answer is)
    dsg_example_loss: bool = True
    #: loss weight of a DSG answer's <|eot_id|> (other tokens 1): stop after the last question
    dsg_stop_weight: float = 3.0
    #: optimizer steps on each format's batches (the two interleaved at random)
    steps: int = 330
    dsg_steps: int = 400
    #: tokens per optimizer step, padding included (sequences of similar length batched)
    batch_tokens: int = 3072
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01


# --------------------------------------------------------------------------- data


def training_conversations(recipe: StandinRecipe, seed: int) -> list[tuple[GenerationRequest, str]]:
    """(request, answer) pairs in stage 1's exact format, the built-in skills in turn.

    Each request is :func:`build_request`'s, with K examples (mostly 3, sometimes 1 or 2)
    drawn as the stage draws them, from the skill's seeds and the captions a run would have
    accepted by then, asking for M new items. Its answer is the scene-graph engine's numbered
    list for that request (numbering continued from K+1), written within
    ``answer_word_fraction`` of the skill's word limit.
    """
    from selma_ray.prompts.engines.scene_graph import SceneGraphEngine
    from selma_ray.prompts.fewshot import build_request, sample_examples
    from selma_ray.skills import BUILTIN_SKILLS

    engine = SceneGraphEngine(seed=derive_seed("llama31-instruct", seed, "engine"))
    rng = random.Random(derive_seed("llama31-instruct", seed, "requests"))
    skills = list(BUILTIN_SKILLS.values())
    pools: dict[str, list[str]] = {}
    for skill in skills:
        req = build_request(
            skill, list(skill.seeds), n_items=recipe.pool_per_skill, seed=rng.getrandbits(63)
        )
        text = str(engine.generate([req])[0])
        pools[skill.name] = [line.split(". ", 1)[1] for line in text.splitlines()]
    out = []
    for i in range(recipe.conversations):
        skill = skills[i % len(skills)]
        k = rng.choices((1, 2, 3), weights=(1, 1, 8))[0]
        pool = list(skill.seeds) + pools[skill.name][: rng.randrange(recipe.pool_per_skill + 1)]
        n_items = (
            recipe.common_items
            if rng.random() < 0.5
            else rng.randint(recipe.min_items, recipe.max_items)
        )
        req = build_request(
            skill, sample_examples(pool, k, rng), n_items=n_items, seed=rng.getrandbits(63)
        )
        limit = max(3, round(skill.word_limit * recipe.answer_word_fraction))
        answer = engine.generate([dataclasses.replace(req, word_limit=limit)])[0]
        out.append((req, str(answer)))
    return out


def dsg_conversations(
    recipe: StandinRecipe, seed: int, budget: TokenBudget | None = None
) -> list[tuple[GenerationRequest, str]]:
    """(request, answer) pairs in the DSG pipeline's exact format: captions first, then DSG-1k.

    Each request is :func:`~selma_ray.prompts.dsg.pipeline.plan_request`'s for the default
    :class:`~selma_ray.config.DsgQuestionsConfig` (its examples chosen from DSG-1k by prompt id;
    fitted into ``budget`` when given, as the vllm engine's budget fits it; requests that do not
    fit are left out), and its answer is :func:`~selma_ray.prompts.dsg.answer.format_answer` of
    the prompt's known scene graph, one of ``dsg_tuples`` tuples. ``dsg_caption_fraction`` of
    the prompts are stage-1 captions (the scene-graph engine's, the built-in skills in turn,
    within ``answer_word_fraction`` of the word limit as the stand-in writes them) with the
    questions the engine wrote; the others are distinct DSG-1k items with their annotation,
    each asked with examples that do not include it.
    """
    return _dsg_requests(_dsg_targets(recipe, seed), seed, budget)


def _dsg_targets(recipe: StandinRecipe, seed: int) -> list[tuple[PromptToAsk, list[Question]]]:
    """The prompts of :func:`dsg_conversations` and their scene graphs."""
    from selma_ray.prompts.dsg.pipeline import PromptToAsk
    from selma_ray.prompts.dsg.requests import choose_examples, example_pool
    from selma_ray.prompts.engines.scene_graph import SceneGraphEngine
    from selma_ray.prompts.fewshot import build_request
    from selma_ray.skills import BUILTIN_SKILLS

    rng = random.Random(derive_seed("llama31-instruct", seed, "dsg"))
    engine = SceneGraphEngine(seed=derive_seed("llama31-instruct", seed, "dsg-engine"))
    targets: list[tuple[PromptToAsk, list[Question]]] = []
    n_captions = round(recipe.dsg_conversations * recipe.dsg_caption_fraction)
    skills = list(BUILTIN_SKILLS.values())
    for s, skill in enumerate(skills):
        n = len(range(s, n_captions, len(skills)))
        limit = max(3, round(skill.word_limit * recipe.answer_word_fraction))
        kept: list[tuple[PromptToAsk, list[Question]]] = []
        for _ in range(50):  # captions of dsg_tuples tuples are a few in a hundred, or more
            if len(kept) >= n:
                break
            req = build_request(skill, list(skill.seeds), n_items=4 * n, seed=rng.getrandbits(63))
            text = str(engine.generate([dataclasses.replace(req, word_limit=limit)])[0])
            for line in text.splitlines():
                caption = line.split(". ", 1)[1]
                questions = engine.questions_for(caption) or []
                if len(kept) < n and len(questions) == recipe.dsg_tuples:
                    kept.append((PromptToAsk(f"{skill.name}-{len(kept):05d}", skill.name, caption),
                                 questions))  # fmt: skip
        targets += kept
    run_seed = derive_seed("llama31-instruct", seed, "dsg-run")
    k = _dsg_config().examples
    pool = [e for e in example_pool() if len(e.questions) == recipe.dsg_tuples]
    for example in rng.sample(pool, min(len(pool), recipe.dsg_conversations - n_captions)):
        prompt_id, j = f"dsg1k-{example.item_id}", 0
        while example in choose_examples(run_seed, prompt_id, k):  # not its own example
            j += 1
            prompt_id = f"dsg1k-{example.item_id}-{j}"
        targets.append((PromptToAsk(prompt_id, "dsg1k", example.text), list(example.questions)))
    return targets


def _dsg_config() -> DsgQuestionsConfig:
    """The DSG questions settings a run asks with by default (examples, response tokens)."""
    from selma_ray.config import DsgQuestionsConfig

    return DsgQuestionsConfig()


def _dsg_requests(
    targets: list[tuple[PromptToAsk, list[Question]]], seed: int, budget: TokenBudget | None
) -> list[tuple[GenerationRequest, str]]:
    """Each target's request, as the DSG pipeline plans it, and its answer."""
    from selma_ray.prompts.dsg.answer import format_answer
    from selma_ray.prompts.dsg.pipeline import plan_request

    run_seed = derive_seed("llama31-instruct", seed, "dsg-run")
    cfg = _dsg_config()
    out = []
    for item, questions in targets:
        fit = plan_request(item, cfg, run_seed, budget)
        if fit.request is not None:
            out.append((fit.request, format_answer(questions)))
    return out


def _tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE learned on ``texts`` with Llama 3's pre-tokenizer and special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(  # bos first, as Llama 3's
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, backend.token_to_id(BOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOT,  # as Llama-3.1-8B-Instruct's tokenizer: an answer ends on <|eot_id|>
        chat_template=LLAMA31_CHAT_TEMPLATE,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )


def _template_texts() -> list[str]:
    """Text the chat template adds around the messages (for the tokenizer's corpus)."""
    return [
        "system user assistant ipython",
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
    ]


#: Where a DSG request's examples start and end (the text after them asks for the prompt's).
_DSG_EXAMPLES_START = "Examples:\n\n"
_DSG_EXAMPLES_END = "\n\nNow the same three sections"
_DSG_TUPLES = "Tuples:\n"
_DSG_NEXT_TEXT = "\n\nText: "


def _encode(
    tok: PreTrainedTokenizerFast,
    req: GenerationRequest,
    answer: str,
    *,
    example_loss: bool = False,
    example_max_tuples: int = 1000,
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the whole conversation and the [start, end) spans trained on: the
    assistant's tokens, after (``example_loss``) the tokens of a DSG request's examples.

    The prompt part is tokenized alone, as an engine tokenizes it before generating.
    """
    prompt = tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
    whole = tok.apply_chat_template(
        [*req.messages, {"role": "assistant", "content": answer}], tokenize=False
    )
    if not whole.startswith(prompt):  # pragma: no cover - a template that reorders turns
        msg = "the chat template does not render the prompt as a prefix of the conversation"
        raise RuntimeError(msg)
    head = tok(prompt, add_special_tokens=False, return_offsets_mapping=example_loss)
    tail = tok(whole[len(prompt) :], add_special_tokens=False)["input_ids"]
    ids = list(head["input_ids"])
    spans = [(len(ids), len(ids) + len(tail))]
    if example_loss:
        start = prompt.find(_DSG_EXAMPLES_START)
        end = prompt.find(_DSG_EXAMPLES_END, start)
        if start < 0 or end < 0:
            msg = "a DSG request without its examples block: the request format changed"
            raise RuntimeError(msg)
        spans[:0] = _example_spans(
            prompt, start + len(_DSG_EXAMPLES_START), end, head, example_max_tuples
        )
    return ids + tail, spans


def _example_spans(
    prompt: str, start: int, end: int, encoding: Any, max_tuples: int
) -> list[tuple[int, int]]:
    """Token spans of the scene graphs a DSG request shows in ``prompt[start:end]`` with at
    most ``max_tuples`` tuples: from the example's ``Tuples:`` to its end (its ``Text:`` line,
    a caption, is not trained on)."""
    from selma_ray.prompts.dsg.answer import split_sections

    ranges = []
    at = prompt.find(_DSG_TUPLES, start, end)
    while at >= 0:
        nxt = prompt.find(_DSG_NEXT_TEXT, at, end)
        stop = end if nxt < 0 else nxt
        if len(split_sections(prompt[at:stop]).get("tuples", [])) <= max_tuples:
            ranges.append((at, stop))
        at = -1 if nxt < 0 else prompt.find(_DSG_TUPLES, nxt, end)
    spans: list[tuple[int, int]] = []
    for i, (a, b) in enumerate(encoding["offset_mapping"]):
        if any(lo <= a and b <= hi for lo, hi in ranges):
            if spans and spans[-1][1] == i:
                spans[-1] = (spans[-1][0], i + 1)
            else:
                spans.append((i, i + 1))
    return spans


def _cut(
    encoded: list[tuple[list[int], list[tuple[int, int]]]], n_max: int
) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Conversations cut to the context (an answer longer than the room its request leaves
    would be cut when generated too)."""
    return [
        (ids[:n_max], [(a, min(b, n_max)) for a, b in spans if a < n_max]) for ids, spans in encoded
    ]


def _batches(lengths: list[int], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped by similar length, at most ``batch_tokens`` padded tokens a batch,
    in a shuffled order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and lengths[i] * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


# --------------------------------------------------------------------------- build


def make_llama31_instruct(
    path: str | os.PathLike[str], seed: int = 0, *, recipe: StandinRecipe | None = None
) -> str:
    """Build, train and save the stand-in into ``path``; return ``path`` as a str.

    Loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and with vLLM. ``recipe`` changes
    the sizes or the training budget (the registry builds the default).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from selma_ray.models.tiny import _BUILD_LOCK, _make_tokenizer_config_portable
    from selma_ray.prompts.engines.base import TokenBudget, count_prompt_tokens

    recipe = recipe or StandinRecipe()
    out = Path(path)
    t0 = time.perf_counter()
    lists = training_conversations(recipe, seed)
    targets = _dsg_targets(recipe, seed)
    corpus = _template_texts() + [
        text
        for req, answer in lists + _dsg_requests(targets, seed, None)
        for text in (*(m["content"] for m in req.messages), answer)
    ]
    tok = _tokenizer(corpus, recipe.vocab_size)
    # the DSG requests as the vllm engine's budget fits them with the stand-in's tokenizer
    budget = TokenBudget(
        recipe.max_position_embeddings,
        partial(count_prompt_tokens, tok, plain_special_tokens=True),
    )
    dsg = _dsg_requests(targets, seed, budget)
    n_max = recipe.max_position_embeddings
    encoded_lists = _cut([_encode(tok, req, answer) for req, answer in lists], n_max)
    encoded_dsg = _cut(
        [
            _encode(
                tok,
                req,
                answer,
                example_loss=recipe.dsg_example_loss,
                example_max_tuples=recipe.dsg_example_max_tuples,
            )
            for req, answer in dsg
        ],
        n_max,
    )
    encoded = encoded_lists + encoded_dsg
    data = lists + dsg
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        head_dim=recipe.hidden_size // recipe.num_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={  # Llama 3.1's RoPE, its factor over a context of max_position / 8
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": recipe.max_position_embeddings // 8,
        },
        bos_token_id=tok.convert_tokens_to_ids(BOS),
        eos_token_id=[tok.convert_tokens_to_ids(t) for t in (EOS, EOM, EOT)],
        tie_word_embeddings=True,
    )
    n_tokens = sum(len(ids) for ids, _ in encoded)
    log.info(
        "llama31-instruct: %d conversations (%d DSG), %d tokens", len(data), len(dsg), n_tokens
    )
    # model init draws from torch's global RNG and training sets the thread count: one build
    # at a time in this process
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        losses = _train(
            model,
            [
                (encoded_lists, recipe.steps, 1.0),
                (encoded_dsg, recipe.dsg_steps, recipe.dsg_stop_weight),
            ],
            recipe,
            seed,
            tok.convert_tokens_to_ids(PAD),
        )
    model.generation_config = GenerationConfig(  # as the real model's generation_config.json
        bos_token_id=config.bos_token_id,
        eos_token_id=list(config.eos_token_id),
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
    )
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    _make_tokenizer_config_portable(out / "tokenizer_config.json")
    _write_as_the_hub_does(out)
    meta = {
        "recipe": dataclasses.asdict(recipe),
        "seed": seed,
        "conversations": len(data),
        "dsg_conversations": len(dsg),
        "tokens": n_tokens,
        "assistant_tokens": sum(end - start for _, spans in encoded for start, end in spans[-1:]),
        "trained_tokens": sum(end - start for _, spans in encoded for start, end in spans),
        "loss": [round(x, 4) for x in losses[0]],
        "dsg_loss": [round(x, 4) for x in losses[1]],
    }
    (out / RECIPE_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    log.info("llama31-instruct built in %.1f s", time.perf_counter() - t0)
    return str(out)


def _write_as_the_hub_does(out: Path) -> None:
    """Spell ``config.json``'s RoPE and the chat template as Llama-3.1-8B-Instruct's hub files do
    (``rope_theta`` + ``rope_scaling``; the template inside ``tokenizer_config.json``): the
    spelling transformers 4 reads, which transformers 5 and vLLM read the same way (transformers
    5 itself saves ``rope_parameters``, which 4 does not read)."""
    config_file = out / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    rope = dict(config.pop("rope_parameters", None) or {})
    if rope:
        config["rope_theta"] = rope.pop("rope_theta")
        config["rope_scaling"] = rope
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tok_file = out / "tokenizer_config.json"
    tok_config = json.loads(tok_file.read_text(encoding="utf-8"))
    tok_config["chat_template"] = LLAMA31_CHAT_TEMPLATE
    tok_file.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _train(
    model: LlamaForCausalLM,
    groups: list[tuple[list[tuple[list[int], list[tuple[int, int]]]], int, float]],
    recipe: StandinRecipe,
    seed: int,
    pad_id: int,
) -> list[list[float]]:
    """AdamW on the trained spans (the answer and its ``<|eot_id|>``, a DSG request's
    examples), linear warmup then cosine to a tenth, on one thread. ``groups``: (encoded
    conversations, steps on their batches, loss weight of an answer's ``<|eot_id|>``) each, the
    steps of all groups interleaved at random; returns each group's loss of every step."""
    import torch

    opt = torch.optim.AdamW(
        model.parameters(),
        lr=recipe.learning_rate,
        betas=(0.9, 0.95),
        weight_decay=recipe.weight_decay,
    )
    rng = random.Random(seed)
    schedule = [g for g, (_, steps, _) in enumerate(groups) for _ in range(steps)]
    rng.shuffle(schedule)
    warmup, total = recipe.warmup_steps, len(schedule)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    lengths = [[len(ids) for ids, _ in encoded] for encoded, _, _ in groups]
    threads = torch.get_num_threads()
    # one thread: the same float results whatever the machine's core count, and on busy
    # shared cores several threads' spin-waits made each step several times slower
    torch.set_num_threads(1)
    losses: list[list[float]] = [[] for _ in groups]
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        model.train()
        batches: list[list[list[int]]] = [[] for _ in groups]
        for step, g in enumerate(schedule):
            if not batches[g]:
                batches[g] = _batches(lengths[g], recipe.batch_tokens, rng)
            rows = [groups[g][0][i] for i in batches[g].pop()]
            input_ids, targets, weights = _collate(rows, pad_id, groups[g][2])
            # right padding under a causal mask: no real token sees a pad, so no attention
            # mask is needed (which keeps attention on its fast causal path); logits only
            # where a token is trained on
            hidden = model.model(input_ids=input_ids).last_hidden_state[:, :-1]
            trained = targets != -100
            logits = model.lm_head(hidden[trained]).float()
            per_token = torch.nn.functional.cross_entropy(
                logits, targets[trained], reduction="none"
            )
            loss = (per_token * weights[trained]).sum() / weights[trained].sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses[g].append(loss.item())
            if step % 50 == 0 or step == total - 1:
                log.info(
                    "llama31-instruct step %d/%d (group %d): loss %.3f (%.0f s, %.0f s cpu)",
                    step + 1, total, g, losses[g][-1],
                    time.perf_counter() - t0, time.process_time() - c0,
                )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        model.eval()
    return losses


def _collate(
    rows: list[tuple[list[int], list[tuple[int, int]]]], pad_id: int, stop_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, next-token targets, their loss weights) of rows padded on the right; the
    target of position i is token i + 1 where that token is in a trained span, else -100. The
    last token of a row's last span (the answer's ``<|eot_id|>``) weighs ``stop_weight``, the
    others 1."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    weights = torch.ones((len(rows), width))
    for r, (ids, spans) in enumerate(rows):
        row = torch.tensor(ids)
        input_ids[r, : len(ids)] = row
        for start, end in spans:
            labels[r, start:end] = row[start:end]
        if spans and spans[-1][1] == len(ids):
            weights[r, len(ids) - 1] = stop_weight
    return input_ids, labels[:, 1:], weights[:, 1:]
