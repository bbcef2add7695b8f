"""Tests of the tiny offline models (``selma_ray.models.tiny``) and ``resolve_model``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from selma_ray.models import registry
from selma_ray.models.registry import COMPLETE_MARKER, resolve_model, tiny_model_dir
from selma_ray.models.tiny import FORMAT_VERSION, make_tiny, make_tiny_llm, make_tiny_sd

if TYPE_CHECKING:
    from collections.abc import Callable

# tests/conftest.py sets HF_HUB_OFFLINE=1 and a per-session SELMA_RAY_CACHE.


def _file_hashes(root: str | Path) -> dict[str, str]:
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _weight_hashes(root: str | Path) -> dict[str, str]:
    return {k: v for k, v in _file_hashes(root).items() if k.endswith(".safetensors")}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_tiny(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def sd_images(tiny_dirs: dict[str, str]) -> np.ndarray:
    return _sd_images(tiny_dirs["sd"])


def _sd_images(path: str, seed: int = 0) -> np.ndarray:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    # One thread: the tiny UNet gains nothing from more, and on busy shared cores OpenMP's
    # spinning threads made a 0.2 s call take 6-8 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = pipe(
            ["a red cat on a table", "two blue dogs"],
            num_inference_steps=2,
            guidance_scale=7.5,
            height=64,
            width=64,
            output_type="np",
            generator=torch.Generator().manual_seed(seed),
        )
    finally:
        torch.set_num_threads(threads)
    return np.asarray(out.images)


# ------------------------------------------------------------------------------ Stable Diffusion


#: The files of each tiny model: the Hugging Face layouts of a StableDiffusionPipeline and of
#: a causal LM with its tokenizer and chat template.
SD_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
}
LLM_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


def test_make_tiny_layout(tiny_dirs: dict[str, str]) -> None:
    """make_tiny(DIR) writes DIR/sd and DIR/llm with exactly the files of their layouts, and
    model_index.json names the class of each SD component folder."""
    root = Path(tiny_dirs["sd"]).parent
    assert tiny_dirs == {"sd": str(root / "sd"), "llm": str(root / "llm")}
    assert set(_file_hashes(tiny_dirs["sd"])) == SD_FILES
    assert set(_file_hashes(tiny_dirs["llm"])) == LLM_FILES
    index = json.loads((root / "sd" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert {k: v for k, v in index.items() if isinstance(v, list) and v[0]} == {
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False


def test_sd_generates_images(tiny_dirs: dict[str, str], sd_images: np.ndarray) -> None:
    """Two prompts give two 64 px RGB images in [0, 1] that differ (the text conditions the
    UNet); the generator seed fixes them: the same seed again gives the same pixels, another
    seed other pixels."""
    images = sd_images
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert all(image.std() > 0 for image in images)
    assert not np.array_equal(images[0], images[1])
    np.testing.assert_array_equal(_sd_images(tiny_dirs["sd"], seed=0), images)
    other = _sd_images(tiny_dirs["sd"], seed=1)
    assert other.shape == images.shape
    assert not np.array_equal(other[0], images[0]) and not np.array_equal(other[1], images[1])


def test_sd_loads_with_diffusion_pipeline(tiny_dirs: dict[str, str]) -> None:
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_dirs["sd"], local_files_only=True)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.safety_checker is None
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    ids = pipe.tokenizer("a photo of a red cat").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id
    assert ids[-1] == pipe.tokenizer.eos_token_id
    assert pipe.tokenizer.decode(ids, skip_special_tokens=True) == "a photo of a red cat"


def test_sd_deterministic_per_seed(
    tiny_dirs: dict[str, str], sd_images: np.ndarray, tmp_path: Path
) -> None:
    same = make_tiny_sd(tmp_path / "same", seed=0)
    other = make_tiny_sd(tmp_path / "other", seed=1)
    assert _file_hashes(same) == _file_hashes(tiny_dirs["sd"])
    other_weights = _weight_hashes(other)
    for name, digest in _weight_hashes(same).items():
        assert other_weights[name] != digest, name
    np.testing.assert_array_equal(_sd_images(same), sd_images)
    assert not np.array_equal(_sd_images(other), sd_images)


# ------------------------------------------------------------------------------------- chat LLM


def test_llm_chat_and_generate(tiny_dirs: dict[str, str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["llm"])
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["llm"])
    assert model.config.head_dim == 32
    assert model.config.vocab_size == len(tok)
    assert 1000 <= len(tok) <= 2000
    messages = [
        {"role": "system", "content": "You write prompts."},
        {"role": "user", "content": "List 3 prompts."},
    ]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|begin|><|system|>\nYou write prompts.<|end|>\n"
        "<|user|>\nList 3 prompts.<|end|>\n<|assistant|>\n"
    )
    no_prompt = tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert not no_prompt.endswith("<|assistant|>\n")

    batch = tok([text, text + "1."], add_special_tokens=False, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=32, min_new_tokens=32, do_sample=True)
    assert out.shape == (2, batch["input_ids"].shape[1] + 32)
    new = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert all(isinstance(s, str) for s in new)


@pytest.mark.parametrize(
    "text",
    ["A red cat on a table.", "Hello, wörld! 你好 🙂  tabs\tand\nnewlines  ", "1. x\n2. y"],
)
def test_llm_tokenizer_round_trips(tiny_dirs: dict[str, str], text: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["llm"])
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_llm_deterministic_per_seed(tiny_dirs: dict[str, str], tmp_path: Path) -> None:
    same = make_tiny_llm(tmp_path / "same", seed=0)
    other = make_tiny_llm(tmp_path / "other", seed=1)
    assert _file_hashes(same) == _file_hashes(tiny_dirs["llm"])
    assert _weight_hashes(other) != _weight_hashes(same)
    # Same tokenizer for every seed: only the weights change.
    assert _file_hashes(other)["tokenizer.json"] == _file_hashes(same)["tokenizer.json"]


def test_llm_tokenizer_config_is_portable(tiny_dirs: dict[str, str]) -> None:
    config = json.loads(Path(tiny_dirs["llm"], "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


# -------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    "ref", ["stabilityai/stable-diffusion-2-1", "Qwen/Qwen2.5-0.5B-Instruct", "/models/x", "./m"]
)
def test_resolve_passes_real_refs_through(ref: str, tmp_path: Path) -> None:
    assert resolve_model(ref, cache_dir=tmp_path) == ref
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("ref", ["tiny:xl", "tiny:", "tiny:sd@x", "tiny:llm@1@2"])
def test_resolve_rejects_unknown_tiny_refs(ref: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tiny:sd.*tiny:llm"):
        resolve_model(ref, cache_dir=tmp_path)


@pytest.fixture
def build_counter(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Wrap the real builders so tests can count builds."""
    counts: dict[str, int] = {}
    for kind, builder in dict(registry._BUILDERS).items():

        def counting(
            path: str, seed: int = 0, _kind: str = kind, _b: Callable[..., str] = builder
        ) -> str:
            counts[_kind] = counts.get(_kind, 0) + 1
            return _b(path, seed=seed)

        monkeypatch.setitem(registry._BUILDERS, kind, counting)
    return counts


def test_resolve_builds_once_and_caches(tmp_path: Path, build_counter: dict[str, int]) -> None:
    path = resolve_model("tiny:llm@3", cache_dir=tmp_path)
    expected = tmp_path / "tiny" / f"llm-seed3-v{FORMAT_VERSION}"
    assert path == str(expected) == str(tiny_model_dir("llm", 3, tmp_path))
    marker = expected / COMPLETE_MARKER
    assert marker.is_file()
    mtime = marker.stat().st_mtime_ns
    assert resolve_model("tiny:llm@3", cache_dir=tmp_path) == path
    assert build_counter == {"llm": 1}
    assert marker.stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [expected.name]
    # Same weights as a direct build with the same seed.
    direct = make_tiny_llm(tmp_path / "direct", seed=3)
    assert _weight_hashes(path) == _weight_hashes(direct)


def test_resolve_sd_default_seed_and_env_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build_counter: dict[str, int]
) -> None:
    monkeypatch.setenv("SELMA_RAY_CACHE", str(tmp_path / "envcache"))
    path = resolve_model("tiny:sd")
    assert path == str(tmp_path / "envcache" / "tiny" / f"sd-seed0-v{FORMAT_VERSION}")
    from diffusers import StableDiffusionPipeline

    assert isinstance(
        StableDiffusionPipeline.from_pretrained(path, local_files_only=True),
        StableDiffusionPipeline,
    )
    assert resolve_model("tiny:sd@0") == path
    assert build_counter == {"sd": 1}


def test_resolve_concurrent_threads(tmp_path: Path, build_counter: dict[str, int]) -> None:
    barrier = threading.Barrier(2)

    def worker() -> str:
        barrier.wait()
        return resolve_model("tiny:llm@5", cache_dir=tmp_path)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(worker) for _ in range(2)]
        results = [f.result(timeout=120) for f in futures]
    assert len(results) == 2
    assert results[0] == results[1]
    assert build_counter == {"llm": 1}
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [Path(results[0]).name]
    assert (Path(results[0]) / COMPLETE_MARKER).is_file()


def test_resolve_concurrent_processes(tmp_path: Path) -> None:
    """Two processes build the same model at once: one directory, complete, no temp leftovers."""
    code = (
        "import sys\n"
        "from selma_ray.models import resolve_model\n"
        "print('PATH ' + resolve_model('tiny:llm@7', cache_dir=sys.argv[1]))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    paths = {ln[5:] for out, _ in outputs for ln in out.splitlines() if ln.startswith("PATH ")}
    assert paths == {str(tiny_model_dir("llm", 7, tmp_path))}
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [f"llm-seed7-v{FORMAT_VERSION}"]
    assert _weight_hashes(paths.pop()) == _weight_hashes(make_tiny_llm(tmp_path / "d", seed=7))


def test_a_build_in_progress_in_another_process_is_waited_for_not_repeated(tmp_path: Path) -> None:
    """While this process holds the build lock (a build in progress), another process asking
    for the model waits without starting its own build, then returns the finished one."""
    from filelock import FileLock

    code = (
        "import sys\n"
        "from selma_ray.models import registry\n"
        "build = registry._BUILDERS['llm']\n"
        "def counted(path, seed=0):\n"
        "    print('BUILT', flush=True)\n"
        "    return build(path, seed=seed)\n"
        "registry._BUILDERS['llm'] = counted\n"
        "print('ASKING', flush=True)\n"
        "print('PATH ' + registry.resolve_model('tiny:llm@9', cache_dir=sys.argv[1]))\n"
    )
    target = tiny_model_dir("llm", 9, tmp_path)
    lock = registry.build_lock_path("llm", 9, tmp_path)
    lock.parent.mkdir(parents=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with FileLock(lock):
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # the other process asks for the model and waits: still running seconds later (its
        # own build takes about one), no temp build directory beside the target
        assert proc.stdout.readline() == "ASKING\n", proc.communicate()
        time.sleep(5)
        assert proc.poll() is None, proc.communicate()
        assert not (tmp_path / "tiny").exists() or not any((tmp_path / "tiny").iterdir())
        # "our" build finishes while the lock is held, as the holder's would
        registry._build("llm", 9, target)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "BUILT" not in out
    assert f"PATH {target}" in out
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [target.name]


def test_resolve_loses_race_to_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process renames its finished build in first: ours is discarded, theirs used."""
    target = tiny_model_dir("llm", 0, tmp_path)

    def racing_builder(path: str, seed: int = 0) -> str:
        Path(path, "mine.txt").write_text("mine")
        other = target.with_name("other-process")
        other.mkdir()
        (other / "theirs.txt").write_text("theirs")
        (other / COMPLETE_MARKER).write_text("done")
        os.rename(other, target)
        return path

    monkeypatch.setitem(registry._BUILDERS, "llm", racing_builder)
    path = Path(resolve_model("tiny:llm", cache_dir=tmp_path))
    assert path == target
    assert sorted(p.name for p in path.iterdir()) == [COMPLETE_MARKER, "theirs.txt"]
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [target.name]


def test_resolve_replaces_incomplete_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tiny_model_dir("sd", 0, tmp_path)
    target.mkdir(parents=True)
    (target / "half-written.bin").write_text("x")

    def fake_builder(path: str, seed: int = 0) -> str:
        Path(path, "model_index.json").write_text("{}")
        return path

    monkeypatch.setitem(registry._BUILDERS, "sd", fake_builder)
    path = Path(resolve_model("tiny:sd", cache_dir=tmp_path))
    assert sorted(p.name for p in path.iterdir()) == [COMPLETE_MARKER, "model_index.json"]
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [target.name]


def test_resolve_failed_build_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_builder(path: str, seed: int = 0) -> str:
        Path(path, "partial").write_text("x")
        raise RuntimeError("boom")

    monkeypatch.setitem(registry._BUILDERS, "sd", broken_builder)
    with pytest.raises(RuntimeError, match="boom"):
        resolve_model("tiny:sd", cache_dir=tmp_path)
    assert list((tmp_path / "tiny").iterdir()) == []


# ----------------------------------------------------------------------------------------- vLLM

_VLLM_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    import time


    def main() -> None:
        t0 = time.perf_counter()
        from vllm import LLM, SamplingParams

        t1 = time.perf_counter()
        llm = LLM(
            model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=256, seed=0
        )
        t2 = time.perf_counter()
        messages = [
            [{"role": "user", "content": "List three prompts."}],
            [{"role": "user", "content": "Is there a red cat?"}],
        ]
        params = SamplingParams(max_tokens=32, ignore_eos=True, temperature=1.0, seed=0)
        outs = llm.chat(messages, params)
        t3 = time.perf_counter()
        again = llm.chat(messages, params)  # same seed: the same text
        result = {
            "import_s": t1 - t0,
            "engine_s": t2 - t1,
            "generate_s": t3 - t2,
            "n_tokens": [len(o.outputs[0].token_ids) for o in outs],
            "texts": [o.outputs[0].text for o in outs],
            "texts_again": [o.outputs[0].text for o in again],
        }
        print("RESULT " + json.dumps(result), flush=True)


    if __name__ == "__main__":
        main()
    """
)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_cpu_loads_tiny_llm(
    require_vllm: None, tiny_dirs: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "run_vllm.py"
    script.write_text(_VLLM_SCRIPT)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(script), tiny_dirs["llm"]],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    log = proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.returncode == 0, log
    assert lines, log
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["n_tokens"] == [32, 32]
    assert all(isinstance(t, str) and t for t in result["texts"])
    assert result["texts_again"] == result["texts"]  # seed=0 reproduces the sampled text
    assert result["texts"][0] != result["texts"][1]  # two prompts, two different answers
    print(
        f"vLLM CPU: import {result['import_s']:.1f}s, engine {result['engine_s']:.1f}s, "
        f"generate 2x32 tokens {result['generate_s']:.2f}s"
    )


def test_sd15_size_configs_have_stable_diffusion_15_shapes() -> None:
    """``tiny:sd15-size`` is SD 1.5's architecture: the published parameter counts (built on
    the meta device, so no memory or time is spent on 940 M random weights)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from selma_ray.models.tiny import SD15_UNET_CONFIG, SD_VAE_CONFIG

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD_VAE_CONFIG)
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert "sd15-size" in registry.TINY_KINDS
