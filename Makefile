# Two commands set everything up on a fresh clone: `make test` and `make book`.
# Both create .venv, install CPU torch and the package with its extras, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build these machines hold; override for a GPU, e.g. TORCH="torch==2.13.0" with your CUDA index.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
# make book PROFILE=smoke|book|paper DEVICE=cpu|cuda MODEL=path-or-hub-id PARAMS="name=value ..."
PROFILE ?= book
DEVICE ?=
MODEL ?=
PARAMS ?=

.PHONY: install lint fmt browser test book bench clean

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (geomlib)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

LINTED := geomlib tests benchmarks notebooks
NOTEBOOKS := $(wildcard notebooks/*.ipynb)

# Seconds: style, types, docstring coverage, and notebooks stored without outputs.
lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy
	$(VENV)/bin/interrogate --quiet geomlib
	$(if $(NOTEBOOKS),$(VENV)/bin/nbstripout --verify $(NOTEBOOKS))

# Rewrite in place: format code and notebooks, apply safe lint fixes, strip notebook outputs.
fmt: install
	$(if $(NOTEBOOKS),$(VENV)/bin/nbstripout $(NOTEBOOKS))
	$(VENV)/bin/ruff format $(LINTED)
	$(VENV)/bin/ruff check --fix $(LINTED)

# Headless Chromium for the book's rendering test; installed where we may (root + apt), else skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the book rendering test"; \
	    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium install failed: rendering test will be skipped"; \
	  else echo "chromium not found: the book rendering test will be skipped"; fi; }

test: install lint browser
	$(PY) -m pytest

book: install
	$(PY) -m geomlib.runner --profile $(PROFILE) $(if $(DEVICE),--device $(DEVICE)) $(if $(MODEL),--model $(MODEL)) $(foreach p,$(PARAMS),-p $(p))

bench: install
	$(PY) benchmarks/bench_jacobian.py
	$(PY) benchmarks/bench_partition.py

clean:
	rm -rf _build .pytest_cache
