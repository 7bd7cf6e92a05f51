"""Shared launch machinery for the elementwise activations.

One forward and one backward kernel serve every activation: the formula is a constexpr
``@triton.jit`` function of ``formulas`` (``formulas.pair``). Kernels walk the tensor's storage as a
flat array, which is correct for any dense layout (contiguous, channels_last, permuted) and
keeps the output in the input's layout. Full blocks are unmasked so sm_90 gets 128-bit
loads; only the last block is masked.
"""

import functools

import torch
import triton
import triton.language as tl

from . import cdiv
from .formulas import pair
from .launch import Launch

# Bytes each program moves per tensor, and warps: 8 KiB per program = two 16-byte vectors
# per thread at 8 warps. From the sm_90 report (kernels/SM90_REPORT.md): at 8 warps every
# kernel and dtype has 128-bit loads, no spills and at most 84 registers (Mish fp64
# backward); at 4 warps the fp16 kernels need up to 138, at 2 warps GELU and Mish spill.
BYTES_PER_PROGRAM = 8192


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


# The bitmask variant, for activations whose derivative takes two values, 1 or ALPHA (ReLU,
# ReLU6, LeakyReLU): forward also writes one bit per element, set where the derivative is 1,
# eight to a byte (bit i of byte k is element 8k + i of the storage), and backward reads the
# bits instead of a full tensor: 1/16 of a bfloat16 map kept for backward.


@triton.jit
def _bits(s, valid, DERIV: tl.constexpr, ALPHA: tl.constexpr, BLOCK: tl.constexpr):
    """Pack where DERIV(s, 1) == 1 (and valid) into BLOCK // 8 bytes, as int32."""
    bit = (DERIV(s, tl.full(s.shape, 1.0, s.dtype), ALPHA) == 1.0) & valid
    bits = tl.reshape(bit.to(tl.int32), [BLOCK // 8, 8])
    return tl.sum(bits << tl.arange(0, 8)[None, :], axis=1)


@triton.jit
def _mask_forward_kernel(
    x_ptr,
    y_ptr,
    m_ptr,
    n,
    FN: tl.constexpr,
    DERIV: tl.constexpr,
    FROM_OUTPUT: tl.constexpr,
    ALPHA: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """y = FN(x) and the bits of DERIV(s) == 1, s the output if FROM_OUTPUT else the input
    (what DERIV expects: the row's ``saves_output``)."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    bytes_at = start // 8 + tl.arange(0, BLOCK // 8)
    if start + BLOCK <= n:
        x = upcast(tl.load(x_ptr + offs))
        y = FN(x, ALPHA)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty))
        bits = _bits(y if FROM_OUTPUT else x, offs >= 0, DERIV, ALPHA, BLOCK)
        tl.store(m_ptr + bytes_at, bits.to(tl.uint8))
    else:
        mask = offs < n
        x = upcast(tl.load(x_ptr + offs, mask=mask, other=0.0))
        y = FN(x, ALPHA)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
        bits = _bits(y if FROM_OUTPUT else x, mask, DERIV, ALPHA, BLOCK)
        tl.store(m_ptr + bytes_at, bits.to(tl.uint8), mask=bytes_at < (n + 7) // 8)


@triton.jit
def _mask_backward_kernel(m_ptr, g_ptr, dx_ptr, n, ALPHA: tl.constexpr, BLOCK: tl.constexpr):
    """dx = g where the bit is set, else ALPHA * g (0 for ALPHA == 0, as torch: not 0 * inf)."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    bytes_at = start // 8 + tl.arange(0, BLOCK // 8)
    full = start + BLOCK <= n
    if full:
        packed = tl.load(m_ptr + bytes_at).to(tl.int32)
        g = upcast(tl.load(g_ptr + offs))
    else:
        packed = tl.load(m_ptr + bytes_at, mask=bytes_at < (n + 7) // 8, other=0).to(tl.int32)
        g = upcast(tl.load(g_ptr + offs, mask=offs < n, other=0.0))
    bit = tl.reshape((packed[:, None] >> tl.arange(0, 8)[None, :]) & 1, [BLOCK]) != 0
    if ALPHA == 0.0:
        dx = tl.where(bit, g, 0.0)
    else:
        dx = tl.where(bit, g, g * ALPHA)
    if full:
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty))
    else:
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=offs < n)


# Each launch is built once per map (``Launch``: grid, size and constexprs decided), keyed by the
# activation's name, not its formula: hashing a JITFunction takes a lock in Triton's cache_key.


def _grid(n: int, itemsize: int) -> tuple[tuple[int], int]:
    """(grid, BLOCK) over ``n`` elements of ``itemsize`` bytes."""
    block = BYTES_PER_PROGRAM // itemsize
    return (cdiv(n, block),), block


@functools.lru_cache(maxsize=4096)
def _forward(n: int, itemsize: int, name: str, alpha: float) -> Launch:
    grid, block = _grid(n, itemsize)
    return Launch(_forward_kernel, grid, (n,), FN=pair(name)[0], ALPHA=alpha, BLOCK=block)


@functools.lru_cache(maxsize=4096)
def _backward(n: int, itemsize: int, name: str, alpha: float) -> Launch:
    grid, block = _grid(n, itemsize)
    return Launch(_backward_kernel, grid, (n,), FN=pair(name)[1], ALPHA=alpha, BLOCK=block)


@functools.lru_cache(maxsize=4096)
def _mask_forward(n: int, itemsize: int, name: str, alpha: float, from_output: bool) -> Launch:
    (grid, block), (fwd, bwd) = _grid(n, itemsize), pair(name)
    constexprs = dict(FN=fwd, DERIV=bwd, FROM_OUTPUT=from_output, ALPHA=alpha, BLOCK=block)
    return Launch(_mask_forward_kernel, grid, (n,), **constexprs)


@functools.lru_cache(maxsize=4096)
def _mask_backward(n: int, itemsize: int, alpha: float) -> Launch:
    grid, block = _grid(n, itemsize)
    return Launch(_mask_backward_kernel, grid, (n,), ALPHA=alpha, BLOCK=block)


def forward(x: torch.Tensor, out: torch.Tensor, name: str, alpha: float) -> None:
    """out = act(x); both dense with the same strides (``out`` may be ``x``)."""
    _forward(x.numel(), x.itemsize, name, alpha)((x, out))


def backward(saved: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, name: str, alpha: float) -> None:
    """out = d act / dx * grad; all three dense with the same strides."""
    _backward(saved.numel(), saved.itemsize, name, alpha)((saved, grad, out))


def mask_forward(x: torch.Tensor, out: torch.Tensor, bits: torch.Tensor, name: str, alpha: float, from_output: bool):
    """out = act(x) and ``bits`` (uint8, ``(n + 7) // 8``) where d act / dx is 1."""
    _mask_forward(x.numel(), x.itemsize, name, alpha, from_output)((x, out, bits))


def mask_backward(bits: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, alpha: float) -> None:
    """out = grad where the bit is set, else alpha * grad; ``grad`` and ``out`` share strides."""
    _mask_backward(grad.numel(), grad.itemsize, alpha)((bits, grad, out))
