# apihelper: two commands do all the set-up.
#   make demo   install, build the dev model, ingest the sample corpus, serve, stream an answer
#   make test   install, then run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA ?= data

.PHONY: install prometheus-tools demo test typecheck proto clean

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

demo: install
	DATA=$(DATA) BIN=$(BIN) bash deploy/demo.sh

test: install
	$(BIN)/python -m pytest -q

typecheck: install
	$(BIN)/python -m mypy

proto: install
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache .mypy_cache
