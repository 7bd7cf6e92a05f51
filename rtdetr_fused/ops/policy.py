"""When an eager call runs PyTorch's own op instead of our kernel: the one place that decides.

For SiLU, Hardswish, ReLU and GELU, PyTorch's kernels run as fast as ours on the H200
(2026-11-30: SiLU, Hardswish and ReLU at 93-100% of a device-to-device copy, like ours; GELU
forward at 72% against our 69%) and their backward saves what ours saves (the rows'
``torch_as_fast`` and ``torch_saves_output``), so ours can only win where the device, not the
host, sets the pace: when the map is large enough that its forward+backward on the device
outlasts our host cost. Below that size the native op runs (same results; the same tensor
saved). Mish and PReLU (1.6x and 1.4x eager on the device), ReLU6 and LeakyReLU (which save
less with ours), bit masks, in-place calls and BatchNorm+activation always run ours.

On CPU tensors (no kernels) PyTorch's op runs wherever it saves what ours saves; under Triton's
interpreter ours always runs (it is how the kernels are tested).
"""

import os

import torch

from . import common

COPY_BYTES_PER_US = 4.2e6
"""H200 device-to-device copy, bytes moved (read + write) per microsecond (benchmarks/results,
2026-11-30)."""
PASSES = 5
"""Full-tensor passes of an activation's forward+backward: read x, write y; read x and the
gradient, write grad_input."""
HOST_US = 150.0
"""Our host cost per forward+backward on the H200's host: torch.nn's measured 73 us there,
times the 2.0x our Python Function may cost over torch.nn's (the harness's ``host`` section
measures the ratio; the floor of any Python Function is 1.7x)."""
NATIVE_BELOW = int(os.environ.get("RTDETR_FUSED_NATIVE_BELOW", HOST_US * COPY_BYTES_PER_US / PASSES))
"""Bytes of a map below which the native op runs (126 MB by default; the environment variable
``RTDETR_FUSED_NATIVE_BELOW`` or this attribute overrides it, 0 turns the native route off)."""


def native(x: torch.Tensor, as_fast: bool, same_saved: bool) -> bool:
    """Whether an out-of-place call on ``x`` runs PyTorch's op: ``as_fast`` where PyTorch's
    kernels are as fast as ours, ``same_saved`` where its backward saves what ours does."""
    if x.is_cuda or common.STUBBED:
        return as_fast and same_saved and x.numel() * x.element_size() < NATIVE_BELOW
    return same_saved and not common.interpreting()


def describe() -> dict[str, object]:
    """The policy's figures, for the harness's report."""
    return {
        "native_below_bytes": NATIVE_BELOW,
        "host_us": HOST_US,
        "copy_bytes_per_us": COPY_BYTES_PER_US,
        "passes": PASSES,
    }
