# make bench: the benchmark harness (CPU part without a GPU).  make test: lint and tests.
# make gpu-check: on a GPU machine with torch and triton installed and no network.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RESULTS_DIR ?= results

.PHONY: setup lint test bench gpu-check

$(BIN)/.installed: setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev,ultralytics]"
	touch $@

setup: $(BIN)/.installed

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# The GPU tests, then the quick benchmark (scripts/gpu_check.sh says how each is capped).
gpu-check:
	PYTHON=$(PYTHON) RESULTS_DIR=$(RESULTS_DIR) bash scripts/gpu_check.sh
