"""Test set-up: Triton's interpreter runs the kernels on CPU tensors.

TRITON_INTERPRET is read when ``@triton.jit`` decorates a function, triton's own library
functions included, so it is set here and triton imported at once, before anything else
imports it (the first custom-op call imports torch._dynamo, which imports triton). Tests
that set it to 0 later get the PyTorch path of the ops, which reads it at call time. With a
GPU present the same tests also run on CUDA tensors (the ``device`` fixture, marked
``gpu``, which ``make gpu-check`` selects) and kernels compile for the GPU instead.
"""

import os

import torch

HAVE_CUDA = torch.cuda.is_available()
os.environ["TRITON_INTERPRET"] = "0" if HAVE_CUDA else os.environ.get("TRITON_INTERPRET", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics must never reach the network in tests

import pytest  # noqa: E402

try:
    import triton  # noqa: E402, F401
except ImportError:  # a torch build without triton: only the PyTorch paths can run
    pass

DEVICES = ["cpu"] + (["cuda"] if HAVE_CUDA else [])


@pytest.fixture(params=[pytest.param(d, marks=pytest.mark.gpu) if d == "cuda" else d for d in DEVICES])
def device(request) -> str:
    """Every kernel test runs on CPU (interpreter, or PyTorch ops) and, when present, on CUDA."""
    return request.param


@pytest.fixture
def pytorch_path(monkeypatch):
    """CPU ops compute with PyTorch ops: the interpreter is far too slow for whole detectors."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
