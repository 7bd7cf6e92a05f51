"""PReLU: the eager autograd Function ``PReLU`` and, for torch.compile, the custom ops
``rtdetr_fused::prelu`` and ``rtdetr_fused::prelu_backward``.

Backward produces grad_input and grad_weight in one Triton kernel (per-program partial
sums, then a fixed-order sum of the partials): no full-size temporary, no atomics.
Saved for backward: the input and the weight. A backward with ``create_graph=True``
differentiates the reference forward at the saved tensors instead (exact second derivatives);
under forward-mode AD and torch.func transforms ``apply`` runs ``torch.prelu``.
"""

import functools

import torch

from ..activations import weight_view
from ..kernels import accumulate_dtype
from .activation import transformed
from .common import (
    FLOAT_DTYPES,
    ArgumentError,
    check_float,
    check_same_device,
    compiling,
    dense,
    device_programs,
    exporting,
    like,
    on_kernels,
)


@functools.cache
def _kernels():
    from rtdetr_fused.kernels import prelu  # imports triton: only when a kernel runs

    return prelu


def _kernel_weight(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The weight as the kernels read it: its values contiguous, in ``x``'s accumulation dtype (a
    module's own weight as it is: no call)."""
    acc = accumulate_dtype(x)
    if weight.dim() == 1 and weight.dtype == acc and weight.is_contiguous():
        return weight
    return weight.reshape(-1).to(acc).contiguous()  # a strided view too


def _prelu_triton(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    x = dense(x)
    out = torch.empty_like(x)
    if x.numel():
        _kernels().forward(x, _kernel_weight(weight, x), out)
    return out


prelu = torch.library.custom_op("rtdetr_fused::prelu", _prelu_triton, mutates_args=(), device_types="cuda")


def _prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if on_kernels(x):
        return _prelu_triton(x, weight)
    w = weight_view(x, weight).to(accumulate_dtype(x))
    return torch.where(x > 0, x, w * x).to(x.dtype)


prelu.register_kernel("cpu")(_prelu)


@prelu.register_fake
def _prelu_fake(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _prelu_backward_triton(
    x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    x = dense(x)
    grad = like(grad, x)
    grad_x = torch.empty_like(x)
    if not x.numel():
        return grad_x, torch.zeros_like(weight)
    grad_w = _kernels().backward(x, _kernel_weight(weight, x), grad, grad_x, device_programs(x))
    return grad_x, grad_w.to(weight.dtype).reshape(weight.shape)


prelu_backward = torch.library.custom_op(
    "rtdetr_fused::prelu_backward", _prelu_backward_triton, mutates_args=(), device_types="cuda"
)


def _prelu_backward(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if on_kernels(x):
        return _prelu_backward_triton(x, weight, grad)
    acc = accumulate_dtype(x)
    xa, ga = x.to(acc), grad.to(acc)
    positive = xa > 0
    grad_x = torch.where(positive, ga, weight_view(x, weight).to(acc) * ga).to(x.dtype)
    per_element = torch.where(positive, 0.0, xa * ga)
    dims = [d for d in range(x.dim()) if d != 1 or weight.numel() == 1]
    grad_w = per_element.sum(dims) if dims else per_element
    return like(grad_x, x), grad_w.to(weight.dtype).reshape(weight.shape)


prelu_backward.register_kernel("cpu")(_prelu_backward)


@prelu_backward.register_fake
def _prelu_backward_fake(
    x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """PReLU with differentiable ops, weight and input of any float dtypes (as ``_prelu``)."""
    acc = accumulate_dtype(x)
    return torch.where(x > 0, x, weight_view(x, weight).to(acc) * x.to(acc)).to(x.dtype)


def _backward_graph(ctx, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> tuple:
    """Grads of x and weight with differentiable ops (``create_graph=True``): the reference
    forward at the saved tensors, which keep their graph, differentiated."""
    needs = ctx.needs_input_grad[:2]
    wanted = [t for t, need in zip((x, weight), needs) if need]
    grads = iter(torch.autograd.grad(_reference(x, weight), wanted, grad, create_graph=True))
    return tuple(next(grads) if need else None for need in needs)


class PReLU(torch.autograd.Function):
    """``prelu(x, weight)``; backward saves the input and the weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        _setup_context(ctx, (x, weight), None)
        return _prelu(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
            return _backward_graph(ctx, x, weight, grad)
        return _prelu_backward(x, weight, grad)


def _compiled_backward(ctx, grad: torch.Tensor):
    x, weight = ctx.saved_tensors
    return prelu_backward(x, weight, grad)


prelu.register_autograd(_compiled_backward, setup_context=_setup_context)


def check_weight(x: torch.Tensor, weight: torch.Tensor) -> None:
    """torch's rule: one weight, or one per channel on dim 1 (inputs of 2 or more dims)."""
    check_float(weight, "weight")
    check_same_device(x, weight, "input", "weight")
    n = weight.numel()
    if n == 1:
        return
    if x.dim() < 2:
        raise ArgumentError(
            f"weight has {n} elements but input of shape {tuple(x.shape)} has no channel dimension "
            "(fewer than 2 dims), as in torch: use one weight"
        )
    if n != x.shape[1]:
        raise ArgumentError(
            f"weight has {n} elements but input of shape {tuple(x.shape)} has {x.shape[1]} channels "
            "on dim 1: use one weight, or one per channel"
        )


def apply(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """PReLU of ``x``; the entry point of ``rtdetr_fused.functional.prelu``."""
    if exporting() or transformed():  # exporters see the standard op (shapes are traced values there)
        return torch.prelu(x, weight)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    check_weight(x, weight)
    if x.dtype not in FLOAT_DTYPES:
        return torch.prelu(x, weight)  # integer, bool, complex input: torch's result or its error
    if not on_kernels(x) and x.dtype == weight.dtype:
        return torch.prelu(x, weight)  # on the CPU it saves what ours does
    if compiling():
        return prelu(x, weight)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return PReLU.apply(x, weight)
    return _prelu(x, weight)
