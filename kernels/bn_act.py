"""Training-mode BatchNorm2d fused with an activation: batch statistics, normalize + activation,
and a backward that recomputes the BN output instead of saving it.

The kernels see a dense 4-D tensor's storage as the R x K matrix of ``layout.py``, in which
a channel is whole columns (COLUMN, channels_last) or whole rows (NCHW).

Reductions (the statistics in forward, two sums in backward) run in two stages, without
atomics, so results are the same bits on every run and small C still fills the GPU: each
program walks a strip (PER rows in COLUMN, else PER columns) and writes one partial per
channel; a fixed-order pass combines the partials. Statistics use Welford per tile slot, then
Chan's merge across slots and partials: no sum of squares, so a large mean cannot cancel the
variance. Everything is computed in float32 (float64 for float64 input).

The activation is a constexpr ``FN`` from ``formulas.pair``: every activation's, PReLU's
(LeakyReLU's formula with a per-channel slope) and identity's (BatchNorm alone). Backward
formulas get the BN output z, which works for every formula, including those written for the
activation's output (ReLU, ReLU6, LeakyReLU with a slope >= 0 see the same sign and range in z).
"""

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import accumulate_dtype, cdiv, next_power_of_2
from .formulas import pair
from .launch import Launch
from .layout import Geometry, geometry_of
from .pointwise import block_size, upcast

# Elements per reduction tile: the Welford loop keeps three tiles (x, mean, M2) live.
REDUCE_TILE = 2048
FINALIZE_TILE = 4096
CHANNEL_PROGRAM_MAX = 16384
"""Largest N * H * W reduced by one program per channel (NCHW-like layouts); beyond it the
split reduction, which spreads a channel over many programs."""


@triton.jit
def _tile(rows, cols, R, K):
    """Offsets and mask of the tile rows x cols of the [R, K] storage matrix."""
    offs = rows[:, None] * K + cols[None, :]
    return offs, (rows < R)[:, None] & (cols < K)[None, :]


@triton.jit
def _per_channel(ptr, rows, cols, C, COLUMN: tl.constexpr):
    """A per-channel vector broadcast against the tile: one value per column, or per row."""
    if COLUMN:
        return upcast(tl.load(ptr + cols, mask=cols < C, other=0.0))[None, :]
    else:
        return upcast(tl.load(ptr + rows % C))[:, None]


@triton.jit
def _alpha(a_ptr, rows, cols, C, ALPHA: tl.constexpr, PRELU: tl.constexpr, COLUMN: tl.constexpr):
    """The formula's slope: PReLU's per-channel weight, else the constexpr ALPHA."""
    if PRELU:
        return _per_channel(a_ptr, rows, cols, C, COLUMN)
    else:
        return ALPHA


@triton.jit
def _bn(x, mean, invstd, w, b):
    """(xhat, z): the normalized input and the BN output, in the one order every kernel uses
    (a recomputed output has the bits of the original)."""
    xhat = (x - mean) * invstd
    return xhat, xhat * w + b


@triton.jit
def _normalize(x, rows, cols, mean_ptr, invstd_ptr, w_ptr, b_ptr, C, COLUMN: tl.constexpr):
    """``_bn`` with per-channel vectors broadcast against the tile."""
    return _bn(
        x,
        _per_channel(mean_ptr, rows, cols, C, COLUMN),
        _per_channel(invstd_ptr, rows, cols, C, COLUMN),
        _per_channel(w_ptr, rows, cols, C, COLUMN),
        _per_channel(b_ptr, rows, cols, C, COLUMN),
    )


@triton.jit
def _strip_tile(fixed, t, COLUMN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Rows and columns of a reduction tile: COLUMN walks rows t.. under a fixed column block,
    otherwise columns t.. under a fixed row block."""
    if COLUMN:
        return t + tl.arange(0, BLOCK_R), fixed * BLOCK_K + tl.arange(0, BLOCK_K)
    else:
        return fixed * BLOCK_R + tl.arange(0, BLOCK_R), t + tl.arange(0, BLOCK_K)


@triton.jit
def _strip_sum(v, COLUMN: tl.constexpr):
    """Sum over a strip's slots: one value per channel of the program."""
    return tl.sum(v, axis=0 if COLUMN else 1)


@triton.jit
def _store_partial(ptr, v, split, rows, cols, R, K, COLUMN: tl.constexpr):
    """Partials form a [splits, K] (COLUMN) or [splits, R] array: [S, C] per channel either way."""
    if COLUMN:
        tl.store(ptr + split * K + cols, v, mask=cols < K)
    else:
        tl.store(ptr + split * R + rows, v, mask=rows < R)


@triton.jit
def _rsqrt(v):
    """1 / sqrt(v) with a correctly rounded square root (sqrt_rn is float32 only)."""
    if v.dtype == tl.float64:
        return 1.0 / tl.sqrt(v)
    else:
        return 1.0 / tl.sqrt_rn(v)


@triton.jit
def _update_running(rm_ptr, rv_ptr, offs, mask, mean, m2, n, factor):
    """running = factor * batch + (1 - factor) * running; the variance unbiased, m2 / (n - 1)."""
    rm = upcast(tl.load(rm_ptr + offs, mask=mask, other=0.0))
    rv = upcast(tl.load(rv_ptr + offs, mask=mask, other=0.0))
    tl.store(rm_ptr + offs, (factor * mean + (1.0 - factor) * rm).to(rm_ptr.dtype.element_ty), mask=mask)
    tl.store(rv_ptr + offs, (factor * (m2 / (n - 1.0)) + (1.0 - factor) * rv).to(rv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _stats_kernel(
    x_ptr,
    part_ptr,
    R,
    K,
    PER,
    PLANE,
    COLUMN: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Partial mean (plane 0) and M2 (plane 1) of each channel over one strip."""
    acc = part_ptr.dtype.element_ty
    fixed = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    start = split * PER
    mean = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc)
    m2 = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc)
    count = tl.zeros([BLOCK_R, 1] if COLUMN else [1, BLOCK_K], dtype=acc)
    for t in range(0, PER, BLOCK_R if COLUMN else BLOCK_K):  # the last strip may run past the end: masked
        rows, cols = _strip_tile(fixed, start + t, COLUMN, BLOCK_R, BLOCK_K)
        offs, mask = _tile(rows, cols, R, K)
        x = upcast(tl.load(x_ptr + offs, mask=mask, other=0.0))
        if COLUMN:
            count += (rows < R).to(acc)[:, None]
        else:
            count += (cols < K).to(acc)[None, :]
        delta = x - mean
        mean += tl.where(mask, delta * (1.0 / tl.maximum(count, 1.0)), 0.0)
        m2 += tl.where(mask, delta * (x - mean), 0.0)
    # Chan's merge of the slots; slots that saw nothing have count 0 and add nothing.
    rows, cols = _strip_tile(fixed, start, COLUMN, BLOCK_R, BLOCK_K)
    n = _strip_sum(count, COLUMN)
    strip_mean = _strip_sum(count * mean, COLUMN) / n
    if COLUMN:
        d = mean - strip_mean[None, :]
    else:
        d = mean - strip_mean[:, None]
    strip_m2 = _strip_sum(m2 + count * d * d, COLUMN)
    _store_partial(part_ptr, strip_mean, split, rows, cols, R, K, COLUMN)
    _store_partial(part_ptr + PLANE, strip_m2, split, rows, cols, R, K, COLUMN)


@triton.jit
def _finalize_kernel(
    part_ptr,
    mean_ptr,
    invstd_ptr,
    rm_ptr,
    rv_ptr,
    eps: tl.float64,
    factor: tl.float64,
    C,
    S,
    PLANE,
    PER,
    DIV,
    TOTAL,
    N,
    UPDATE: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Merge the S partials of each channel in a fixed order: mean, 1 / sqrt(var + eps), and
    the running statistics (unbiased variance) when UPDATE. Partial s of a channel covers
    min(PER, TOTAL - (s // DIV) * PER) elements. ``eps`` and ``factor`` are float64 arguments
    (a float argument is float32 by default, which float64 BatchNorm notices; seen on the
    H200): the few per-channel values here are computed in float64, then stored."""
    acc = part_ptr.dtype.element_ty
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    n = tl.cast(N, acc)
    total = tl.zeros([BLOCK_C], dtype=acc)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = (s < S)[:, None] & col_ok[None, :]
        count = tl.minimum(PER, TOTAL - (s // DIV) * PER).to(acc)[:, None]
        part_mean = tl.load(part_ptr + s[:, None] * C + cols[None, :], mask=mask, other=0.0)
        total += tl.sum(count * part_mean, axis=0)
    mean = total / n
    m2 = tl.zeros([BLOCK_C], dtype=acc)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = (s < S)[:, None] & col_ok[None, :]
        count = tl.minimum(PER, TOTAL - (s // DIV) * PER).to(acc)[:, None]
        offs = s[:, None] * C + cols[None, :]
        d = tl.load(part_ptr + offs, mask=mask, other=0.0) - mean[None, :]
        part_m2 = tl.load(part_ptr + PLANE + offs, mask=mask, other=0.0)
        m2 += tl.sum(tl.where(mask, part_m2 + count * d * d, 0.0), axis=0)
    tl.store(mean_ptr + cols, mean, mask=col_ok)
    tl.store(invstd_ptr + cols, _rsqrt(m2 / n + eps), mask=col_ok)
    if UPDATE:
        _update_running(rm_ptr, rv_ptr, cols, col_ok, mean, m2, n, factor)


@triton.jit
def _forward_kernel(
    x_ptr,
    y_ptr,
    mean_ptr,
    invstd_ptr,
    w_ptr,
    b_ptr,
    a_ptr,
    R,
    K,
    C,
    K_BLOCKS,
    FN: tl.constexpr,
    ALPHA: tl.constexpr,
    PRELU: tl.constexpr,
    COLUMN: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """y = act((x - mean) * invstd * w + b), one tile per program."""
    pid = tl.program_id(0)
    rows = (pid // K_BLOCKS).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (pid % K_BLOCKS).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs, mask = _tile(rows, cols, R, K)
    x = upcast(tl.load(x_ptr + offs, mask=mask, other=0.0))
    _, z = _normalize(x, rows, cols, mean_ptr, invstd_ptr, w_ptr, b_ptr, C, COLUMN)
    y = FN(z, _alpha(a_ptr, rows, cols, C, ALPHA, PRELU, COLUMN))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_reduce_kernel(
    x_ptr,
    g_ptr,
    part_ptr,
    mean_ptr,
    invstd_ptr,
    w_ptr,
    b_ptr,
    a_ptr,
    R,
    K,
    C,
    PER,
    PLANE,
    FN: tl.constexpr,
    ALPHA: tl.constexpr,
    PRELU: tl.constexpr,
    COLUMN: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Partial sums over one strip of gz = g * act'(z) (plane 0, grad of the BN bias), gz * xhat
    (plane 1, grad of the BN weight) and, for PReLU, z * g where z <= 0 (plane 2)."""
    acc = part_ptr.dtype.element_ty
    fixed = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    start = split * PER
    rows, cols = _strip_tile(fixed, start, COLUMN, BLOCK_R, BLOCK_K)
    alpha = _alpha(a_ptr, rows, cols, C, ALPHA, PRELU, COLUMN)  # channels are fixed along the strip
    sum_gz = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc)
    sum_gzx = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc)
    sum_a = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc)
    for t in range(0, PER, BLOCK_R if COLUMN else BLOCK_K):  # the last strip may run past the end: masked
        rows, cols = _strip_tile(fixed, start + t, COLUMN, BLOCK_R, BLOCK_K)
        offs, mask = _tile(rows, cols, R, K)
        x = upcast(tl.load(x_ptr + offs, mask=mask, other=0.0))
        g = upcast(tl.load(g_ptr + offs, mask=mask, other=0.0))  # g = 0 makes gz = 0 off the tensor
        xhat, z = _normalize(x, rows, cols, mean_ptr, invstd_ptr, w_ptr, b_ptr, C, COLUMN)
        gz = FN(z, g, alpha)
        sum_gz += gz
        sum_gzx += gz * xhat
        if PRELU:
            sum_a += tl.where(z > 0.0, 0.0, z * g)
    _store_partial(part_ptr, _strip_sum(sum_gz, COLUMN), split, rows, cols, R, K, COLUMN)
    _store_partial(part_ptr + PLANE, _strip_sum(sum_gzx, COLUMN), split, rows, cols, R, K, COLUMN)
    if PRELU:
        _store_partial(part_ptr + 2 * PLANE, _strip_sum(sum_a, COLUMN), split, rows, cols, R, K, COLUMN)


@triton.jit
def _backward_kernel(
    x_ptr,
    g_ptr,
    dx_ptr,
    mean_ptr,
    invstd_ptr,
    w_ptr,
    b_ptr,
    a_ptr,
    sums_ptr,
    gw_ptr,
    gb_ptr,
    ga_ptr,
    R,
    K,
    C,
    K_BLOCKS,
    N,
    FN: tl.constexpr,
    ALPHA: tl.constexpr,
    PRELU: tl.constexpr,
    COLUMN: tl.constexpr,
    TRAINING: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dx = w * invstd * (gz - [sum gz + xhat * sum gz xhat] / N), the bracket only when the
    statistics came from this batch (TRAINING); sums_ptr holds the sums, [2 or 3, C], which the
    programs holding a channel's first elements also store as its parameter grads."""
    pid = tl.program_id(0)
    rows = (pid // K_BLOCKS).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (pid % K_BLOCKS).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs, mask = _tile(rows, cols, R, K)
    x = upcast(tl.load(x_ptr + offs, mask=mask, other=0.0))
    g = upcast(tl.load(g_ptr + offs, mask=mask, other=0.0))
    xhat, z = _normalize(x, rows, cols, mean_ptr, invstd_ptr, w_ptr, b_ptr, C, COLUMN)
    gz = FN(z, g, _alpha(a_ptr, rows, cols, C, ALPHA, PRELU, COLUMN))
    if TRAINING:
        n = tl.cast(N, xhat.dtype)
        mean_gz = _per_channel(sums_ptr, rows, cols, C, COLUMN) / n
        mean_gzx = _per_channel(sums_ptr + C, rows, cols, C, COLUMN) / n
        gz = gz - mean_gz - xhat * mean_gzx
    scale = _per_channel(w_ptr, rows, cols, C, COLUMN) * _per_channel(invstd_ptr, rows, cols, C, COLUMN)
    tl.store(dx_ptr + offs, (gz * scale).to(dx_ptr.dtype.element_ty), mask=mask)
    if COLUMN:  # a channel is a column: the first row block holds it first
        first, channels = pid // K_BLOCKS == 0, cols
    else:  # a channel is rows c, C + c, ...: row c, in the first column block
        first, channels = pid % K_BLOCKS == 0, rows
    ok = first & (channels < C)
    tl.store(gb_ptr + channels, tl.load(sums_ptr + channels, mask=ok).to(gb_ptr.dtype.element_ty), mask=ok)
    tl.store(gw_ptr + channels, tl.load(sums_ptr + C + channels, mask=ok).to(gw_ptr.dtype.element_ty), mask=ok)
    if PRELU:
        grad_a = tl.load(sums_ptr + 2 * C + channels, mask=ok)
        tl.store(ga_ptr + channels, grad_a.to(ga_ptr.dtype.element_ty), mask=ok)


# --- one program per channel: small maps ------------------------------------------------------
# Where a channel has few elements (RT-DETR-l's 20x20 maps at batch 16: 6400), one program per
# channel reduces it whole, so a training forward is one kernel (statistics, running update,
# output) and a backward one more (sums, then dx; the parameter grads stored in their dtypes):
# fewer launches where launches are what costs. Given statistics (eval, recompute) run the same
# compiled kernel, so a recomputed output has the bits of the original. The storage is NCHW-like,
# [A, C, B] with B = x.stride(1) > 1, and a program walks its channel's A rows of B elements.


@triton.jit
def _channel_tile(a0, b0, c, A, C, B, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """Offsets and mask of rows a0.. and columns b0.. of channel c in [A, C, B] storage."""
    a = a0 + tl.arange(0, BLOCK_A)
    b = b0 + tl.arange(0, BLOCK_B)
    offs = (a[:, None] * C + c) * B + b[None, :]
    return offs, (a < A)[:, None] & (b < B)[None, :]


@triton.jit
def _channel_parameters(w_ptr, b_ptr, a_ptr, c, ALPHA: tl.constexpr, PRELU: tl.constexpr):
    """Channel c's BN weight and bias and the formula's slope (PReLU's weight, else ALPHA)."""
    if PRELU:
        alpha = upcast(tl.load(a_ptr + c))
    else:
        alpha = ALPHA
    return upcast(tl.load(w_ptr + c)), upcast(tl.load(b_ptr + c)), alpha


@triton.jit
def _channel_statistics(x_ptr, c, A, C, B, eps, acc: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """(mean, 1 / sqrt(var + eps), M2) of channel c: a pass for the mean, a second for the
    squares about it (no cancellation), in a fixed order."""
    total = tl.zeros([BLOCK_A, BLOCK_B], dtype=acc)
    for a0 in range(0, A, BLOCK_A):
        for b0 in range(0, B, BLOCK_B):
            offs, mask = _channel_tile(a0, b0, c, A, C, B, BLOCK_A, BLOCK_B)
            total += upcast(tl.load(x_ptr + offs, mask=mask, other=0.0))
    n = tl.cast(A * B, acc)
    mean = tl.sum(tl.sum(total, axis=1), axis=0) / n
    squares = tl.zeros([BLOCK_A, BLOCK_B], dtype=acc)
    for a0 in range(0, A, BLOCK_A):
        for b0 in range(0, B, BLOCK_B):
            offs, mask = _channel_tile(a0, b0, c, A, C, B, BLOCK_A, BLOCK_B)
            d = tl.where(mask, upcast(tl.load(x_ptr + offs, mask=mask, other=0.0)) - mean, 0.0)
            squares += d * d
    m2 = tl.sum(tl.sum(squares, axis=1), axis=0)
    return mean, _rsqrt(m2 / n + eps).to(acc), m2


@triton.jit(do_not_specialize=["stats", "update"])
def _channel_forward_kernel(
    x_ptr,
    y_ptr,
    mean_ptr,
    invstd_ptr,
    rm_ptr,
    rv_ptr,
    w_ptr,
    b_ptr,
    a_ptr,
    eps: tl.float64,
    factor: tl.float64,
    A,
    C,
    B,
    stats,
    update,
    FN: tl.constexpr,
    ALPHA: tl.constexpr,
    PRELU: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """y = act((x - mean) * invstd * w + b) over one channel. ``stats``: the batch's mean and
    invstd first, stored, and the running statistics updated when ``update``; else loaded.
    Both are runtime flags, not constexprs, so training, eval and a recomputed output run one
    compiled kernel: a recomputed output has the original's bits by construction."""
    acc = mean_ptr.dtype.element_ty
    c = tl.program_id(0).to(tl.int64)
    if stats != 0:
        mean, invstd, m2 = _channel_statistics(x_ptr, c, A, C, B, eps, acc, BLOCK_A, BLOCK_B)
        tl.store(mean_ptr + c, mean)
        tl.store(invstd_ptr + c, invstd)
        if update != 0:
            _update_running(rm_ptr, rv_ptr, c, c < C, mean, m2, tl.cast(A * B, acc), factor)
    else:
        mean = tl.load(mean_ptr + c)
        invstd = tl.load(invstd_ptr + c)
    w, bias, alpha = _channel_parameters(w_ptr, b_ptr, a_ptr, c, ALPHA, PRELU)
    for a0 in range(0, A, BLOCK_A):
        for b0 in range(0, B, BLOCK_B):
            offs, mask = _channel_tile(a0, b0, c, A, C, B, BLOCK_A, BLOCK_B)
            x = upcast(tl.load(x_ptr + offs, mask=mask, other=0.0))
            _, z = _bn(x, mean, invstd, w, bias)
            y = FN(z, alpha)
            tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _channel_backward_kernel(
    x_ptr,
    g_ptr,
    dx_ptr,
    mean_ptr,
    invstd_ptr,
    w_ptr,
    b_ptr,
    a_ptr,
    gw_ptr,
    gb_ptr,
    ga_ptr,
    A,
    C,
    B,
    FN: tl.constexpr,
    ALPHA: tl.constexpr,
    PRELU: tl.constexpr,
    TRAINING: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """One channel's sums (gz into the bias grad, gz * xhat into the weight grad and, for PReLU,
    z * g where z <= 0 into its weight's) and then its dx, as ``_backward_reduce_kernel`` and
    ``_backward_kernel``."""
    acc = mean_ptr.dtype.element_ty
    c = tl.program_id(0).to(tl.int64)
    mean = tl.load(mean_ptr + c)
    invstd = tl.load(invstd_ptr + c)
    w, bias, alpha = _channel_parameters(w_ptr, b_ptr, a_ptr, c, ALPHA, PRELU)
    sum_gz = tl.zeros([BLOCK_A, BLOCK_B], dtype=acc)
    sum_gzx = tl.zeros([BLOCK_A, BLOCK_B], dtype=acc)
    sum_a = tl.zeros([BLOCK_A, BLOCK_B], dtype=acc)
    for a0 in range(0, A, BLOCK_A):
        for b0 in range(0, B, BLOCK_B):
            offs, mask = _channel_tile(a0, b0, c, A, C, B, BLOCK_A, BLOCK_B)
            x = upcast(tl.load(x_ptr + offs, mask=mask, other=0.0))
            g = upcast(tl.load(g_ptr + offs, mask=mask, other=0.0))  # g = 0: gz = 0 off the tensor
            xhat, z = _bn(x, mean, invstd, w, bias)
            gz = FN(z, g, alpha)
            sum_gz += gz
            sum_gzx += gz * xhat
            if PRELU:
                sum_a += tl.where(z > 0.0, 0.0, z * g)
    total_gz = tl.sum(tl.sum(sum_gz, axis=1), axis=0)
    total_gzx = tl.sum(tl.sum(sum_gzx, axis=1), axis=0)
    tl.store(gb_ptr + c, total_gz.to(gb_ptr.dtype.element_ty))
    tl.store(gw_ptr + c, total_gzx.to(gw_ptr.dtype.element_ty))
    if PRELU:
        tl.store(ga_ptr + c, tl.sum(tl.sum(sum_a, axis=1), axis=0).to(ga_ptr.dtype.element_ty))
    n = tl.cast(A * B, acc)
    for a0 in range(0, A, BLOCK_A):
        for b0 in range(0, B, BLOCK_B):
            offs, mask = _channel_tile(a0, b0, c, A, C, B, BLOCK_A, BLOCK_B)
            x = upcast(tl.load(x_ptr + offs, mask=mask, other=0.0))
            g = upcast(tl.load(g_ptr + offs, mask=mask, other=0.0))
            xhat, z = _bn(x, mean, invstd, w, bias)
            gz = FN(z, g, alpha)
            if TRAINING:
                gz = gz - total_gz / n - xhat * (total_gzx / n)
            tl.store(dx_ptr + offs, (gz * (w * invstd)).to(dx_ptr.dtype.element_ty), mask=mask)


# --- launch ------------------------------------------------------------------------------------


class _Strips(NamedTuple):
    grid: tuple[int, int]
    per: int  # rows (COLUMN) or columns per strip, a whole number of tiles
    partials: int  # S: partials per channel
    div: int  # partial s covers min(per, total - (s // div) * per) elements
    total: int


def _strips(geo: Geometry, programs: int) -> _Strips:
    """Split the reduction axis into strips so that about ``programs`` programs run."""
    if geo.column:
        fixed, length, step = cdiv(geo.cols, geo.block_k), geo.rows, geo.block_r
    else:
        fixed, length, step = cdiv(geo.rows, geo.block_r), geo.cols, geo.block_k
    splits = max(1, min(cdiv(length, step), programs // fixed))
    per = cdiv(cdiv(length, splits), step) * step
    splits = cdiv(length, per)
    if geo.column:
        return _Strips((fixed, splits), per, splits, 1, length)
    a = geo.rows // geo.channels
    return _Strips((fixed, splits), per, splits * a, a, length)


@functools.lru_cache(maxsize=4096)
def _blocks(n: int, c: int, b: int, dtype: torch.dtype, limit: int) -> tuple[int, int, int, int, int] | None:
    """(A, C, B, BLOCK_A, BLOCK_B) when one program per channel should reduce the map (``_map``),
    else None."""
    if b == 1 or n // c > limit:
        return None
    a = n // (c * b)
    block_b = min(next_power_of_2(b), 256)
    return a, c, b, min(next_power_of_2(a), max(1, _reduce_tile(dtype) // block_b)), block_b


def _reduce_tile(dtype: torch.dtype) -> int:
    """Elements per reduction tile: half as many in float64."""
    return REDUCE_TILE // (2 if dtype == torch.float64 else 1)


def _map(x: torch.Tensor) -> tuple[int, int, int, torch.dtype, int]:
    """What the launches of a dense 4-D ``x`` are planned on: elements, channels, the channel
    stride (``layout``'s B), dtype, and ``CHANNEL_PROGRAM_MAX`` (read per call: tests change it)."""
    return x.numel(), x.shape[1], x.stride(1), x.dtype, CHANNEL_PROGRAM_MAX


# Each launch is built once per map (``Launch``: grid, sizes and constexprs decided), keyed by the
# activation's name, not its formula: hashing a JITFunction takes a lock in Triton's cache_key.


@functools.lru_cache(maxsize=4096)
def _forward_plan(
    n: int,
    c: int,
    b: int,
    dtype: torch.dtype,
    limit: int,
    name: str,
    alpha: float,
    prelu: bool,
    stats: bool,
    update: bool,
) -> tuple[Launch, bool]:
    """The output's launch and whether it is one program per channel, which computes the batch
    statistics first when ``stats`` (else ``statistics`` runs before the output's launch) and
    updates the running ones when ``update``."""
    constexprs = dict(FN=pair(name)[0], ALPHA=alpha, PRELU=prelu)
    if blocks := _blocks(n, c, b, dtype, limit):
        n_a, c, b, block_a, block_b = blocks
        ints = (n_a, c, b, int(stats), int(update))
        return Launch(_channel_forward_kernel, (c,), ints, BLOCK_A=block_a, BLOCK_B=block_b, **constexprs), True
    geo = geometry_of(n, c, b, block_size(dtype))
    k_blocks = cdiv(geo.cols, geo.block_k)
    grid, ints = (cdiv(geo.rows, geo.block_r) * k_blocks,), (geo.rows, geo.cols, geo.channels, k_blocks)
    launch = Launch(
        _forward_kernel, grid, ints, COLUMN=geo.column, BLOCK_R=geo.block_r, BLOCK_K=geo.block_k, **constexprs
    )
    return launch, False


def train_forward(
    x: torch.Tensor,
    out: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    momentum: float,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor,
    act_weight: torch.Tensor | None,
    name: str,
    alpha: float,
    programs: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """out = act(BN(x)) with ``x``'s batch statistics, returned: mean and 1 / sqrt(var + eps) per
    channel in the accumulation dtype. Updates the running statistics in place when given.
    ``x`` (at least two values per channel) and ``out`` as in ``forward``."""
    update, prelu = running_mean is not None, act_weight is not None
    launch, per_channel = _forward_plan(*_map(x), name, alpha, prelu, True, update)
    if not per_channel:  # the split reduction, then the output
        mean, invstd = statistics(x, running_mean, running_var, momentum, eps, programs)
        launch((x, out, mean, invstd, weight, bias, act_weight if prelu else weight))
        return mean, invstd
    acc = accumulate_dtype(x)
    mean, invstd = x.new_empty(x.shape[1], dtype=acc), x.new_empty(x.shape[1], dtype=acc)
    running = (running_mean, running_var) if update else (mean, invstd)
    tensors = (x, out, mean, invstd, *running, weight, bias, act_weight if prelu else weight)
    launch(tensors, (float(eps), float(momentum)))
    return mean, invstd


@functools.lru_cache(maxsize=4096)
def _statistics_plan(
    n: int, c: int, b: int, dtype: torch.dtype, programs: int, update: bool
) -> tuple[Launch, int, Launch]:
    """(partials' launch, partials per plane, merge's launch) of ``statistics``."""
    geo = geometry_of(n, c, b, _reduce_tile(dtype))
    strips = _strips(geo, programs)
    plane = strips.partials * c
    ints = (geo.rows, geo.cols, strips.per, plane)
    partials = Launch(_stats_kernel, strips.grid, ints, COLUMN=geo.column, BLOCK_R=geo.block_r, BLOCK_K=geo.block_k)
    block_c = min(next_power_of_2(c), 32)
    ints = (c, strips.partials, plane, strips.per, strips.div, strips.total, n // c)
    merge = Launch(
        _finalize_kernel, (cdiv(c, block_c),), ints, UPDATE=update, BLOCK_S=FINALIZE_TILE // block_c, BLOCK_C=block_c
    )
    return partials, plane, merge


def statistics(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    momentum: float,
    eps: float,
    programs: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and 1 / sqrt(var + eps) per channel of a dense 4-D ``x`` (at least two values
    per channel), by the split reduction (partials over strips, then a fixed-order merge);
    updates the running statistics in place when given."""
    acc, c = accumulate_dtype(x), x.shape[1]
    update = running_mean is not None
    partials_launch, plane, merge = _statistics_plan(*_map(x)[:4], programs, update)
    partials = torch.empty((2, plane), dtype=acc, device=x.device)
    partials_launch((x, partials))
    mean, invstd = (torch.empty(c, dtype=acc, device=x.device) for _ in range(2))
    running = (running_mean, running_var) if update else (mean, invstd)
    merge((partials, mean, invstd, *running), (float(eps), float(momentum)))
    return mean, invstd


def forward(
    x: torch.Tensor,
    out: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    act_weight: torch.Tensor | None,
    name: str,
    alpha: float,
) -> None:
    """out = act(BN(x)) with the statistics in ``mean`` and ``invstd``; ``x`` and ``out`` dense
    with the same strides, per-channel vectors contiguous with C elements (``act_weight``:
    PReLU's, a slope per channel, or None)."""
    prelu = act_weight is not None
    a = act_weight if prelu else weight
    launch, per_channel = _forward_plan(*_map(x), name, alpha, prelu, False, False)
    if per_channel:
        launch((x, out, mean, invstd, mean, invstd, weight, bias, a), (0.0, 0.0))
    else:
        launch((x, out, mean, invstd, weight, bias, a))


@functools.lru_cache(maxsize=4096)
def _backward_plan(
    n: int,
    c: int,
    b: int,
    dtype: torch.dtype,
    limit: int,
    programs: int,
    name: str,
    alpha: float,
    prelu: bool,
    training: bool,
) -> tuple[Launch, tuple[int, int, int] | None, Launch | None]:
    """One program per channel: (its launch, None, None); else the split backward's (reduction's
    launch, its partials' shape, output's launch)."""
    common = dict(FN=pair(name)[1], ALPHA=alpha, PRELU=prelu)
    if blocks := _blocks(n, c, b, dtype, limit):
        n_a, c, b, block_a, block_b = blocks
        ints, constexprs = (n_a, c, b), dict(TRAINING=training, BLOCK_A=block_a, BLOCK_B=block_b)
        return Launch(_channel_backward_kernel, (c,), ints, **constexprs, **common), None, None
    reduce = geometry_of(n, c, b, _reduce_tile(dtype))
    strips = _strips(reduce, programs)
    plane = strips.partials * c
    partials = Launch(
        _backward_reduce_kernel, strips.grid, (reduce.rows, reduce.cols, c, strips.per, plane),
        BLOCK_R=reduce.block_r, BLOCK_K=reduce.block_k, COLUMN=reduce.column, **common,
    )  # fmt: skip
    geo = geometry_of(n, c, b, block_size(dtype))
    k_blocks = cdiv(geo.cols, geo.block_k)
    output = Launch(
        _backward_kernel, (cdiv(geo.rows, geo.block_r) * k_blocks,), (geo.rows, geo.cols, c, k_blocks, n // c),
        TRAINING=training, BLOCK_R=geo.block_r, BLOCK_K=geo.block_k, COLUMN=geo.column, **common,
    )  # fmt: skip
    return partials, (3 if prelu else 2, strips.partials, c), output


def backward(
    x: torch.Tensor,
    grad: torch.Tensor,
    grad_x: torch.Tensor,
    grad_weight: torch.Tensor,
    grad_bias: torch.Tensor,
    grad_act_weight: torch.Tensor | None,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    act_weight: torch.Tensor | None,
    training: bool,
    name: str,
    alpha: float,
    programs: int,
) -> None:
    """Write grad_x and the grads of the BN weight and bias and, for PReLU, of ``act_weight``
    (each in its own dtype). ``x``, ``grad`` and ``grad_x`` share strides."""
    prelu = act_weight is not None  # a slope per channel
    a = act_weight if prelu else weight
    grads = (grad_weight, grad_bias, grad_act_weight if prelu else grad_weight)
    launch, shape, output = _backward_plan(*_map(x), programs, name, alpha, prelu, training)
    if output is None:  # one program per channel
        launch((x, grad, grad_x, mean, invstd, weight, bias, a, *grads))
        return
    partials = torch.empty(shape, dtype=mean.dtype, device=x.device)
    launch((x, grad, partials, mean, invstd, weight, bias, a))
    sums = partials.sum(1)  # fixed order: the same bits on every run
    output((x, grad, grad_x, mean, invstd, weight, bias, a, sums, *grads))
