"""``tiny:llama31-instruct``: a tiny Llama 3.1 Instruct stand-in trained to write stage 1's lists.

Owns the stand-in's recipe (:class:`StandinRecipe`): a byte-level BPE tokenizer with Llama 3's
pre-tokenizer, special tokens and chat template (:data:`LLAMA31_CHAT_TEMPLATE`; tools
simplified), a small ``LlamaForCausalLM`` (head_dim 32, so vLLM's CPU backend runs it, Llama
3.1's ``llama3`` RoPE), its training conversations (:func:`training_conversations`: requests
made by stage 1's own :func:`~selma_ray.prompts.fewshot.build_request`, answered with the
scene-graph engine's numbered lists, for every built-in skill) and a short AdamW run on the
assistant tokens, one CPU thread. :func:`make_llama31_instruct` saves the result with
``save_pretrained`` (model, tokenizer, ``generation_config`` ending on ``<|eot_id|>``): it loads
like ``meta-llama/Llama-3.1-8B-Instruct`` in transformers and vLLM, and a rehearsal run's
stage 1 parses real numbered lists from it.

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
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os

    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from selma_ray.prompts.engines.base import GenerationRequest

__all__ = [
    "BOS",
    "EOT",
    "LLAMA31_CHAT_TEMPLATE",
    "RECIPE_FILE",
    "StandinRecipe",
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
    max_position_embeddings: int = 2048
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
    steps: int = 380
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
    from selma_ray.seeds import derive_seed
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


def _encode(
    tok: PreTrainedTokenizerFast, req: GenerationRequest, answer: str
) -> tuple[list[int], int]:
    """Token ids of the whole conversation and where the assistant's tokens start.

    The prompt part is tokenized alone, as an engine tokenizes it before generating.
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

    recipe = recipe or StandinRecipe()
    out = Path(path)
    t0 = time.perf_counter()
    data = training_conversations(recipe, seed)
    corpus = _template_texts() + [
        text for req, answer in data for text in (*(m["content"] for m in req.messages), answer)
    ]
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
    log.info("llama31-instruct: %d conversations, %d tokens", len(data), n_tokens)
    # model init draws from torch's global RNG and training sets the thread count: one build
    # at a time in this process
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        losses = _train(model, encoded, recipe, seed, tok.convert_tokens_to_ids(PAD))
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
        "tokens": n_tokens,
        "assistant_tokens": sum(len(ids) - start for ids, start in encoded),
        "loss": [round(x, 4) for x in losses],
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
    encoded: list[tuple[list[int], int]],
    recipe: StandinRecipe,
    seed: int,
    pad_id: int,
) -> list[float]:
    """AdamW on the assistant tokens (the answer and its ``<|eot_id|>``), linear warmup then
    cosine to a tenth, on one thread; returns the loss of every step."""
    import torch

    opt = torch.optim.AdamW(
        model.parameters(),
        lr=recipe.learning_rate,
        betas=(0.9, 0.95),
        weight_decay=recipe.weight_decay,
    )
    warmup, total = recipe.warmup_steps, recipe.steps

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = random.Random(seed)
    lengths = [len(ids) for ids, _ in encoded]
    threads = torch.get_num_threads()
    # one thread: the same float results whatever the machine's core count, and on busy
    # shared cores several threads' spin-waits made each step several times slower
    torch.set_num_threads(1)
    losses: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        model.train()
        batches: list[list[int]] = []
        for step in range(total):
            if not batches:
                batches = _batches(lengths, recipe.batch_tokens, rng)
            input_ids, mask, labels = _collate([encoded[i] for i in batches.pop()], pad_id)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if step % 50 == 0 or step == total - 1:
                log.info(
                    "llama31-instruct step %d/%d: loss %.3f (%.0f s, %.0f s cpu)",
                    step + 1, total, losses[-1],
                    time.perf_counter() - t0, time.process_time() - c0,
                )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        model.eval()
    return losses


def _collate(
    rows: list[tuple[list[int], int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, labels) of rows padded on the right; labels only on the
    assistant tokens."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, start) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, start : len(ids)] = torch.tensor(ids[start:])
        mask[r, : len(ids)] = 1
    return input_ids, mask, labels
