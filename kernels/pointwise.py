"""Shared launch machinery for the elementwise activations.

One forward and one backward kernel serve every activation: the formula is a constexpr
``@triton.jit`` function from ``formulas.FORMULAS``. Kernels walk the tensor's storage as a
flat array, which is correct for any dense layout (contiguous, channels_last, permuted) and
keeps the output in the input's layout. Full blocks are unmasked so sm_90 gets 128-bit
loads; only the last block is masked.
"""

import torch
import triton
import triton.language as tl

from .formulas import FORMULAS

# Bytes each program moves per tensor, and warps: 8 KiB per program = two 16-byte vectors
# per thread at 8 warps. From the sm_90 report (kernels/SM90_REPORT.md): at 8 warps every
# kernel and dtype has 128-bit loads, no spills and at most 84 registers (GELU fp64
# backward); at 4 warps the fp16 kernels need up to 138, at 2 warps GELU and Mish spill.
BYTES_PER_PROGRAM = 8192
NUM_WARPS = 8


def block_size(dtype: torch.dtype) -> int:
    return BYTES_PER_PROGRAM // dtype.itemsize


@triton.jit
def upcast(x):
    """Compute dtype: float64 stays float64, everything else goes to float32."""
    if x.dtype == tl.float64:
        return x
    else:
        return x.to(tl.float32)


@triton.jit
def _forward_kernel(x_ptr, y_ptr, n, FN: tl.constexpr, ALPHA: tl.constexpr, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        x = upcast(tl.load(x_ptr + offs))
        tl.store(y_ptr + offs, FN(x, ALPHA).to(y_ptr.dtype.element_ty))
    else:
        mask = offs < n
        x = upcast(tl.load(x_ptr + offs, mask=mask, other=0.0))
        tl.store(y_ptr + offs, FN(x, ALPHA).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(s_ptr, g_ptr, dx_ptr, n, FN: tl.constexpr, ALPHA: tl.constexpr, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        s = upcast(tl.load(s_ptr + offs))
        g = upcast(tl.load(g_ptr + offs))
        tl.store(dx_ptr + offs, FN(s, g, ALPHA).to(dx_ptr.dtype.element_ty))
    else:
        mask = offs < n
        s = upcast(tl.load(s_ptr + offs, mask=mask, other=0.0))
        g = upcast(tl.load(g_ptr + offs, mask=mask, other=0.0))
        tl.store(dx_ptr + offs, FN(s, g, ALPHA).to(dx_ptr.dtype.element_ty), mask=mask)


def _grid(n: int, dtype: torch.dtype) -> tuple[int]:
    return (triton.cdiv(n, block_size(dtype)),)


def forward(x: torch.Tensor, out: torch.Tensor, name: str, alpha: float) -> None:
    """out = act(x); both dense with the same strides (``out`` may be ``x``)."""
    n = x.numel()
    _forward_kernel[_grid(n, x.dtype)](
        x, out, n, FN=FORMULAS[name][0], ALPHA=alpha, BLOCK=block_size(x.dtype), num_warps=NUM_WARPS
    )


def backward(saved: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, name: str, alpha: float) -> None:
    """out = d act / dx * grad; all three dense with the same strides."""
    n = saved.numel()
    _backward_kernel[_grid(n, saved.dtype)](
        saved, grad, out, n, FN=FORMULAS[name][1], ALPHA=alpha, BLOCK=block_size(saved.dtype), num_warps=NUM_WARPS
    )
