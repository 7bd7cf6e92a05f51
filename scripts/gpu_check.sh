#!/usr/bin/env bash
# make gpu-check: the GPU tests, a profile of ours, the quick benchmark (CUDA-event timing: the
# host's cost shows where it exceeds the kernels'), then BatchNorm2d + activation again timed
# from CUDA graphs (device time alone), into $RESULTS_DIR, on a machine with torch, triton and a
# CUDA GPU and no network. Every part runs even if one fails. Each has a hard wall-clock cap
# (SIGINT first, so pytest prints its summary and the benchmark writes what it measured); the
# benchmark also stops starting cases at its own budget. About 6 minutes on one H200. The plots
# and the second run go into two archives so that RESULTS_DIR holds 8 files (what the lent GPU
# machine returns).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RESULTS_DIR=${RESULTS_DIR:-results}
GPU_TEST_S=${GPU_TEST_S:-120}
GPU_BENCH_S=${GPU_BENCH_S:-230}
mkdir -p "$RESULTS_DIR/cudagraph"
"$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . || exit 1

# pytest-xdist and pytest-timeout are on the GPU image: compile kernels in 8 processes, and
# a hung test cannot eat the machine's lease.
args=()
"$PYTHON" -c "import xdist" 2>/dev/null && args+=(-n 8)
"$PYTHON" -c "import pytest_timeout" 2>/dev/null && args+=(--timeout 100)

status=0
timeout -s INT -k 20 "$GPU_TEST_S" "$PYTHON" -m pytest -q -rfE -p no:cacheprovider -m gpu "${args[@]}" \
    tests 2>&1 | tee "$RESULTS_DIR/gpu-tests.log" || status=1
timeout -s INT -k 10 120 "$PYTHON" -m benchmarks.profile --out "$RESULTS_DIR/profile.txt" 2>&1 | tail -3 || status=1
timeout -s INT -k 20 $((GPU_BENCH_S + 100)) "$PYTHON" -m benchmarks --quick --time-budget "$GPU_BENCH_S" \
    --out "$RESULTS_DIR" 2>&1 | tee "$RESULTS_DIR/bench.log" || status=1
timeout -s INT -k 20 120 "$PYTHON" -m benchmarks --quick --sections bn_act --activations silu,relu,gelu \
    --timer cudagraph --time-budget 90 --out "$RESULTS_DIR/cudagraph" >"$RESULTS_DIR/cudagraph/bench.log" 2>&1 || status=1
cd "$RESULTS_DIR" || exit 1
if ls ./*.png >/dev/null 2>&1; then tar czf plots.tgz ./*.png && rm -f ./*.png; fi
tar czf cudagraph.tgz cudagraph && rm -rf cudagraph
exit $status
