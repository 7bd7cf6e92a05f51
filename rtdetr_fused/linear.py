"""``nn.Linear`` that keeps a tagged input's recipe for backward instead of the input.

Under ``fuse_bn="recompute"`` the activations of RT-DETR's decoder (its feed-forward layers and
MLP heads) tag their outputs (``rtdetr_fused.recompute``): the linear layer reading one keeps
the activation's input, which the activation keeps anyway, and recomputes the output in
backward. Gradients are those of ``F.linear`` up to the order of the matmul's sums.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .recompute import recipe_of, save_for_backward, saved_tensors


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = F.linear(x, weight, bias)
        ctx.dtype = out.dtype  # autocast runs the matmul in its own dtype: backward does too
        ctx.bias_dtype = bias.dtype if bias is not None else None
        save_for_backward(ctx, weight, x)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        weight, x = saved_tensors(ctx)
        w = weight.to(ctx.dtype)
        grad_x = grad.matmul(w).to(x.dtype) if ctx.needs_input_grad[0] else None
        rows = grad.reshape(-1, grad.shape[-1])
        grad_w = (
            rows.t().mm(x.to(ctx.dtype).reshape(-1, x.shape[-1])).to(weight.dtype) if ctx.needs_input_grad[1] else None
        )
        grad_b = rows.sum(0).to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``layer(x)``, keeping the recipe of a tagged ``x`` for backward instead of ``x``."""
    if recipe_of(x) is None or not torch.is_grad_enabled() or type(layer).forward is not nn.Linear.forward:
        return layer(x)
    return _Linear.apply(x, layer.weight, layer.bias)
