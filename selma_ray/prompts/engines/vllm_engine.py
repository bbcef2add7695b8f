"""The ``vllm`` prompt engine: requests mapped over vLLM engines on the executor's pool.

:class:`VllmEngine` turns each call's requests (a self-instruct round's, or the DSG questions
of the prompts accepted so far) into rows and maps them, with :class:`VllmPredictor`, over a
pool of engines it opens on the first call (``executor.open_pool``; ``prompts.vllm.pool``,
``pool.gpus`` per engine, tensor parallel inside) and keeps until :meth:`VllmEngine.close`,
which the stage calls when it ends. So the engines start once per stage, not once per round:
round k+1 is built from round k's answers, so the rounds cannot be one streaming dataset, and
a pool that ended with each map would load the model and warm up again every round. On Ray the
pool is long-lived Ray actors (:mod:`selma_ray.distributed.pools`). A predictor holds one
``vllm.LLM``; rows carry the chat messages (JSON), the sampling settings and a per-request
seed, so results depend neither on batching nor on what an engine answered before.

Why not Ray Data LLM (``ray.data.llm``, ``build_processor`` with
``vLLMEngineProcessorConfig``): a processor is a ``Dataset -> Dataset`` transform whose vLLM
stage is a ``map_batches`` on an ``ActorPoolStrategy``; its engines are the actors of one
dataset execution and end with it (Ray 2.60, ``ray/llm/_internal/batch/processor``). One
dataset per round therefore starts the engines every round, exactly what this module avoids.
Ray's answer to sharing engines between executions (ray-project/ray#52277, resolved by #55179)
is ``ServeDeploymentProcessorConfig``: the engines become a Ray Serve application the stage
would deploy and tear down, with Serve's controller, replica restarts and health checks in
between; the shared actor pool proposed in #54573 was closed unmerged, and persistent Ray Data
actors (#46479) are an open request. A pool of plain actors keeps this engine's per-request
refusals (``rejected_by_engine``) and start-failure reasons, and runs the same on the
in-process executor. ``keep_engines=False`` keeps the old way (one ``map_rows`` job, new
engines, per call) for comparison (``benchmarks/vllm_rounds.py``).

Fitting the model, on the driver before any engine starts (:meth:`VllmEngine.token_budget`):
``max_model_len`` is the model's own context length unless ``prompts.vllm.max_model_len`` says
less (more is refused with a :class:`~selma_ray.config.ConfigError`), and the model's tokenizer
counts each request as vLLM will, so the stage sends only requests that fit. A request vLLM
still refuses is answered with ``error="rejected_by_engine"``, not a failed job.

An engine that cannot start raises :class:`EngineStartError` with vLLM's reason (including what
its engine processes logged), which fails the stage at once: Ray does not restart an actor
whose constructor raised, and the pool's ``max_restarts`` (2 by default) bounds the restarts of
one whose process died while starting.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any, ClassVar

import numpy as np

from selma_ray.config import ConfigError, VllmEngineConfig
from selma_ray.execution import Executor, RowPool
from selma_ray.prompts.engines.base import (
    Completion,
    GenerationRequest,
    Question,
    TokenBudget,
    count_prompt_tokens,
    model_context_length,
)

log = logging.getLogger(__name__)

#: vLLM's own context length when a model's config names none.
VLLM_DEFAULT_MAX_LEN = 2048


class EngineStartError(RuntimeError):
    """A vLLM engine could not start; the message holds vLLM's reason."""


def fit_max_model_len(requested: int | None, path: str, model_ref: str, tokenizer: Any) -> int:
    """The ``max_model_len`` engines start with: ``requested``, or the model's context length
    when None. A request above what the model supports raises :class:`ConfigError` naming the
    field, the model and its limit (unless ``VLLM_ALLOW_LONG_MAX_MODEL_LEN`` is set, as vLLM
    itself allows)."""
    limit, source = model_context_length(path, tokenizer)
    if requested is None:
        return limit if limit is not None else VLLM_DEFAULT_MAX_LEN
    if limit is not None and requested > limit:
        if os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0") not in ("", "0"):
            log.warning("prompts.vllm.max_model_len %d > %d (%s)", requested, limit, source)
            return requested
        msg = (
            f"prompts.vllm.max_model_len: {requested} is more than model {model_ref!r} "
            f"supports: {limit} tokens ({source}); leave it unset to use {limit}, or set at "
            f"most {limit}"
        )
        raise ConfigError(msg)
    return requested


class VllmEngine:
    """Requests on a pool of vLLM engines opened on the first :meth:`generate` and kept until
    :meth:`close`; ``keep_engines=False``: new engines for every call (the former way)."""

    name = "vllm"
    #: The callable class the engines run; None = :class:`VllmPredictor` (a test may swap in
    #: a subclass that counts its constructions).
    predictor: ClassVar[type | None] = None

    def __init__(
        self,
        model: str,
        cfg: VllmEngineConfig,
        executor: Executor,
        *,
        cache_dir: str | None = None,
        keep_engines: bool = True,
    ) -> None:
        self.model_ref = model
        self.cfg = cfg
        self.executor = executor
        self.cache_dir = cache_dir
        self.keep_engines = keep_engines
        self._path: str | None = None
        self._budget: TokenBudget | None = None
        self._pool: RowPool | None = None

    def token_budget(self) -> TokenBudget:
        """The engines' ``max_model_len`` and the prompt token count of a request, read on the
        driver from the model's config and tokenizer (no engine starts); raises
        :class:`ConfigError` for a ``max_model_len`` larger than the model supports."""
        if self._budget is None:
            from transformers import AutoTokenizer

            from selma_ray.models import resolve_model

            self._path = resolve_model(self.model_ref, cache_dir=self.cache_dir)
            tokenizer = AutoTokenizer.from_pretrained(self._path)
            max_len = fit_max_model_len(
                self.cfg.max_model_len, self._path, self.model_ref, tokenizer
            )
            # vLLM's chat() renders the template without adding special tokens; generate()
            # (no chat template) tokenizes the plain prompt with them
            count = partial(count_prompt_tokens, tokenizer, plain_special_tokens=True)
            self._budget = TokenBudget(max_len, count)
        return self._budget

    def engine_kwargs(self, max_model_len: int) -> dict[str, Any]:
        kwargs = {
            "tensor_parallel_size": self.cfg.tensor_parallel_size,
            "max_model_len": max_model_len,
            "dtype": self.cfg.dtype,
            "enforce_eager": self.cfg.enforce_eager,
        }
        if self.cfg.pool.gpus:
            kwargs["gpu_memory_utilization"] = self.cfg.gpu_memory_utilization
        return {**kwargs, **self.cfg.engine_kwargs}

    def generate(self, requests: list[GenerationRequest]) -> list[str | Completion]:
        if not requests:
            return []
        budget = self.token_budget()
        rows = [
            {
                "idx": i,
                "messages": json.dumps(r.messages),
                "prompt": r.prompt,
                "start_index": r.start_index,
                "seed": r.seed,
                "temperature": r.temperature,
                "top_p": r.top_p,
                "max_tokens": r.max_tokens,
            }
            for i, r in enumerate(requests)
        ]
        predictor = self.predictor or VllmPredictor
        fn_kwargs = {
            "model": self._path,
            "engine_kwargs": self.engine_kwargs(budget.max_model_len),
            "cpu_kvcache_gb": None if self.cfg.pool.gpus else self.cfg.cpu_kvcache_gb,
        }
        try:
            if self.keep_engines:
                if self._pool is None:
                    self._pool = self.executor.open_pool(
                        predictor, fn_kwargs=fn_kwargs, pool=self.cfg.pool
                    )
                out = self._pool.map(rows, rows_per_task=self.cfg.rows_per_task)
            else:
                out = self.executor.map_rows(
                    rows,
                    predictor,
                    fn_kwargs=fn_kwargs,
                    pool=self.cfg.pool,
                    rows_per_task=self.cfg.rows_per_task,
                )
        except EngineStartError:
            raise
        except Exception as e:  # the executor's wrapping of a predictor that could not start
            reason = engine_start_reason(str(e))
            if reason is None:
                raise
            raise EngineStartError(reason) from e
        by_idx = {
            int(r["idx"]): Completion(
                str(r["text"]),
                bool(r["truncated"]),
                error=str(r["error"]) or None,
                prompt_tokens=int(r["prompt_tokens"]) if r["prompt_tokens"] >= 0 else None,
            )
            for r in out
        }
        missing = [i for i in range(len(requests)) if i not in by_idx]
        if missing:
            msg = f"vLLM returned no output for {len(missing)} of {len(requests)} requests"
            raise RuntimeError(msg)
        return [by_idx[i] for i in range(len(requests))]

    def questions_for(self, prompt: str) -> list[Question] | None:
        return None

    def close(self) -> None:
        """End the engines (the next :meth:`generate` would start new ones)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def engine_start_reason(text: str) -> str | None:
    """The :class:`EngineStartError` message inside an error's text (Ray reports an actor whose
    constructor raised as an ``ActorDiedError`` quoting the original traceback), or None."""
    found = re.findall(rf"{EngineStartError.__name__}: (.+)", text)
    return found[-1].strip() if found else None


# --------------------------------------------------------------------------- in the actor

_ERROR_LINE = re.compile(r"\b([A-Z]\w*(?:Error|Exception)): (.+)$")
_GENERIC = ("Engine core initialization failed",)


def error_reasons(lines: Iterable[str]) -> list[str]:
    """The distinct ``SomeError: message`` lines of a log, in order, without vLLM's generic
    "Engine core initialization failed" and without a process's quote of an earlier error."""
    reasons: list[str] = []
    messages: list[str] = []
    for line in lines:
        m = _ERROR_LINE.search(line.rstrip())
        if m is None or m.group(2).startswith(_GENERIC):
            continue
        if not any(m.group(2) in seen or seen in m.group(2) for seen in messages):
            reasons.append(f"{m.group(1)}: {m.group(2)}")
            messages.append(m.group(2))
    return reasons


@contextlib.contextmanager
def engine_error_log() -> Iterator[list[str]]:
    """Collect the error lines vLLM's engine processes log while an engine starts.

    ``LLM(...)`` reports a failure in its engine-core or worker processes only as "Engine core
    initialization failed. See root cause above"; the cause is in those processes' logs. They
    take their logging setup from ``VLLM_LOGGING_CONFIG_PATH``, so for the start this points
    it at vLLM's default setup plus a file of ERROR records, whose ``SomeError: message``
    lines are yielded (filled in on leaving). Nothing is changed when the user configures
    vLLM's logging.
    """
    reasons: list[str] = []
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH") or os.environ.get(
        "VLLM_CONFIGURE_LOGGING", "1"
    ) in ("0", "false", "False"):
        yield reasons
        return
    try:
        from vllm.logger import DEFAULT_LOGGING_CONFIG
    except ImportError:
        yield reasons
        return
    workdir = tempfile.mkdtemp(prefix="selma-vllm-start-")
    errors = os.path.join(workdir, "errors.log")
    setup = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
    setup["handlers"]["selma_errors"] = {
        "class": "logging.FileHandler",
        "filename": errors,
        "level": "ERROR",
        "formatter": "vllm",
    }
    setup["loggers"]["vllm"]["handlers"] = [*setup["loggers"]["vllm"]["handlers"], "selma_errors"]
    config_file = os.path.join(workdir, "logging.json")
    with open(config_file, "w", encoding="utf-8") as f:
        json.dump(setup, f)
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = config_file
    try:
        yield reasons
    finally:
        os.environ.pop("VLLM_LOGGING_CONFIG_PATH", None)
        if os.path.exists(errors):
            with open(errors, encoding="utf-8", errors="replace") as f:
                reasons.extend(error_reasons(f))
        # a running engine's processes keep the (then unlinked) file open: harmless
        shutil.rmtree(workdir, ignore_errors=True)


class VllmPredictor:
    """``__call__(batch) -> batch`` over columns idx, messages, prompt, seed, temperature...

    Output columns: idx, text, truncated, prompt_tokens (vLLM's count; -1 when refused) and
    error ("" or ``rejected_by_engine``).
    """

    def __init__(
        self,
        model: str,
        engine_kwargs: dict[str, Any],
        cpu_kvcache_gb: int | None = None,
    ) -> None:
        if cpu_kvcache_gb is not None:
            # read by vLLM's CPU backend when the engine starts; per actor process
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_gb))
        from vllm import LLM

        with engine_error_log() as reasons:
            try:
                self.llm = LLM(model=model, **engine_kwargs)
            except Exception as e:  # noqa: BLE001 - re-raised below with vLLM's reason
                failure: Exception | None = e
            else:
                failure = None
        if failure is not None:
            # a plain message (vLLM's exceptions may not pickle back to the driver); no
            # chained cause, for the same reason
            said = f"{type(failure).__name__}: {' '.join(str(failure).split())}"
            logged = [r for r in reasons if r.split(": ", 1)[1] not in said]
            detail = "; ".join([said, *(f"engine log: {r}" for r in logged[:3])])
            msg = f"vLLM could not start {model} with {engine_kwargs}: {detail}"
            raise EngineStartError(msg) from None
        tokenizer = self.llm.get_tokenizer()
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def close(self) -> None:
        """Shut the engine's processes down now (a pool calls it when it closes)."""
        llm = self.__dict__.pop("llm", None)
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and callable(getattr(core, "shutdown", None)):
            core.shutdown()

    def _run(self, batch: dict[str, np.ndarray], params: list[Any], idx: list[int]) -> list[Any]:
        if self.chat:
            conversations = [json.loads(batch["messages"][i]) for i in idx]
            return self.llm.chat(conversations, sampling_params=params, use_tqdm=False)
        prompts = [str(batch["prompt"][i]) for i in idx]
        return self.llm.generate(prompts, sampling_params=params, use_tqdm=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vllm import SamplingParams

        try:
            from vllm.exceptions import VLLMClientError

            refused: tuple[type[Exception], ...] = (ValueError, VLLMClientError)
        except ImportError:  # older vLLM: validation errors are ValueErrors
            refused = (ValueError,)

        n = len(batch["idx"])
        params = [
            SamplingParams(temperature=float(t), top_p=float(p), max_tokens=int(m), seed=int(s))
            for t, p, m, s in zip(
                batch["temperature"],
                batch["top_p"],
                batch["max_tokens"],
                batch["seed"],
                strict=True,
            )
        ]
        outputs: list[Any] = [None] * n
        try:
            outputs = list(self._run(batch, params, list(range(n))))
        except refused:
            # one request vLLM refuses (e.g. too long) fails the whole call: ask one by one
            for i in range(n):
                try:
                    outputs[i] = self._run(batch, [params[i]], [i])[0]
                except refused as e:
                    log.warning("vLLM refused request %s: %s", batch["idx"][i], e)
        texts, truncated, prompt_tokens, errors = [], [], [], []
        for i, o in enumerate(outputs):
            if o is None:
                texts.append("")
                truncated.append(False)
                prompt_tokens.append(-1)
                errors.append("rejected_by_engine")
                continue
            prefix = "" if self.chat else f"{int(batch['start_index'][i])}."
            texts.append(prefix + o.outputs[0].text)
            truncated.append(o.outputs[0].finish_reason == "length")
            prompt_tokens.append(len(o.prompt_token_ids or ()))
            errors.append("")
        return {
            "idx": np.asarray(batch["idx"]),
            "text": np.asarray(texts, dtype=object),
            "truncated": np.asarray(truncated, dtype=bool),
            "prompt_tokens": np.asarray(prompt_tokens, dtype=np.int64),
            "error": np.asarray(errors, dtype=object),
        }
