# `make run` and `make test` set up .venv on first use (torch first, then the package with `dev`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test setup lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) -m kernelgym run

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check kernelgym policies train tests benchmarks envs_registry.py

bench: $(VENV)/.installed
	$(PY) -m kernelgym bench

clean:
	rm -rf $(VENV) build *.egg-info
