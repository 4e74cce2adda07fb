# Two commands set everything up on a fresh clone: `make test` and `make book`.
# Both create .venv, install CPU torch and the package with its extras, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build these machines hold; override for a GPU, e.g. TORCH="torch==2.13.0" with your CUDA index.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
# make book PROFILE=smoke|book|paper DEVICE=cpu|cuda MODEL=path-or-hub-id
PROFILE ?= book
DEVICE ?=
MODEL ?=

.PHONY: install test book bench clean

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (geomlib)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest

book: install
	$(PY) -m geomlib.runner --profile $(PROFILE) $(if $(DEVICE),--device $(DEVICE)) $(if $(MODEL),--model $(MODEL))

bench: install
	$(PY) benchmarks/bench_jacobian.py

clean:
	rm -rf _build .pytest_cache
