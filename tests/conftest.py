"""Test set-up: Triton's interpreter runs the kernels on CPU tensors.

TRITON_INTERPRET is read when ``@triton.jit`` decorates a kernel, so it is set here, before
anything imports the package. With a GPU present the same tests also run on CUDA tensors
(the ``device`` fixture); ``make gpu-check`` selects those with ``-m gpu``.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
if torch.cuda.is_available():
    # On a GPU machine the kernels compile for the device; the interpreter would run them on CPU.
    os.environ["TRITON_INTERPRET"] = "0"


@pytest.fixture(params=[pytest.param(d, marks=pytest.mark.gpu) if d == "cuda" else d for d in DEVICES])
def device(request) -> str:
    """Every kernel test runs on CPU (interpreter, or PyTorch ops) and, when present, on CUDA."""
    return request.param
