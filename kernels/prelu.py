"""PReLU: y = x if x > 0 else w[c] * x, with one weight per channel (dim 1) or one in all.

A dense tensor's storage is a contiguous array [A, C, B] whatever its layout, with
B = x.stride(1) (NCHW: B = H*W; channels_last: B = 1), so the channel of storage offset i is
(i // B) % C. Forward is flat like the other activations. Backward writes grad_input and
per-program partial sums of x * g over the negative elements; ``backward`` then adds the
partials in a fixed order (no atomics: the same bits on every run).
"""

import torch
import triton
import triton.language as tl

from . import accumulate_dtype
from .pointwise import NUM_WARPS, block_size, upcast


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
    CHANNEL_IS_COLUMN: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Storage viewed as R rows of K contiguous elements.

    CHANNEL_IS_COLUMN (B == 1): K = C, the channel is the column; each program loops over
    ROWS_PER_PROGRAM rows and writes one partial per column. Otherwise K = B, the channel of
    row r is r % C, and each program writes one partial per row of its tile.
    """
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
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


def forward(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
    n = x.numel()
    b, c = channel_geometry(x, weight.numel())
    block = block_size(x.dtype)
    _forward_kernel[(triton.cdiv(n, block),)](x, weight, out, n, b, c, BLOCK=block, num_warps=NUM_WARPS)


def backward(
    x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, grad_x: torch.Tensor, programs: int
) -> torch.Tensor:
    """Write grad_x; return grad_weight (float32, or float64 for float64 input)."""
    n = x.numel()
    b, c = channel_geometry(x, weight.numel())
    acc_dtype = accumulate_dtype(x)
    tile = block_size(x.dtype)
    if b == 1 and c > 1:
        rows, k = n // c, c
        block_k = min(triton.next_power_of_2(k), tile)
        block_r = max(1, tile // block_k)
        k_blocks = triton.cdiv(k, block_k)
        # Enough row splits to fill the device, each a whole number of tiles.
        splits = max(1, min(triton.cdiv(rows, block_r), programs // k_blocks))
        per_program = triton.cdiv(triton.cdiv(rows, splits), block_r) * block_r
        splits = triton.cdiv(rows, per_program)
        partials = torch.empty((splits, k), dtype=acc_dtype, device=x.device)
        grid = (splits, k_blocks)
    else:
        k = b if c > 1 else n
        rows = n // k
        block_k = min(triton.next_power_of_2(k), tile)
        block_r = max(1, tile // block_k)
        per_program = block_r
        k_blocks = triton.cdiv(k, block_k)
        partials = torch.empty((k_blocks, rows // c, c), dtype=acc_dtype, device=x.device)
        grid = (triton.cdiv(rows, block_r), k_blocks)
    _backward_kernel[grid](
        x,
        weight,
        grad,
        grad_x,
        partials,
        rows,
        k,
        c,
        per_program,
        CHANNEL_IS_COLUMN=(b == 1 and c > 1),
        BLOCK_R=block_r,
        BLOCK_K=block_k,
        num_warps=NUM_WARPS,
    )
    return partials.reshape(-1, c).sum(0)
