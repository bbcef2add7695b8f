"""The vllm engine's fit to its model, checked on the driver (no vLLM engine starts here)."""

from __future__ import annotations

import json

import pytest

from selma_ray.config import ConfigError, load_config
from selma_ray.execution import InProcessExecutor
from selma_ray.prompts.engines.vllm_engine import VllmEngine, VllmPredictor, engine_start_reason


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
