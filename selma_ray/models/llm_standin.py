"""``tiny:llama31-instruct``: a tiny Llama 3.1 Instruct stand-in trained to write stage 1's lists.

Owns the stand-in's recipe: a byte-level BPE tokenizer with Llama 3's pre-tokenizer, special
tokens and chat template (:data:`LLAMA31_CHAT_TEMPLATE`, tools simplified), a small
``LlamaForCausalLM`` (head_dim 32, so vLLM's CPU backend runs it), the training conversations
(requests made by stage 1's own :func:`~selma_ray.prompts.fewshot.build_request`, answered with
the scene-graph engine's numbered lists for every built-in skill) and a short, seeded AdamW run
on the assistant tokens. The result is saved with ``save_pretrained`` (model, tokenizer,
``generation_config`` ending on ``<|eot_id|>``) and loads like ``meta-llama/Llama-3.1-8B-Instruct``
in transformers and vLLM, so a rehearsal run's stage 1 parses real numbered lists.

Built once per cache directory by :mod:`selma_ray.models.registry`. Bump
``selma_ray.models.tiny.FORMAT_VERSION`` when the recipe here changes (it names the cache
directory). Same seed, same torch build and thread count -> the same weights.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import os

    from transformers import PreTrainedTokenizerFast

    from selma_ray.prompts.engines.base import GenerationRequest

__all__ = [
    "BOS",
    "EOM",
    "EOS",
    "EOT",
    "LLAMA31_CHAT_TEMPLATE",
    "StandinRecipe",
    "make_llama31_instruct",
    "training_conversations",
]

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
EOM = "<|eom_id|>"
PYTHON_TAG = "<|python_tag|>"
PAD = "<|finetune_right_pad_id|>"
#: Llama 3.1's named special tokens, in its order (ids follow the learned vocabulary here).
SPECIAL_TOKENS = (BOS, EOS, "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
                  PAD, "<|reserved_special_token_2|>", START_HEADER, END_HEADER, EOM, EOT,
                  PYTHON_TAG)  # fmt: skip

#: Llama 3's pre-tokenizer: contractions, letter runs, 1-3 digit groups, punctuation, spaces.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: meta-llama/Llama-3.1-8B-Instruct's chat template. Everything but tools is as the original
#: (bos, the system block with the knowledge cut-off and the default date, trimmed contents,
#: the assistant header as generation prompt); tool definitions are not rendered, tool results
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
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""  # noqa: E501 - the template's lines are kept as in the original


@dataclass(frozen=True)
class StandinRecipe:
    """Sizes, data and optimisation of the stand-in (the defaults are what the registry builds)."""

    vocab_size: int = 3072
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 2048
    #: training conversations; each is one request and its answer
    conversations: int = 1500
    steps: int = 300
    batch_tokens: int = 6144
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    #: items asked per request (M): ``common_items`` half the time, else from the range;
    #: examples shown (K): mostly 3, sometimes 1 or 2
    common_items: int = 10
    min_items: int = 2
    max_items: int = 20
    #: answers keep to this fraction of the skill's word limit, so sampled items have room
    answer_word_fraction: float = 0.8
    #: captions per skill in the pool requests draw their examples from (besides the seeds)
    pool_per_skill: int = 200


# --------------------------------------------------------------------------- data


def training_conversations(
    recipe: StandinRecipe, seed: int
) -> list[tuple[GenerationRequest, str]]:
    """(request, answer) pairs in stage 1's exact format, for every built-in skill in turn.

    Requests come from :func:`build_request` with K examples drawn like the stage draws them
    (the skill's seeds and captions accepted before), asking for M new items; answers are the
    scene-graph engine's numbered lists for those requests (numbering continued from K+1).
    """
    from selma_ray.prompts.engines.scene_graph import SceneGraphEngine
    from selma_ray.prompts.fewshot import build_request, sample_examples
    from selma_ray.seeds import derive_seed
    from selma_ray.skills import BUILTIN_SKILLS

    engine = SceneGraphEngine(seed=derive_seed("llama31-instruct", seed, "engine"))
    rng = random.Random(derive_seed("llama31-instruct", seed, "requests"))
    skills = list(BUILTIN_SKILLS.values())
    pools: dict[str, list[str]] = {}
    for skill in skills:
        # the pool a stage run would have grown: captions the engine wrote for this skill
        req = build_request(
            skill, list(skill.seeds), n_items=recipe.pool_per_skill, seed=rng.getrandbits(63)
        )
        text = engine.generate([req])[0]
        pools[skill.name] = [line.split(". ", 1)[1] for line in text.splitlines()]
    out = []
    for i in range(recipe.conversations):
        skill = skills[i % len(skills)]
        k = rng.choices((1, 2, 3), weights=(1, 1, 8))[0]
        grown = rng.randrange(len(pools[skill.name]) + 1)
        pool = list(skill.seeds) + pools[skill.name][:grown]
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


def _tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE learned on ``texts`` with Llama 3's pre-tokenizer and special tokens."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
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
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOT,  # as Llama-3.1-8B-Instruct's tokenizer: an answer ends with <|eot_id|>
        chat_template=LLAMA31_CHAT_TEMPLATE,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )


def _encode(
    tok: PreTrainedTokenizerFast, req: GenerationRequest, answer: str
) -> tuple[list[int], int]:
    """Token ids of the whole conversation and where the assistant's tokens start.

    The prompt part is tokenized alone, exactly as an engine tokenizes it before generating.
    """
    prompt = tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
    whole = tok.apply_chat_template(
        [*req.messages, {"role": "assistant", "content": answer}], tokenize=False
    )
    if not whole.startswith(prompt):  # pragma: no cover - a template that reorders turns
        msg = "the chat template does not render the prompt as a prefix of the conversation"
        raise RuntimeError(msg)
    head = tok(prompt, add_special_tokens=False)["input_ids"]
    tail = tok(whole[len(prompt) :], add_special_tokens=False)["input_ids"]
    return head + tail, len(head)


def _batches(
    lengths: list[int], batch_tokens: int, rng: random.Random
) -> list[list[int]]:
    """Indices grouped by similar length into batches of at most ``batch_tokens`` (padded)."""
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
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    recipe: StandinRecipe | None = None,
    log: Any = None,
) -> str:
    """Build, train and save the stand-in into ``path``; return ``path`` as a str.

    ``recipe`` changes sizes or the training budget (tests use a shorter one); ``log`` is an
    optional callable given one line per progress report.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from selma_ray.models.tiny import _BUILD_LOCK, _make_tokenizer_config_portable

    recipe = recipe or StandinRecipe()
    out = Path(path)
    t0 = time.perf_counter()
    with _BUILD_LOCK:
        data = training_conversations(recipe, seed)
        corpus = [t for req, answer in data for t in (*_rendered(req), answer)]
        tok = _tokenizer(corpus, recipe.vocab_size)
        encoded = [_encode(tok, req, answer) for req, answer in data]
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
            rope_scaling={
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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
            _train(model, encoded, recipe, seed, tok.convert_tokens_to_ids(PAD), log)
        model.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=list(config.eos_token_id),
            do_sample=True,
            temperature=0.6,
            top_p=0.9,
        )
        model.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
    _make_tokenizer_config_portable(out / "tokenizer_config.json")
    if log is not None:
        log(f"built in {time.perf_counter() - t0:.1f} s")
    return str(out)


def _rendered(req: GenerationRequest) -> tuple[str, ...]:
    """The fixed texts the template adds around a request (for the tokenizer's corpus)."""
    return (
        "system user assistant ipython",
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
        *(m["content"] for m in req.messages),
    )


def _train(
    model: Any,
    encoded: list[tuple[list[int], int]],
    recipe: StandinRecipe,
    seed: int,
    pad_id: int,
    log: Any,
) -> None:
    """AdamW on the assistant tokens (answer and its ``<|eot_id|>``), warmup then cosine."""
    import torch

    rng = random.Random(seed)
    lengths = [len(ids) for ids, _ in encoded]
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=recipe.learning_rate,
        betas=(0.9, 0.95),
        weight_decay=recipe.weight_decay,
    )

    def lr_at(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    threads = torch.get_num_threads()
    # one thread: the same float results on any machine, and on busy shared cores several
    # threads' spin-waits made each step several times slower than one thread alone
    torch.set_num_threads(1)
    try:
        _steps(model, encoded, recipe, opt, sched, lengths, pad_id, rng, log)
    finally:
        torch.set_num_threads(threads)


def _steps(model, encoded, recipe, opt, sched, lengths, pad_id, rng, log) -> None:  # noqa: ANN001
    import torch

    model.train()
    batches: list[list[int]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(recipe.steps):
        if not batches:
            batches = _batches(lengths, recipe.batch_tokens, rng)
        rows = [encoded[i] for i in batches.pop()]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, start) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            labels[r, start : len(ids)] = torch.tensor(ids[start:])
            mask[r, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log is not None and (step % 25 == 0 or step == recipe.steps - 1):
            log(
                f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s, "
                f"cpu {time.process_time() - c0:.0f} s)"
            )
    model.eval()
