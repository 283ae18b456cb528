# `make run` sets up .venv with the core package (what the main job and its default policy need);
# `make test` / `make test-fast` add the `dev` extra (test tools, Ray, transformers, sb3, ...).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test test-fast setup lint bench clean

$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> installing $(TORCH_SPEC) into $(VENV) (the largest download)"
	$(PY) -m pip install --progress-bar on "$(TORCH_SPEC)"
	@echo "==> installing kernelgym (core: triton, numpy, gymnasium, z3-solver, rich, tqdm, matplotlib)"
	$(PY) -m pip install --progress-bar on -e .
	touch $@

$(VENV)/.installed: $(VENV)/.core
	@echo "==> installing the dev extra for the tests (pytest, hypothesis, ruff, scipy, pandas, pyarrow,"
	@echo "    stable-baselines3, transformers, openai, ray[client])"
	$(PY) -m pip install --progress-bar on -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: $(VENV)/.core
	$(PY) -m kernelgym run

# The whole suite (about 11 minutes on 2 cores): skip reasons and the slowest tests are listed.
test: $(VENV)/.installed
	$(PY) -m pytest -q -rs --durations=15

# The quick loop while working (under 2 minutes on 2 cores): everything not marked `slow`.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -rs --durations=10 -m "not slow"

lint: $(VENV)/.installed
	$(PY) -m ruff check kernelgym policies train tests benchmarks envs_registry.py

bench: $(VENV)/.core
	$(PY) -m kernelgym bench

clean:
	rm -rf $(VENV) build *.egg-info
