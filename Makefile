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

# pytest-xdist and pytest-timeout are on the GPU image: compile kernels in 4 processes, and a
# hung test cannot eat the machine's lease.
GPU_PYTEST_ARGS ?= $(shell $(PYTHON) -c "import xdist" 2>/dev/null && echo -n 4) \
	$(shell $(PYTHON) -c "import pytest_timeout" 2>/dev/null && echo --timeout 240)

# Both parts run even if one fails; the plots go into one plots.tgz so that RESULTS_DIR holds
# at most 8 files (what the lent GPU machine sends back).
gpu-check:
	mkdir -p $(RESULTS_DIR)
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	set -o pipefail; status=0; \
	$(PYTHON) -m pytest -q -m gpu $(GPU_PYTEST_ARGS) tests 2>&1 | tee $(RESULTS_DIR)/gpu-tests.log || status=1; \
	$(PYTHON) -m benchmarks --quick --time-budget 270 --out $(RESULTS_DIR) 2>&1 | tee $(RESULTS_DIR)/bench.log || status=1; \
	cd $(RESULTS_DIR) && if ls *.png >/dev/null 2>&1; then tar czf plots.tgz *.png && rm -f *.png; fi; \
	exit $$status
