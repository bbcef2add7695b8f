"""The vllm engine for real: vllm(-cpu) engines on Ray actors, with the tiny LLM.

Six engine starts in all: two for direct requests (the second repeats seeds), one for the
stage, two for the stage whose engines live across its rounds and for the same requests on a
fresh engine, one that fails. Without vllm these tests fail; ``SELMA_SKIP_VLLM=1`` skips them.
"""

from __future__ import annotations

import os
import time

import pytest

from selma_ray.config import load_config
from selma_ray.prompts.fewshot import build_request
from selma_ray.skills import BUILTIN_SKILLS

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

COCO = BUILTIN_SKILLS["coco"]
#: A skill whose instruction alone fills tiny:llm's 512 positions: its requests never fit.
TOO_LONG = {
    "name": "too-long",
    "instruction": "Describe a cat on a red table. " * 60,
    "seeds": list(COCO.seeds),
}


def test_vllm_engine_answers_requests_and_refuses_one_too_long(
    require_vllm, ray_cluster, tiny_models
):
    """Direct requests on Ray Data actors: vLLM counts each prompt as the driver's budget
    does; a request vLLM refuses (sent unfitted) is answered with an error, the others not;
    a rerun on fresh engines with the same seeds writes the same texts."""
    from selma_ray.distributed import RayExecutor
    from selma_ray.prompts.engines.vllm_engine import VllmEngine

    cfg = load_config(overrides=["prompts.engine=vllm", "prompts.vllm.rows_per_task=4"])
    engine = VllmEngine(cfg.prompts.model, cfg.prompts.vllm, RayExecutor())
    reqs = [build_request(COCO, list(COCO.seeds), n_items=2, seed=s, max_tokens=16) for s in (1, 2)]
    long_examples = [" ".join(["a red cat on a blue mat"] * 20)] * 3
    reqs.insert(1, build_request(COCO, long_examples, n_items=2, seed=3, max_tokens=16))
    budget = engine.token_budget()
    assert budget.max_model_len == 512 and budget.count(reqs[1]) > 512
    out = engine.generate(reqs)
    assert len(out) == 3  # one completion per request, in request order
    assert [c.error for c in out] == [None, "rejected_by_engine", None]
    assert (out[1].text, out[1].truncated, out[1].prompt_tokens) == ("", False, None)
    answered = [0, 2]
    assert [out[i].prompt_tokens for i in answered] == [budget.count(reqs[i]) for i in answered]
    # noise from a random model: 16 tokens without an end token means cut at the limit
    assert all(out[i].text and out[i].truncated for i in answered)
    assert out[0].text != out[2].text  # seeds 1 and 2, different examples: different texts
    engine.close()  # the next call starts new engines
    try:
        again = engine.generate([reqs[i] for i in answered])
    finally:
        engine.close()
    assert [c.text for c in again] == [out[i].text for i in answered]
    assert [c.error for c in again] == [None, None]


def test_engines_start_once_for_a_three_round_stage_and_answer_as_fresh_ones(
    require_vllm, ray_cluster, tiny_models, tmp_path
):
    """A 3-round stage on Ray: one engine start (each start leaves a file) answers every
    round; the same requests sent the former way (new engines in one Ray Data job,
    ``keep_engines=False``) get the same answers, so the stage writes what restarting the
    engines every round would; ``close()`` ends the engine's process."""
    from selma_ray.distributed import RayExecutor
    from selma_ray.prompts.engines.vllm_engine import VllmEngine, VllmPredictor
    from selma_ray.prompts.stage import generate_prompts
    from selma_ray.storage import RunDir

    starts = tmp_path / "starts"
    starts.mkdir()

    class Counted(VllmPredictor):
        def __init__(self, *args, **kwargs) -> None:
            (starts / f"{os.getpid()}-{time.monotonic_ns()}").touch()
            super().__init__(*args, **kwargs)

    class Recording(VllmEngine):
        predictor = Counted

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.answered: list = []

        def generate(self, requests):
            out = super().generate(requests)
            self.answered.extend(zip(requests, out, strict=True))
            return out

    cfg = load_config(
        overrides=[
            "prompts.engine=vllm",
            "prompts.skills=[coco]",
            "prompts.num_prompts=100",
            "prompts.max_rounds=3",
            "prompts.requests_per_round=2",
            "prompts.max_tokens=48",
        ]
    ).prompts
    engine = Recording(cfg.model, cfg.vllm, RayExecutor())
    try:
        stats = generate_prompts(cfg, RunDir(str(tmp_path / "run")), engine, seed=0)
        assert stats["coco"]["rounds"] == 3 and len(engine.answered) == 6
        (start,) = [p.name for p in starts.iterdir()]  # one engine for the three rounds
    finally:
        engine.close()
    pid = int(start.split("-")[0])
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(pid)
    fresh = Recording(cfg.model, cfg.vllm, RayExecutor(), keep_engines=False)
    requests, kept = zip(*engine.answered, strict=True)
    again = fresh.generate(list(requests))
    assert len(list(starts.iterdir())) == 2
    assert [(c.text, c.truncated, c.error, c.prompt_tokens) for c in again] == [
        (c.text, c.truncated, c.error, c.prompt_tokens) for c in kept
    ]
    assert all(c.text and c.error is None for c in kept)
    assert len({c.text for c in kept}) == 6  # six seeds, six answers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_tiny_preset_on_vllm_fits_requests_to_the_model(require_vllm, ray_cluster, tmp_path):
    """prompts.engine=vllm on the tiny preset, max_model_len unset (tiny:llm: 512 positions,
    the preset asks 512 response tokens): the stage runs through run_pipeline on Ray and
    finishes; every request is cut to one example and the room left, the too-long skill's
    requests are dropped, and vLLM fed every prompt exactly the tokens the budget counted."""
    from selma_ray import layout
    from selma_ray.pipeline import run_pipeline
    from selma_ray.storage import RunDir

    cfg = load_config(
        overrides=[
            "prompts.engine=vllm",
            "prompts.num_prompts=4",
            "prompts.max_rounds=1",
            "prompts.requests_per_round=2",
        ],
        data={"prompts": {"skills": ["coco", "whoops", TOO_LONG]}},
    )
    assert cfg.prompts.vllm.max_model_len is None and cfg.prompts.max_tokens == 512
    summary = run_pipeline(cfg, str(tmp_path / "run"), stages=["prompts"])
    rd = RunDir(str(tmp_path / "run"))
    manifest = rd.read_json("manifest.json")
    stats = rd.read_json("prompts", "stats.json")
    # one round of 2 requests from a random model cannot reach 4 prompts per skill
    assert manifest["stages"]["prompts"]["status"] == "incomplete"
    assert summary.incomplete == ["prompts"]
    assert stats["too-long"]["accepted"] == 0  # none of its requests was sent
    for skill in ("coco", "whoops"):
        reached = stats[skill]["accepted"]
        assert reached < 4
        assert f"prompts {skill}: reached {reached} of 4 after 1 rounds" in summary.notes
        assert len(rd.read_jsonl(*layout.prompts_file(skill))) == reached
    cut = {"planned": 2, "sent": 2, "shortened": 2, "max_tokens_reduced": 2, "miscounted": 0}
    for skill in ("coco", "whoops"):
        assert stats[skill]["requests"] == {**cut, "dropped": {}}
        assert stats[skill]["responses"] == 2 and stats[skill]["rounds"] == 1
        assert stats[skill]["parsed"] == stats[skill]["accepted"] + sum(
            stats[skill]["dropped"].values()
        )
    assert stats["too-long"]["requests"] == {
        "planned": 2,
        "sent": 0,
        "shortened": 0,
        "max_tokens_reduced": 0,
        "miscounted": 0,
        "dropped": {"request_too_long": 2},
    }


def test_engine_that_cannot_start_fails_the_stage_at_once_with_vllms_reason(
    require_vllm, ray_cluster, tmp_path
):
    """A KV cache larger than the machine: vLLM's worker process fails, LLM() only says
    "Engine core initialization failed"; the stage fails once, quoting the worker's reason."""
    from selma_ray.pipeline import run_pipeline
    from selma_ray.prompts.engines.vllm_engine import EngineStartError
    from selma_ray.storage import RunDir

    cfg = load_config(
        overrides=[
            "prompts.engine=vllm",
            "prompts.skills=[coco]",
            "prompts.max_rounds=1",
            "prompts.vllm.cpu_kvcache_gb=100000",
        ]
    )
    t0 = time.perf_counter()
    with pytest.raises(EngineStartError) as e:
        run_pipeline(cfg, str(tmp_path / "run"), stages=["prompts"])
    seconds = time.perf_counter() - t0
    message = str(e.value)
    assert message.startswith("vLLM could not start ")
    assert "Engine core initialization failed" in message
    assert "VLLM_CPU_KVCACHE_SPACE" in message  # the worker's own words, from its log
    assert seconds < 240, f"took {seconds:.0f} s: restarted?"
    status = RunDir(str(tmp_path / "run")).read_json("manifest.json")["stages"]["prompts"]
    assert status["status"] == "failed" and "VLLM_CPU_KVCACHE_SPACE" in status["error"]
