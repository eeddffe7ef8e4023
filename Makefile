# apihelper: two commands do all the set-up.
#   make demo   install, build the dev model, ingest the sample corpus, serve, stream an answer
#   make test   install, then run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# A second environment pinned like NVIDIA's TensorRT-LLM 1.2.x container (transformers 4.57.1,
# numpy < 2), so the service code is known to run there. torch stays the local CPU 2.13.0 build:
# the container's torch 2.9 exists here only as a multi-GB CUDA build.
COMPAT := .venv-compat
COMPAT_STAMP := $(COMPAT)/.installed-stamp
DATA ?= data

.PHONY: install install-compat prometheus-tools demo test test-compat typecheck proto clean

install: $(STAMP) prometheus-tools

# promtool and a Prometheus server for the metrics tests: Debian's package `prometheus`.
prometheus-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# torch is pinned in the same pip command: unpinned, pip would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0 -e '.[dev]'
	touch $(STAMP)

install-compat: $(COMPAT_STAMP)

$(COMPAT_STAMP): pyproject.toml
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q --upgrade pip
	$(COMPAT)/bin/python -m pip install -q torch==2.13.0 transformers==4.57.1 'numpy<2' 'pyarrow<21' \
	  'sentence-transformers>=3,<5.2' -e '.[dev]'
	touch $(COMPAT_STAMP)

demo: install
	DATA=$(DATA) BIN=$(BIN) bash deploy/demo.sh

test: install install-compat
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-compat

test-compat: install-compat prometheus-tools
	$(COMPAT)/bin/python -m pytest -q -m 'not transformers5'

typecheck: install
	$(BIN)/python -m mypy

proto: install
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) $(COMPAT) $(DATA) .pytest_cache .mypy_cache
