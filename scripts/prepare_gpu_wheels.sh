#!/usr/bin/env bash
# Wheels the GPU machine lacks for the benchmark's model and training sections, into .whl/
# (ignored by git; name it in the device run's `carry`).
#
# The H200 image has Python 3.12 with torch, torchvision, numpy, opencv-python-headless,
# pyyaml, requests, scipy, psutil, pillow, matplotlib, pandas and tqdm, but no network and no
# ultralytics. Of ultralytics' other requirements, the code paths the benchmark uses import
# ultralytics-thop, polars, ultralytics-platform and pynvml only lazily (checked by blocking
# them: models build, take a loss and a backward); thop is carried anyway since it is tiny, and
# opencv-python's cv2 is provided by the headless build. On the device, before the benchmark:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PYTHON=${PYTHON:-python3}
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]/#/--platform=}" -d "$DEST" \
    ultralytics==8.4.190 ultralytics-thop==2.2.3
ls -l "$DEST"
