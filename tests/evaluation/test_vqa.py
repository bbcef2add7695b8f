"""VQA backends (``selma_ray.evaluation.vqa``) on their tiny stand-ins, and TIFA answer matching."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from selma_ray.evaluation.vqa import INPUT_COLUMNS, OUTPUT_COLUMNS, AnswerMatcher, VQAScorer
from selma_ray.models import resolve_model
from selma_ray.models.standins import VILT_ANSWERS

# tests/conftest.py sets HF_HUB_OFFLINE=1 and a per-session SELMA_RAY_CACHE.

BACKENDS = {
    "tiny:vqa": "generate",  # BLIP (Salesforce/blip-vqa-*)
    "tiny:blip2-flan-t5": "blip2",  # Salesforce/blip2-flan-t5-xl
    "tiny:vilt": "classify",  # dandelin/vilt-b32-finetuned-vqa
    "tiny:vlm-chat": "chat",  # llava-hf/llava-1.5-7b-hf
}
QUESTIONS = ["Is there a cat?", "What color is the car?", "How many dogs are there?"]
CHOICES = [["yes", "no"], ["red", "blue", "green"], ""]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uris(tmp_path_factory) -> list[str]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("vqa-images")
    out = []
    for i, (size, color) in enumerate(
        [((64, 64), (200, 20, 20)), ((96, 64), (20, 20, 200)), ((48, 80), (20, 160, 20))]
    ):
        path = folder / f"{i}.png"
        Image.new("RGB", size, color).save(path)
        out.append(str(path))
    return out


def _batch(uris: list[str], with_choices: bool) -> dict[str, np.ndarray]:
    batch = {
        "image_uri": np.array(uris, dtype=object),
        "question": np.array(QUESTIONS, dtype=object),
        "item_id": np.array(["a", "b", "c"], dtype=object),
    }
    if with_choices:
        batch["choices"] = np.array([json.dumps(c) if c else "" for c in CHOICES], dtype=object)
    return batch


@pytest.fixture(scope="module")
def scorers() -> dict[str, VQAScorer]:
    return {ref: VQAScorer(ref, device="cpu", max_new_tokens=3) for ref in BACKENDS}


class _Spy:
    """Wraps a processor and records the texts it is called with."""

    def __init__(self, processor):
        self.processor, self.texts = processor, []

    def __call__(self, *args, **kwargs):
        self.texts.extend(kwargs["text"])
        return self.processor(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


# ------------------------------------------------------------------------------------ backends


@pytest.mark.parametrize("ref", list(BACKENDS))
def test_backend_answers_a_batch_with_and_without_choices(scorers, uris, ref):
    scorer = scorers[ref]
    assert scorer.backend == BACKENDS[ref]
    plain = scorer(_batch(uris, with_choices=False))
    tifa = scorer(_batch(uris, with_choices=True))
    assert set(plain) == {*INPUT_COLUMNS, "item_id", *OUTPUT_COLUMNS}
    assert set(tifa) == {*INPUT_COLUMNS, "item_id", "choices", *OUTPUT_COLUMNS}
    for out in (plain, tifa):
        assert list(out["item_id"]) == ["a", "b", "c"]
        assert len(out["answer"]) == 3 and all(isinstance(a, str) for a in out["answer"])
        assert list(out["answer"]) == list(out["free_answer"])  # no matcher: the model's words
        assert list(out["vqa_worker_pid"]) == [os.getpid()] * 3
    if scorer.backend == "classify":
        assert set(plain["answer"]) <= set(VILT_ANSWERS)
        assert set(scorer.model.config.id2label.values()) == set(VILT_ANSWERS)
    if scorer.backend not in ("chat", "blip2"):  # only their prompts name the choices
        assert list(plain["answer"]) == list(tifa["answer"])


@pytest.mark.parametrize("ref", list(BACKENDS))
def test_backend_gives_the_same_answers_when_loaded_again(scorers, uris, ref):
    first = scorers[ref](_batch(uris, with_choices=True))["answer"]
    again = VQAScorer(ref, device="cpu", max_new_tokens=3)(_batch(uris, with_choices=True))
    assert list(again["answer"]) == list(first)


def test_blip2_generates_on_a_question_answer_prompt(scorers, uris, monkeypatch):
    """BLIP-2's VQA prompt, and for a multiple-choice question TIFA's BLIP-2 prompt (TIFA's
    tifascore/vqa_models.py), which lists the choices."""
    scorer = scorers["tiny:blip2-flan-t5"]
    spy = _Spy(scorer.processor)
    monkeypatch.setattr(scorer, "processor", spy)
    out = scorer(_batch(uris, with_choices=True))
    assert any(CHOICES) and not all(CHOICES)
    assert spy.texts == [
        f"Answer the multiple-choice question. Question: {q} Choices: {', '.join(c)} Answer:"
        if c
        else f"Question: {q} Answer:"
        for q, c in zip(QUESTIONS, CHOICES, strict=True)
    ]
    # encoder-decoder: generate returns only the answer, never the prompt
    assert not any("Question" in a for a in out["answer"])


def test_chat_backend_prompts_through_the_chat_template(scorers, uris, monkeypatch):
    scorer = scorers["tiny:vlm-chat"]
    spy = _Spy(scorer.processor)
    monkeypatch.setattr(scorer, "processor", spy)
    scorer(_batch(uris, with_choices=True))
    assert spy.texts == [
        "USER: <image>\nIs there a cat? Answer with one of: yes, no. ASSISTANT:",
        "USER: <image>\nWhat color is the car? Answer with one of: red, blue, green. ASSISTANT:",
        "USER: <image>\nHow many dogs are there? Answer yes or no. ASSISTANT:",
    ]


def test_vilt_answers_a_question_longer_than_its_40_text_positions(scorers, uris):
    from PIL import Image

    scorer = scorers["tiny:vilt"]
    question = "Is there a red cat on the table to the left of the blue dog and the car? " * 4
    assert len(scorer.processor.tokenizer(question).input_ids) > 40
    with Image.open(uris[0]) as image:
        answers = scorer.answer([image.convert("RGB")] * 2, [question, "Is it red?"])
    assert len(answers) == 2 and set(answers) <= set(VILT_ANSWERS)


# ------------------------------------------------------------------------------------ matching


@pytest.fixture(scope="module")
def matcher() -> AnswerMatcher:
    return AnswerMatcher("tiny:sbert", device="cpu")


def test_matcher_takes_the_choice_an_answer_names_without_embedding(matcher):
    matcher._cache.clear()
    assert matcher.match("Yes.", ["yes", "no"]) == "yes"
    assert matcher.match("  RED ", ["blue", "red"]) == "red"
    assert matcher.match("a dog", ["a cat", "a dog"]) == "a dog"
    assert matcher.match("anything", []) == "anything"
    assert matcher._cache == {}  # named choices never reach the embedding model


def _reference_embeddings(texts: list[str]) -> torch.Tensor:
    """Mean-pooled last hidden states over the attention mask (sentence-transformers' recipe)."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model("tiny:sbert")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch.attention_mask.unsqueeze(-1).float()
    return (states * mask).sum(1) / mask.sum(1)


def test_matcher_picks_the_choice_nearest_by_cosine_similarity(matcher):
    assert matcher.pooling == "mean" and matcher.max_seq_length == 128
    cases = [
        ("it is blue", ["red", "blue", "green", "yellow"]),
        ("greenish", ["red", "blue", "green", "yellow"]),
        ("yes it is", ["red", "blue", "green", "yellow"]),
        ("the table", ["cat", "dog", "table"]),
        ("two cats", ["yes", "no"]),
        ("it is blue", ["cat", "dog", "table"]),
    ]
    picked = []
    for answer, choices in cases:
        ref = _reference_embeddings([answer, *choices])
        sims = torch.nn.functional.cosine_similarity(ref[:1], ref[1:])
        expected = choices[int(sims.argmax())]
        assert matcher.match(answer, choices) == expected, (answer, choices)
        picked.append(choices.index(expected))
        np.testing.assert_allclose(
            matcher.embed(answer), (ref[0] / ref[0].norm()).numpy(), rtol=1e-4, atol=1e-5
        )
    assert len(set(picked)) > 1  # not always the first choice


def test_scorer_with_a_matcher_answers_with_choices(uris):
    scorer = VQAScorer("tiny:vqa", device="cpu", max_new_tokens=3, answer_matcher="tiny:sbert")
    scorer(_batch(uris, with_choices=False))
    assert scorer._matcher is None  # loaded only when a row has choices
    out = scorer(_batch(uris, with_choices=True))
    assert scorer._matcher is not None
    answers, free = list(out["answer"]), list(out["free_answer"])
    for answer, raw, choices in zip(answers, free, CHOICES, strict=True):
        if choices:
            assert answer in choices
            assert answer == scorer._matcher.match(raw, choices)
        else:
            assert answer == raw
    assert free[1] not in CHOICES[1]  # the tiny model's words name no colour: nearest one


def _layout_dir(tmp_path, modules, pooling=None):
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    if pooling is not None:
        (tmp_path / "1_Pooling").mkdir()
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return str(tmp_path)


_TRANSFORMER = {
    "idx": 0,
    "name": "0",
    "path": "",
    "type": "sentence_transformers.models.Transformer",
}
_POOLING = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.Pooling"}


@pytest.mark.parametrize(
    ("pooling", "mode"),
    [
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
        ({"pooling_mode_max_tokens": True, "pooling_mode_mean_sqrt_len_tokens": False}, "max"),
        ({"pooling_mode": "mean", "include_prompt": True}, "mean"),  # sentence-transformers 3+
    ],
)
def test_matcher_reads_the_pooling_of_a_sentence_transformers_layout(tmp_path, pooling, mode):
    from selma_ray.evaluation.vqa import _sentence_layout

    path = _layout_dir(tmp_path, [_TRANSFORMER, _POOLING], pooling)
    assert _sentence_layout(path, "m") == (mode, None)


@pytest.mark.parametrize(
    ("extra", "pooling", "error"),
    [
        ({"path": "2_Dense", "type": "sentence_transformers.models.Dense"}, None, "'Dense' is not"),
        (None, {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}, "pooling"),
        (None, {"pooling_mode": "weightedmean"}, "pooling"),
    ],
)
def test_matcher_refuses_layouts_it_would_embed_differently(tmp_path, extra, pooling, error):
    modules = [_TRANSFORMER, _POOLING] if pooling else [_TRANSFORMER]
    path = _layout_dir(tmp_path, [*modules, *([extra] if extra else [])], pooling)
    with pytest.raises(ValueError, match=rf"eval.answer_matcher '{re.escape(path)}'.*{error}"):
        AnswerMatcher(path, device="cpu")
