"""Triton kernels for rtdetr_fused, installed as ``rtdetr_fused.kernels``.

The kernel modules import triton; ``rtdetr_fused`` imports them only when a kernel is
launched, so the package still works (with PyTorch ops) where triton is missing. This
package itself imports only torch.
"""

import torch


def accumulate_dtype(x: torch.Tensor) -> torch.dtype:
    """The compute dtype, host side (``pointwise.upcast`` is the kernels' twin): float64 for
    float64 tensors, float32 for the rest."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def cdiv(a: int, b: int) -> int:
    """``triton.cdiv`` for the host: triton's goes through its constexpr-function wrapper
    (about 1 us a call)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """``triton.next_power_of_2`` for the host, for n >= 1."""
    return 1 << (n - 1).bit_length()
