# Two commands set everything up on a fresh clone: `make test` and `make book`.
# Both create .venv, install exactly the committed lock file (hashes checked), then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The lock file, written by `make lock` (uv pip compile) for CPython 3.11 on Linux x86_64: every
# dependency of geomlib[dev], each pinned with its hashes, torch as the CPU build (torch==2.13.0+cpu,
# set by [tool.uv] in pyproject.toml).
LOCK := requirements.lock
# PyTorch's own index, for the CPU wheel when pip's configuration does not already find it.
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# Another torch build instead of the locked CPU one (the rest of the lock stays; torch and its CUDA
# libraries are not hash-checked), e.g. for a GPU (export it: the venv is rebuilt when it changes):
#   export TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH ?=
LOCKED := $(VENV)/.locked
STAMP := $(VENV)/.installed
# The venv remembers which torch it holds; asking for another one rebuilds it.
TORCH_CHOICE := $(if $(strip $(TORCH)),$(strip $(TORCH)),locked)
ifneq ($(shell cat $(LOCKED) 2>/dev/null),$(TORCH_CHOICE))
$(LOCKED): FORCE
endif
# make book PROFILE=smoke|book|paper DEVICE=cpu|cuda MODEL=path-or-hub-id PARAMS="name=value ..."
PROFILE ?= book
DEVICE ?=
MODEL ?=
PARAMS ?=
# make lock UPGRADE="diffusers transformers": move these pins (all others stay); TORCH_WHEELS: a
# folder or page that holds the torch==2.13.0+cpu wheels (uv does not read pip's configuration).
UPGRADE ?=
TORCH_WHEELS ?= https://download.pytorch.org/whl/torch/

.PHONY: FORCE install lock lint fmt browser test book paper-dry bench clean

# A new venv whenever the lock changes, so that it holds the lock and nothing else.
$(LOCKED): $(LOCK)
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else \
	  f"the lock is for CPython 3.11, {sys.executable} is {v[0]}.{v[1]}: run make PYTHON=python3.11")'
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
ifeq ($(TORCH_CHOICE),locked)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK) 2>/dev/null \
	  || $(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK) --extra-index-url $(TORCH_CPU_INDEX)
else
	awk '/^torch==/ {skip = 1; next} skip && /^[ #]/ {next} {skip = 0; print}' $(LOCK) > $(VENV)/lock-without-torch.txt
	$(PY) -m pip install -q --require-hashes --no-deps -r $(VENV)/lock-without-torch.txt
	$(PY) -m pip install -q $(TORCH)
endif
	echo '$(TORCH_CHOICE)' > $(LOCKED)

# The package itself, editable, with nothing more (its dependencies are the lock's).
$(STAMP): $(LOCKED) pyproject.toml
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (geomlib)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

# Write the lock again from pyproject.toml, keeping every pin that still satisfies it.
lock: $(LOCKED)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes --find-links $(TORCH_WHEELS) \
	  --custom-compile-command "make lock" $(foreach p,$(UPGRADE),--upgrade-package $(p)) -o $(LOCK)

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
	$(PY) -m geomlib.book.runner --profile $(PROFILE) $(if $(DEVICE),--device $(DEVICE)) $(if $(MODEL),--model $(MODEL)) $(foreach p,$(PARAMS),-p $(p))

# The paper profile of every notebook with tiny counts, on an SD-1.4-shaped random pipeline, an
# ImageNet-style folder and prompt files built under _build/paper-dry (minutes on a CPU).
paper-dry: install
	$(PY) -m geomlib.book.paper_dry $(if $(DEVICE),--device $(DEVICE))

bench: install
	$(PY) benchmarks/bench_jacobian.py
	$(PY) benchmarks/bench_partition.py
	$(PY) benchmarks/bench_slq_spectra.py --quick

clean:
	rm -rf _build .pytest_cache
