"""A convolution over a channel concatenation that keeps the pieces, not the concatenation,
for backward.

``conv(torch.cat(pieces, 1))`` saves the concatenation: a copy of tensors that are, in
PP-HGNetV2's HGBlock, already saved by the convolutions that read them. ``cat_conv2d`` tags the
concatenation with its recipe, ``torch.cat`` of the pieces (``rtdetr_fused.recompute``), and runs
``conv`` on it through ``consume``: the convolution keeps the pieces (a tagged piece as its own
recipe) and concatenates them again in backward, where the copy lives only until the
convolution's gradients are computed. ``conv`` itself runs, with its native autograd: forward
and gradients are those of ``conv(torch.cat(pieces, 1))``, bit for bit.
"""

from collections.abc import Sequence

import torch
from torch import nn

from .recompute import consume, eager_autograd, tag


def _cat(*pieces: torch.Tensor) -> torch.Tensor:
    return torch.cat(pieces, 1)


def cat_conv2d(pieces: Sequence[torch.Tensor], conv: nn.Module) -> torch.Tensor:
    """``conv(torch.cat(pieces, 1))``, keeping ``pieces`` for backward instead of their
    concatenation (in eager autograd; under torch.compile or export, as written)."""
    x = torch.cat(list(pieces), 1)
    if eager_autograd():
        tag(x, _cat, pieces, ())
    return consume(conv, x)
