"""Stage-5 VQA backends: answer questions about generated images (Ray Data callable class).

:class:`VQAScorer` loads one model by reference (a hub id, a local path, or ``tiny:vqa``; all
through the same ``from_pretrained`` code) and answers a batch of rows::

    {"image_uri": [...], "question": [...], "choices": ['["yes", "no"]' | "", ...], ...}
    -> the same columns + "answer"

Backends, picked from the model's config:

* **VQA heads** (``AutoModelForVisualQuestionAnswering``): BLIP (``Salesforce/blip-vqa-base``,
  ``Salesforce/blip-vqa-capfilt-large``, and ``tiny:vqa``, a random tiny BLIP) answer by
  ``generate``; ViLT (``dandelin/vilt-b32-finetuned-vqa``) by its top answer label;
  BLIP-2 (``Salesforce/blip2-flan-t5-xl``) by ``generate`` on a ``Question: ... Answer:`` prompt,
  or for a multiple-choice question TIFA's own BLIP-2 prompt, which lists the choices
  (:func:`blip2_prompt`).
* **Image-text-to-text chat models** (``AutoModelForImageTextToText`` + ``AutoProcessor``):
  e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``, ``llava-hf/llava-1.5-7b-hf``,
  ``HuggingFaceTB/SmolVLM-Instruct`` (the GPU presets' candidates), prompted with the question
  and "Answer yes or no." (or "Answer with one of: ..." for multiple choice), greedy decoding.
  Best effort: a model whose processor has no chat template gets the plain text prompt.

Questions longer than the text side's ``model_max_length`` (ViLT: 40 tokens) are truncated.

TIFA's multiple choice (rows with ``choices``): with an ``answer_matcher`` (``eval.answer_matcher``,
TIFA's ``sentence-transformers/all-mpnet-base-v2``), :class:`AnswerMatcher` turns the model's
free-form answer into a choice as TIFA does: the choice it names (case, surrounding whitespace
and punctuation ignored), else the choice whose sentence embedding is closest by cosine
similarity. ``answer`` then holds the choice and ``free_answer`` the model's own words; without
a matcher both hold the model's words (the scorer then counts only exact matches).
:func:`scored_answer` is what scoring uses of an answer (the stage's ``eval/answers.parquet``
keeps it as ``answer``, beside the model's ``free_answer``).

Re-scoring a saved answers table (no model) is :mod:`selma_ray.evaluation.rescore`.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Columns a batch must have; ``choices`` (JSON list or "") is optional.
INPUT_COLUMNS = ("image_uri", "question")
#: Columns :class:`VQAScorer` adds to a batch.
OUTPUT_COLUMNS = ("answer", "free_answer", "vqa_worker_pid")


def read_image(uri: str) -> Any:
    """An RGB PIL image from a local path or any fsspec URI."""
    import fsspec
    from PIL import Image

    with fsspec.open(uri, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def parse_choices(value: Any) -> list[str]:
    """``choices`` cell -> list of strings ("" / None / [] -> [])."""
    if value is None:
        return []
    if isinstance(value, str):
        if not value.strip():
            return []
        loaded = json.loads(value)
        return [str(c) for c in loaded]
    return [str(c) for c in list(value)]


def scored_answer(answer: object, choices: Sequence[str]) -> str:
    """What scoring uses of a VQA answer: for a multiple-choice question (TIFA) the choice it
    names (exact after normalisation; a matcher's choice names itself), else the answer as
    given (scored wrong); for a yes/no question (DSG) the normalised answer (``"Yes."`` ->
    ``"yes"``). DSG and TIFA score these exactly as the answers they come from."""
    from selma_ray.evaluation.scoring import match_choice, normalize_answer

    if choices:
        named = match_choice(answer, choices)
        return named if named is not None else ("" if answer is None else str(answer))
    return normalize_answer(answer)


def blip2_prompt(question: str, choices: Sequence[str]) -> str:
    """BLIP-2's prompt: BLIP-2's VQA prompt, or with choices the one TIFA's BLIP-2 model uses
    (``tifascore/vqa_models.py``), so a TIFA score is measured as TIFA measures it."""
    if choices:
        return (
            f"Answer the multiple-choice question. Question: {question} "
            f"Choices: {', '.join(choices)} Answer:"
        )
    return f"Question: {question} Answer:"


def chat_prompt(question: str, choices: Sequence[str]) -> str:
    """The instruction given to a chat VLM for one question."""
    if choices:
        return f"{question} Answer with one of: {', '.join(choices)}."
    return f"{question} Answer yes or no."


class AnswerMatcher:
    """TIFA's answer matching: a free-form answer -> the choice it names, else the nearest one.

    Loads a sentence-transformers model directory (hub id, path or ``tiny:sbert``) with plain
    transformers: ``AutoModel`` + ``AutoTokenizer``, the pooling of ``1_Pooling/config.json``
    (mean, CLS or max over tokens; mean without one) and the ``max_seq_length`` of
    ``sentence_bert_config.json``. A Normalize module changes no cosine, so it needs nothing;
    any other module (e.g. Dense) is refused. Each distinct text is embedded on its own (no
    padding), so a match never depends on which rows share a batch.
    """

    def __init__(
        self, model_ref: str, cache_dir: str | None = None, device: str | None = None
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        from selma_ray.images.generate import default_device
        from selma_ray.models import resolve_model

        self.model_ref = model_ref
        self.device = device or default_device()
        path = resolve_model(model_ref, cache_dir)
        self.pooling, self.max_seq_length = _sentence_layout(path, model_ref)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, text: str) -> np.ndarray:
        """The sentence embedding of ``text`` (float64, unit length)."""
        import torch

        if text not in self._cache:
            kwargs = {"truncation": True, "return_tensors": "pt"}
            if self.max_seq_length:
                kwargs["max_length"] = self.max_seq_length
            inputs = self.tokenizer([text], **kwargs).to(self.device)
            with torch.inference_mode():
                tokens = self.model(**inputs).last_hidden_state[0].float()
            if self.pooling == "cls":
                pooled = tokens[0]
            elif self.pooling == "max":
                pooled = tokens.max(dim=0).values
            else:
                pooled = tokens.mean(dim=0)
            vec = pooled.cpu().numpy().astype(np.float64)
            self._cache[text] = vec / max(float(np.linalg.norm(vec)), 1e-12)
        return self._cache[text]

    def match(self, answer: str, choices: Sequence[str]) -> str:
        """The choice ``answer`` names, else the choice nearest to it; ``answer`` if no choices."""
        from selma_ray.evaluation.scoring import match_choice

        if not choices:
            return answer
        named = match_choice(answer, choices)
        if named is not None:
            return named
        query = self.embed(answer)
        sims = [float(query @ self.embed(c)) for c in choices]
        return choices[int(np.argmax(sims))]


#: sentence-transformers Pooling config keys -> the pooling :class:`AnswerMatcher` applies.
_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
}


def _sentence_layout(path: str, model_ref: str) -> tuple[str, int | None]:
    """(pooling mode, max_seq_length) of a sentence-transformers model directory or hub id."""
    from transformers.utils.hub import cached_file

    def read(name: str) -> Any:
        file = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
        if file is None:
            return None
        with open(file, encoding="utf-8") as f:
            return json.load(f)

    modules = read("modules.json") or []
    pooling = "mean"
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            config = read(f"{module['path']}/config.json") or {}
            if isinstance(config.get("pooling_mode"), str):  # sentence-transformers >= 3
                modes = [config["pooling_mode"]]
            else:
                modes = [k for k, v in config.items() if k.startswith("pooling_mode_") and v]
            modes = [_POOLING_KEYS.get(m, m) for m in modes]
            if len(modes) != 1 or modes[0] not in _POOLING_KEYS.values():
                msg = (
                    f"eval.answer_matcher {model_ref!r}: pooling {config} is not one of mean, "
                    "CLS or max tokens; pick a model with one of them"
                )
                raise ValueError(msg)
            pooling = modes[0]
        elif kind not in ("Transformer", "Normalize"):
            msg = (
                f"eval.answer_matcher {model_ref!r}: sentence-transformers module {kind!r} is "
                "not supported (only Transformer, Pooling, Normalize); pick a model without it"
            )
            raise ValueError(msg)
    max_len = (read("sentence_bert_config.json") or {}).get("max_seq_length")
    return pooling, int(max_len) if max_len else None


class VQAScorer:
    """Ray Data callable class: answers each row's question about its image.

    Args (picklable primitives): ``model_ref`` (hub id, path or ``tiny:vqa``), ``cache_dir``
    (where ``tiny:`` models are built), ``num_threads`` (torch CPU threads), ``device``
    (None = cuda if available), ``max_new_tokens`` (generative backends), ``dtype``
    ("auto": float16 on CUDA, float32 on CPU), ``answer_matcher`` (sentence-embedding model
    for TIFA's choice matching, loaded with the first row that has choices; None = keep the
    free-form answer).
    """

    def __init__(
        self,
        model_ref: str,
        cache_dir: str | None = None,
        num_threads: int | None = None,
        device: str | None = None,
        max_new_tokens: int = 8,
        dtype: str = "auto",
        answer_matcher: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoProcessor

        from selma_ray.images.generate import default_device, resolve_dtype
        from selma_ray.models import resolve_model

        t0 = time.perf_counter()
        if num_threads:
            torch.set_num_threads(num_threads)
        self.model_ref = model_ref
        self.device = device or default_device()
        self.max_new_tokens = int(max_new_tokens)
        path = resolve_model(model_ref, cache_dir)
        config = AutoConfig.from_pretrained(path)
        self.model_type = str(getattr(config, "model_type", ""))
        torch_dtype = resolve_dtype(dtype, self.device)
        self.processor = AutoProcessor.from_pretrained(path)
        self.backend = self._load(path, config, torch_dtype)
        self.model.to(self.device).eval()
        self.answer_matcher = answer_matcher
        self.cache_dir = cache_dir
        self._matcher: AnswerMatcher | None = None  # loaded on the first row with choices
        self.load_seconds = time.perf_counter() - t0

    def _load(self, path: str, config: Any, torch_dtype: Any) -> str:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING_NAMES as VQA_NAMES,
        )

        if self.model_type in VQA_NAMES:
            from transformers import AutoModelForVisualQuestionAnswering

            self.model = AutoModelForVisualQuestionAnswering.from_pretrained(
                path, dtype=torch_dtype
            )
            if self.model_type == "vilt":
                return "classify"
            return "blip2" if self.model_type == "blip-2" else "generate"
        from transformers import AutoModelForImageTextToText

        try:
            self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype)
        except ValueError as e:
            msg = (
                f"eval.vqa_model {self.model_ref!r} (model_type {self.model_type!r}) is neither a "
                "visual-question-answering model (BLIP, ViLT, BLIP-2) nor an image-text-to-text "
                f"model: {e}"
            )
            raise ValueError(msg) from e
        return "chat"

    # ------------------------------------------------------------------ answering
    def answer(
        self,
        images: Sequence[Any],
        questions: Sequence[str],
        choices: Sequence[Sequence[str]] | None = None,
    ) -> list[str]:
        """One free-form answer string per (image, question)."""
        import torch

        choices = choices or [[] for _ in questions]
        if not questions:
            return []
        with torch.inference_mode():
            if self.backend == "classify":
                inputs = self._inputs(images, list(questions))
                logits = self.model(**inputs).logits
                labels = self.model.config.id2label
                return [str(labels[int(i)]) for i in logits.argmax(-1).tolist()]
            if self.backend in ("generate", "blip2"):
                texts = (
                    [blip2_prompt(q, c) for q, c in zip(questions, choices, strict=True)]
                    if self.backend == "blip2"
                    else list(questions)
                )
                inputs = self._inputs(images, texts)
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
                if (
                    self.backend == "blip2"
                    and not self.model.config.use_decoder_only_language_model
                ):
                    pass  # encoder-decoder: output is only the answer
                elif self.backend == "blip2":
                    out = out[:, inputs["input_ids"].shape[1] :]
                return [
                    s.strip() for s in self.processor.batch_decode(out, skip_special_tokens=True)
                ]
            return self._chat(images, questions, choices)

    def choose(self, answers: Sequence[str], choices: Sequence[Sequence[str]]) -> list[str]:
        """Each answer as its row's choice (see :class:`AnswerMatcher`); unchanged without a
        matcher or choices."""
        if not self.answer_matcher or not any(choices):
            return list(answers)
        if self._matcher is None:
            self._matcher = AnswerMatcher(self.answer_matcher, self.cache_dir, self.device)
        return [self._matcher.match(a, c) for a, c in zip(answers, choices, strict=True)]

    def _inputs(self, images: Sequence[Any], texts: list[str]) -> Any:
        inputs = self.processor(
            images=list(images), text=texts, return_tensors="pt", padding=True, truncation=True
        )
        return inputs.to(self.device)

    def _chat(
        self, images: Sequence[Any], questions: Sequence[str], choices: Sequence[Sequence[str]]
    ) -> list[str]:
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"
        texts = []
        for q, c in zip(questions, choices, strict=True):
            instruction = chat_prompt(q, c)
            messages = [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": instruction}],
                }
            ]
            try:
                texts.append(
                    self.processor.apply_chat_template(messages, add_generation_prompt=True)
                )
            except (ValueError, AttributeError, TypeError):
                texts.append(instruction)
        inputs = self.processor(
            images=[[img] for img in images], text=texts, return_tensors="pt", padding=True
        ).to(self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        out = out[:, inputs["input_ids"].shape[1] :]
        return [s.strip() for s in self.processor.batch_decode(out, skip_special_tokens=True)]

    # ------------------------------------------------------------------ Ray Data entry point
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [c for c in INPUT_COLUMNS if c not in batch]
        if missing:
            msg = f"VQAScorer: batch lacks column(s) {missing}; has {sorted(batch)}"
            raise ValueError(msg)
        uris = [str(u) for u in batch["image_uri"]]
        questions = [str(q) for q in batch["question"]]
        raw = batch.get("choices")
        choices = [parse_choices(c) for c in raw] if raw is not None else [[] for _ in uris]
        images = [read_image(u) for u in uris]
        answers = self.answer(images, questions, choices)
        out = dict(batch)
        out["answer"] = np.array(self.choose(answers, choices), dtype=object)
        out["free_answer"] = np.array(answers, dtype=object)
        out["vqa_worker_pid"] = np.array([os.getpid()] * len(uris), dtype=np.int64)
        return out
