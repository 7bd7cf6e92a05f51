"""PReLU: y = x if x > 0 else w[c] * x, with one weight per channel (dim 1) or one in all.

A dense tensor's storage is [A, C, B] with B = x.stride(1) (``layout.py``), so the channel of
storage offset i is (i // B) % C. Forward is flat like the other activations. Backward walks
``layout.geometry``'s R x K matrix, writes grad_input and per-program partial sums of x * g
over the negative elements; ``backward`` then adds the partials in a fixed order (no atomics:
the same bits on every run).
"""

import functools

import torch
import triton
import triton.language as tl

from . import accumulate_dtype, cdiv
from .launch import Launch
from .layout import Geometry, geometry
from .pointwise import block_size, upcast


@triton.jit
def _forward_kernel(x_ptr, w_ptr, y_ptr, n, B, C, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        x = upcast(tl.load(x_ptr + offs))
        w = upcast(tl.load(w_ptr + (offs // B) % C))
        tl.store(y_ptr + offs, tl.where(x > 0.0, x, w * x).to(y_ptr.dtype.element_ty))
    else:
        mask = offs < n
        x = upcast(tl.load(x_ptr + offs, mask=mask, other=0.0))
        w = upcast(tl.load(w_ptr + (offs // B) % C, mask=mask, other=0.0))
        tl.store(y_ptr + offs, tl.where(x > 0.0, x, w * x).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    x_ptr,
    w_ptr,
    g_ptr,
    dx_ptr,
    part_ptr,
    R,
    K,
    C,
    ROWS_PER_PROGRAM,
    K_BLOCKS,
    CHANNEL_IS_COLUMN: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Storage viewed as R rows of K contiguous elements (``layout.geometry``).

    CHANNEL_IS_COLUMN (B == 1): K = C, the channel is the column; each program loops over
    ROWS_PER_PROGRAM rows and writes one partial per column. Otherwise K = B, the channel of
    row r is r % C, and each program writes one partial per row of its tile.
    """
    pid_r = tl.program_id(0) // K_BLOCKS  # 1-D grid: a second axis stops at 65535 blocks,
    pid_k = tl.program_id(0) % K_BLOCKS  # which one weight over 2^28 elements passes
    cols = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    col_ok = cols < K
    row0 = pid_r.to(tl.int64) * ROWS_PER_PROGRAM
    if CHANNEL_IS_COLUMN:
        w = upcast(tl.load(w_ptr + cols, mask=col_ok, other=0.0))[None, :]
        acc = tl.zeros([BLOCK_K], dtype=w.dtype)
    for r in range(0, ROWS_PER_PROGRAM, BLOCK_R):
        rows = row0 + r + tl.arange(0, BLOCK_R)
        row_ok = rows < R  # ROWS_PER_PROGRAM is a multiple of BLOCK_R
        mask = row_ok[:, None] & col_ok[None, :]
        offs = rows[:, None] * K + cols[None, :]
        x = upcast(tl.load(x_ptr + offs, mask=mask, other=0.0))
        g = upcast(tl.load(g_ptr + offs, mask=mask, other=0.0))
        if not CHANNEL_IS_COLUMN:
            w = upcast(tl.load(w_ptr + rows % C, mask=row_ok, other=0.0))[:, None]
        positive = x > 0.0
        tl.store(dx_ptr + offs, tl.where(positive, g, w * g).to(dx_ptr.dtype.element_ty), mask=mask)
        contrib = tl.where(positive, 0.0, x * g)
        if CHANNEL_IS_COLUMN:
            acc += tl.sum(contrib, axis=0)
        else:
            tl.store(part_ptr + pid_k.to(tl.int64) * R + rows, tl.sum(contrib, axis=1), mask=row_ok)
    if CHANNEL_IS_COLUMN:
        tl.store(part_ptr + pid_r.to(tl.int64) * K + cols, acc, mask=col_ok)


def channel_geometry(x: torch.Tensor, channels: int) -> tuple[int, int]:
    """(B, C) such that the channel of storage offset i is (i // B) % C."""
    if channels == 1:
        return 1, 1
    return x.stride(1), channels


@functools.lru_cache(maxsize=4096)
def _forward(n: int, b: int, c: int, dtype: torch.dtype) -> Launch:
    block = block_size(dtype)
    return Launch(_forward_kernel, (cdiv(n, block),), (n, b, c), BLOCK=block)


def forward(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
    _forward(x.numel(), *channel_geometry(x, weight.numel()), x.dtype)((x, weight, out))


@functools.lru_cache(maxsize=4096)
def _backward_plan(geo: Geometry, programs: int) -> tuple[Launch, tuple[int, ...]]:
    """The launch and the partials' shape of a geometry, worked out once per map."""
    k_blocks = cdiv(geo.cols, geo.block_k)
    if geo.column:
        # Enough row splits to fill the device, each a whole number of tiles.
        splits = max(1, min(cdiv(geo.rows, geo.block_r), programs // k_blocks))
        per_program = cdiv(cdiv(geo.rows, splits), geo.block_r) * geo.block_r
        splits = cdiv(geo.rows, per_program)
        row_programs, partials_shape = splits, (splits, geo.cols)
    else:
        row_programs, per_program = cdiv(geo.rows, geo.block_r), geo.block_r
        partials_shape = (k_blocks, geo.rows // geo.channels, geo.channels)
    launch = Launch(
        _backward_kernel, (row_programs * k_blocks,), (geo.rows, geo.cols, geo.channels, per_program, k_blocks),
        CHANNEL_IS_COLUMN=geo.column, BLOCK_R=geo.block_r, BLOCK_K=geo.block_k,
    )  # fmt: skip
    return launch, partials_shape


def backward(
    x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, grad_x: torch.Tensor, programs: int
) -> torch.Tensor:
    """Write grad_x; return grad_weight (float32, or float64 for float64 input)."""
    channels = weight.numel()
    launch, partials_shape = _backward_plan(geometry(x, channels, block_size(x.dtype)), programs)
    partials = torch.empty(partials_shape, dtype=accumulate_dtype(x), device=x.device)
    launch((x, weight, grad, grad_x, partials))
    return partials.reshape(-1, channels).sum(0)
