"""The vllm engine's fit to its model, checked on the driver, and its engines kept across a
stage's rounds (a stand-in predictor: no vLLM engine starts here)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from selma_ray.config import ConfigError, load_config
from selma_ray.execution import InProcessExecutor
from selma_ray.prompts.engines.vllm_engine import VllmEngine, VllmPredictor, engine_start_reason
from selma_ray.storage import RunDir


def _engine(*overrides: str) -> VllmEngine:
    cfg = load_config(overrides=["prompts.engine=vllm", *overrides]).prompts
    return VllmEngine(cfg.model, cfg.vllm, InProcessExecutor())


def test_max_model_len_defaults_to_what_the_model_supports(tiny_models):
    engine = _engine()
    assert engine.cfg.max_model_len is None  # the tiny preset leaves it unset
    budget = engine.token_budget()
    assert budget.max_model_len == 512  # tiny:llm's max_position_embeddings
    assert engine.engine_kwargs(budget.max_model_len)["max_model_len"] == 512
    assert _engine("prompts.vllm.max_model_len=256").token_budget().max_model_len == 256


def test_larger_max_model_len_exits_2_before_any_engine_starts(
    tiny_models, tmp_path, monkeypatch, capsys
):
    from selma_ray.cli import main

    def no_engine(*args, **kwargs):
        raise AssertionError("a vLLM engine was started")

    monkeypatch.setattr(VllmPredictor, "__init__", no_engine)
    code = main(
        [
            "run", "--run-dir", str(tmp_path / "run"), "--stages", "prompts", "--no-progress",
            "--set", "prompts.engine=vllm",
            "--set", "prompts.vllm.max_model_len=1024",
            "--set", "ray.executor=in-process",
        ]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "prompts.vllm.max_model_len: 1024 is more than model 'tiny:llm' supports" in err
    assert "512 tokens (max_position_embeddings=512 in its config.json)" in err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["prompts"]["status"] == "failed"


def test_engine_kwargs_cannot_shadow_a_field():
    with pytest.raises(ConfigError) as e:
        load_config(data={"prompts": {"vllm": {"engine_kwargs": {"max_model_len": 100}}}})
    assert "prompts.vllm.engine_kwargs" in str(e.value)
    assert "set prompts.vllm.max_model_len instead" in str(e.value)


def test_engine_start_reason_is_found_in_a_wrapped_error():
    wrapped = (
        "The actor died because of an error raised in its creation task, ray::MapWorker...\n"
        "  File 'vllm_engine.py', line 9, in __init__\n"
        "selma_ray.prompts.engines.vllm_engine.EngineStartError: vLLM could not start m with "
        "{}: ValueError: bad value\n"
    )
    assert engine_start_reason(wrapped) == "vLLM could not start m with {}: ValueError: bad value"
    assert engine_start_reason("ActorDiedError: the node was lost") is None


def test_error_reasons_keep_each_engine_process_error_once():
    """Lines as vLLM's engine processes log a failed start (KV cache larger than memory)."""
    from selma_ray.prompts.engines.vllm_engine import error_reasons

    why = "Available memory on node 0 (9.47/12.59 GiB) is less than requested (100000.0 GiB)."
    log = [
        "(Worker pid=11) ERROR 12-01 00:05:16 [multiproc_executor.py:1063] Traceback:\n",
        "(Worker pid=11) ERROR 12-01 00:05:16 [multiproc_executor.py:1063]     raise ValueError(\n",
        f"(Worker pid=11) ERROR 12-01 00:05:16 [multiproc_executor.py:1063] ValueError: {why}\n",
        f"(EngineCore pid=10) ERROR 12-01 00:05:16 [core.py:1510] RuntimeError: Worker failed "
        f"with error '{why}', please check the stack trace above for the root cause\n",
        "(EngineCore pid=10) ERROR 12-01 00:05:17 [core.py:99] RuntimeError: Engine core "
        "initialization failed. See root cause above.\n",
        "(EngineCore pid=10) ERROR 12-01 00:05:17 [core.py:99] OSError: port 5555 in use\n",
    ]
    assert error_reasons(log) == [f"ValueError: {why}", "OSError: port 5555 in use"]


# --------------------------------------------------------------------------- engines kept

_WORDS = (
    ("red", "tall", "small", "striped", "wooden", "shiny", "old", "green", "tiny", "round"),
    ("cat", "boat", "lamp", "horse", "kettle", "bicycle", "owl", "piano", "tent", "robot"),
    ("beside", "under", "behind", "on top of", "next to", "inside", "near", "facing"),
    ("a bridge", "the sea", "a window", "a market", "the snow", "a garden", "a desk"),
)


class FakePredictor:
    """Stands in for :class:`VllmPredictor` without vLLM: each request is answered with a
    numbered list drawn from its seed alone (as vLLM's per-request seeds make its answers);
    counts its constructions and closes."""

    starts = 0
    closed = 0

    def __init__(self, model: str, engine_kwargs: dict, cpu_kvcache_gb: int | None = None):
        FakePredictor.starts += 1

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = []
        for seed in batch["seed"]:
            rng = random.Random(int(seed))
            items = [" ".join(["a", *(rng.choice(w) for w in _WORDS)]) for _ in range(4)]
            texts.append("\n".join(f"{k + 1}. {item}" for k, item in enumerate(items)))
        n = len(texts)
        return {
            "idx": batch["idx"],
            "text": np.asarray(texts, dtype=object),
            "truncated": np.zeros(n, dtype=bool),
            "prompt_tokens": np.full(n, -1),
            "error": np.asarray([""] * n, dtype=object),
        }

    def close(self) -> None:
        FakePredictor.closed += 1


class CountingEngine(VllmEngine):
    predictor = FakePredictor

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def generate(self, requests):
        self.calls += bool(requests)
        return super().generate(requests)


def long_context_llm(tiny_llm: str, directory: Path) -> str:
    """tiny:llm told it has 4,096 positions (RoPE: nothing learned per position), so the
    few-shot DSG requests fit; tiny:llm's 512 hold no DSG request."""
    shutil.copytree(tiny_llm, directory)
    for name, key in (
        ("config", "max_position_embeddings"),
        ("tokenizer_config", "model_max_length"),
    ):
        config = json.loads((directory / f"{name}.json").read_text())
        (directory / f"{name}.json").write_text(json.dumps({**config, key: 4096}))
    return str(directory)


def _three_rounds(model: str, run_dir: str, keep_engines: bool) -> tuple[dict, CountingEngine]:
    """A 3-round stage (2 skills, 2 requests a round, DSG questions on) on the fake engines."""
    from selma_ray.prompts.stage import generate_prompts

    cfg = load_config(
        overrides=[
            "prompts.engine=vllm",
            f"prompts.model={model}",
            "prompts.skills=[coco, whoops]",
            "prompts.num_prompts=200",
            "prompts.max_rounds=3",
            "prompts.requests_per_round=2",
        ]
    ).prompts
    assert cfg.dsg_questions.enabled
    engine = CountingEngine(cfg.model, cfg.vllm, InProcessExecutor(), keep_engines=keep_engines)
    FakePredictor.starts = FakePredictor.closed = 0
    try:
        stats = generate_prompts(cfg, RunDir(run_dir), engine, seed=0)
    finally:
        engine.close()
    return stats, engine


def test_engines_start_once_per_stage_and_write_what_fresh_engines_would(tiny_models, tmp_path):
    from selma_ray.prompts.stage import read_prompts

    model = long_context_llm(tiny_models["llm"], tmp_path / "llm-4k")
    kept, engine = _three_rounds(model, str(tmp_path / "kept"), keep_engines=True)
    assert [kept[s]["rounds"] for s in ("coco", "whoops")] == [3, 3]
    # three rounds and the DSG questions after each: six calls, one engine start
    assert engine.calls == 6
    assert (FakePredictor.starts, FakePredictor.closed) == (1, 1)
    restarted, engine = _three_rounds(model, str(tmp_path / "restarted"), keep_engines=False)
    assert engine.calls == 6 and FakePredictor.starts == 6  # the former way: one per call
    for skill in ("coco", "whoops"):
        rows = read_prompts(RunDir(str(tmp_path / "kept")), skill)
        assert len(rows) == kept[skill]["accepted"] > 10
        assert rows == read_prompts(RunDir(str(tmp_path / "restarted")), skill)
        assert _untimed(kept[skill]) == _untimed(restarted[skill])
        assert kept[skill]["dsg"]["asked"] == kept[skill]["accepted"]  # asked the same engines


def _untimed(stats: dict) -> dict:
    return {
        k: _untimed(v) if isinstance(v, dict) else v for k, v in stats.items() if k != "seconds"
    }
