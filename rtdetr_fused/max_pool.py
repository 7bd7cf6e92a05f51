"""2-D max pooling that saves its input for backward instead of the argmax indices.

``F.max_pool2d`` under autograd saves int64 indices: 8 bytes per output element, four
bfloat16 maps' worth. With stride 1 (RT-DETR's HGStem, YOLO's SPPF) the output is as large as
the input, so keeping the input instead costs a quarter of that in bfloat16, and nothing where
the input is kept anyway (HGStem pools the padded map that its next conv saves). Backward
finds the argmax again (one more pooling pass) and hands it to PyTorch's own backward, so the
gradient is PyTorch's. Run through ``rtdetr_fused.recompute.consume``, an input tagged by
``batch_norm_act(..., recompute=True)`` is kept as its recipe.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair


class _MaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool) -> torch.Tensor:
        ctx.args = (_pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation), ceil_mode)
        ctx.save_for_backward(x)
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        _, indices = F.max_pool2d(x, *ctx.args, return_indices=True)
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *ctx.args, indices)
        return grad_x, None, None, None, None, None


def max_pool2d(
    input: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
) -> torch.Tensor:
    """``F.max_pool2d`` (without ``return_indices``) whose backward keeps ``input``, not indices."""
    stride = kernel_size if stride is None or stride == [] else stride
    return _MaxPool2d.apply(input, kernel_size, stride, padding, dilation, ceil_mode)
