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

gpu-check:
	mkdir -p $(RESULTS_DIR)
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	set -o pipefail; $(PYTHON) -m pytest -q -m gpu tests 2>&1 | tee $(RESULTS_DIR)/gpu-tests.log
	set -o pipefail; $(PYTHON) -m benchmarks --quick --time-budget 270 --out $(RESULTS_DIR) 2>&1 | tee $(RESULTS_DIR)/bench.log
