"""A convolution over a channel concatenation that keeps the pieces, not the concatenation,
for backward.

``conv(torch.cat(pieces, 1))`` saves the concatenation: a copy of tensors that are, in
PP-HGNetV2's HGBlock, already saved by the convolutions that read them. ``cat_conv2d`` computes
the same convolution but saves the pieces and concatenates them again in backward, where the
copy lives only until the convolution's gradients are computed. Forward and gradients are
those of ``conv(torch.cat(pieces, 1))``, bit for bit: the same aten convolution and
convolution_backward run on the same concatenation.

A piece tagged by ``batch_norm_act(..., recompute=True)`` is kept as its recipe and recomputed
in backward (``rtdetr_fused.recompute``); ``conv2d`` is the one-piece case, for a Conv block
reading the previous block's output.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .recompute import recipe_of, save_for_backward, saved_tensors


class _CatConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, bias, stride, padding, dilation, groups, *pieces):
        out = F.conv2d(_cat(pieces), weight, bias, stride, padding, dilation, groups)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.dtype = out.dtype  # autocast runs the convolution in its own dtype: backward does too
        ctx.bias_dtype = bias.dtype if bias is not None else None
        save_for_backward(ctx, weight, *pieces)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        weight, *pieces = saved_tensors(ctx)
        stride, padding, dilation, groups = ctx.conv
        needs = ctx.needs_input_grad
        x = _cat(pieces).to(ctx.dtype)
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight.to(ctx.dtype),
            [weight.shape[0]] if ctx.bias_dtype is not None else None,
            stride,
            padding,
            dilation,
            False,
            [0, 0],
            groups,
            [any(needs[6:]), needs[0], needs[1]],
        )
        del x
        grads = grad_x.split([p.shape[1] for p in pieces], 1) if grad_x is not None else [None] * len(pieces)
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(ctx.bias_dtype) if grad_b is not None else None
        return (
            grad_w,
            grad_b,
            None,
            None,
            None,
            None,
            *(g.to(p.dtype) if g is not None else None for g, p in zip(grads, pieces)),
        )


def _cat(pieces: Sequence[torch.Tensor]) -> torch.Tensor:
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1)


def cat_conv2d(pieces: Sequence[torch.Tensor], conv: nn.Conv2d) -> torch.Tensor:
    """``conv(torch.cat(pieces, 1))``, saving ``pieces`` for backward instead of their
    concatenation. ``conv`` must pad with zeros (the default ``padding_mode``)."""
    if not plain_conv2d(conv):
        raise ValueError("cat_conv2d needs padding_mode='zeros' and numeric padding")
    return _CatConv2d.apply(conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups, *pieces)


def plain_conv2d(conv: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` that ``cat_conv2d`` can run: zero padding given as numbers."""
    return (
        type(conv).forward is nn.Conv2d.forward and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
    )


def conv2d(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """``conv(x)``, keeping the recipe of a tagged ``x`` (``rtdetr_fused.recompute``) for backward
    instead of ``x``: ``cat_conv2d`` of one piece, the same convolution."""
    if recipe_of(x) is None or not torch.is_grad_enabled() or not plain_conv2d(conv):
        return conv(x)
    return cat_conv2d([x], conv)
