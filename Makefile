# make bench: the benchmark harness (CPU part without a GPU).  make test: lint and tests.
# make gpu-check: on a GPU machine with torch and triton installed and no network.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RESULTS_DIR ?= results

.PHONY: setup lint test bench gpu-check

# Sizes as installed on Linux x86_64 (2.14.1+cu130): torch 1.2 GB, nvidia-* 3.2 GB, triton 0.9 GB.
$(BIN)/.installed: setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "== $(VENV): torch 2.14.1 and torchvision 0.29.1, the CUDA build with its nvidia-* and triton"
	@echo "== wheels: several GB to download, about 5.5 GB on disk; minutes on a slow link (pip shows each file)"
	$(BIN)/pip install --disable-pip-version-check --progress-bar on "torch==2.14.1" "torchvision==0.29.1"
	@echo "== $(VENV): this package (editable), ultralytics, ruff, pytest and their dependencies: under 1 GB"
	$(BIN)/pip install --disable-pip-version-check --progress-bar on -e ".[dev,ultralytics]"
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
