"""Per-channel kernels' view of a dense tensor: its storage as an R x K matrix.

A dense tensor's storage is [A, C, B] with B = x.stride(1), whatever its memory format
(NCHW: B = H*W; channels_last: B = 1). Kernels that need a per-channel value (PReLU's
weight, BatchNorm's statistics) view it as R rows of K contiguous elements in which a
channel is whole columns or whole rows, so per-channel values are loaded once per row or
column, never gathered per element:

- column (B == 1, channels_last): R = A, K = C, the channel of column k is k;
- otherwise (NCHW): R = A * C, K = B, the channel of row r is r % C (C == 1: one row).
"""

import functools
from typing import NamedTuple

import torch

from . import cdiv, next_power_of_2


class Geometry(NamedTuple):
    """The storage as an R x K matrix and the tiling of it."""

    rows: int
    cols: int
    channels: int
    column: bool
    block_r: int
    block_k: int


@functools.cache
def _block_k(k: int, tile: int) -> int:
    """Widest power-of-two column block, at most ``tile``, that pads K the least: the H*W of
    detectors (400, 1600, 6400 = 25 * 2^m) then splits into blocks with no masked lanes."""
    top = min(next_power_of_2(k), tile)
    widths = [top >> i for i in range(top.bit_length()) if top >> i >= min(16, top)]
    return min(widths, key=lambda b: (cdiv(k, b) * b, -b))


def geometry(x: torch.Tensor, channels: int, tile: int) -> Geometry:
    """Geometry of dense ``x`` with ``channels`` channels on dim 1 (1: the whole tensor is one
    channel) and tiles of ``tile`` elements."""
    return geometry_of(x.numel(), channels, x.stride(1) if channels != 1 else 0, tile)


@functools.lru_cache(maxsize=4096)
def geometry_of(n: int, channels: int, b: int, tile: int) -> Geometry:
    """``geometry`` of a map of ``n`` elements whose channel stride is ``b`` (unused for one
    channel), worked out once per shape (a model has a few dozen)."""
    if channels == 1:
        r, k, column = 1, n, False
    elif b == 1:
        r, k, column = n // channels, channels, True
    else:
        r, k, column = n // b, b, False
    bk = _block_k(k, tile)
    return Geometry(r, k, channels, column, max(1, tile // bk), bk)
