# quantrieve — set up and run. `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, alone, so nothing else can pull a different build. On this
# project's machines pip finds the CPU wheel of torch 2.13.0 locally; elsewhere pass the CPU
# index, e.g. `make TORCH_INDEX=https://download.pytorch.org/whl/cpu`, or install the torch
# you want (CUDA build on a GPU machine) into .venv before running make.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DATA_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_DIR ?= runs/demo

.PHONY: venv demo test test-fast wheel-test lint data browser clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)" \
	  $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# Fashion-MNIST from Debian when it is missing and we are allowed to install it.
data:
	@if [ ! -e "$(DATA_DIR)/train-images-idx3-ubyte.gz" ] && [ ! -e "$(DATA_DIR)/train-images-idx3-ubyte" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)); \
	  else \
	    echo "Fashion-MNIST not found in $(DATA_DIR): install the Debian package dataset-fashion-mnist (as root) or pass DATA_DIR=..."; exit 1; \
	  fi; \
	fi

# Headless Chromium and its driver for the web page's browser test (tests/test_serve_browser.py),
# from Debian when missing and we are allowed to install them; without root the test is skipped
# with its reason.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)); \
	  else \
	    echo "chromium / chromedriver not found: the browser test will be skipped (install the Debian packages chromium and chromium-driver as root)"; \
	  fi; \
	fi

demo: venv data
	$(VENV)/bin/quantrieve demo --data-dir $(DATA_DIR) --out $(DEMO_DIR)

test: venv browser
	$(PY) -m ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

# The tests without the slow ones (multi-process incl. the gathered-gradient check, browser,
# kill-and-recover, schema fuzzing, the demo, the 100-step learning run; a 30-step one stays):
# every module, about a minute of CPU (of it ~15 s imports and collection), on two processes:
# 48 s on an idle 2-core machine (69 s on one).
test-fast: venv
	$(PY) -m pytest -m "not slow" -n 2

# The wheel as users get it (.ci/wheel-smoke): build the sdist and wheel, install the wheel with
# [serve] into a fresh environment outside the tree, then train, encode, search and serve /health
# from a temporary folder (a few minutes, most of it installing torch).
wheel-test: venv
	PYTHON=$(PY) TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX="$(TORCH_INDEX)" bash .ci/wheel-smoke

lint: venv
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
