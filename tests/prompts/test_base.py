"""The engines' shared pieces: a model's context length as vLLM derives it."""

from __future__ import annotations

import pytest

from selma_ray.prompts.engines.base import model_context_length


def _llama_config(tmp_path, **kwargs) -> str:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=64, num_attention_heads=2, **kwargs).save_pretrained(tmp_path)
    return str(tmp_path)


@pytest.mark.parametrize(
    ("rope", "expected"),
    [
        (None, 1024),
        ({"rope_type": "linear", "factor": 2.0}, 2048),  # scaled by its factor
        ({"rope_type": "dynamic", "factor": 4.0}, 4096),
        # llama3 / yarn configs state the already scaled length
        (
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
             "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
            1024,
        ),
    ],
)  # fmt: skip
def test_context_length_from_config_and_rope_scaling(tmp_path, rope, expected):
    kwargs = {} if rope is None else {"rope_parameters": {**rope, "rope_theta": 10000.0}}
    path = _llama_config(tmp_path, max_position_embeddings=1024, **kwargs)
    length, source = model_context_length(path)
    assert length == expected
    assert source.startswith("max_position_embeddings=1024 in its config.json")


def test_tokenizer_model_max_length_caps_the_context(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["llm"])
    assert model_context_length(tiny_models["llm"]) == (
        512,
        "max_position_embeddings=512 in its config.json",
    )
    tok.model_max_length = 300
    assert model_context_length(tiny_models["llm"], tok) == (
        300,
        "model_max_length=300 in its tokenizer_config.json",
    )
