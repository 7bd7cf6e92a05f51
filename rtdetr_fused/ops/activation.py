"""Elementwise activations: the eager autograd Functions (``Act``, ``ActMask``, ``InplaceAct``)
and, for torch.compile, the custom ops ``rtdetr_fused::act`` (``act_`` in place, ``act_mask``
with one bit per element) with their backward ops, for every row of ``activations.TABLE``.

The Triton kernels of ``rtdetr_fused.kernels.pointwise`` run on CUDA tensors (and CPU tensors
under the interpreter or ``testing.stub_launches``); other CPU tensors compute with the
PyTorch reference of the row, so a patched model runs anywhere. ``policy.native`` sends small
maps of the activations PyTorch runs as fast as ours to PyTorch's own op.

Beyond first order: a backward run with ``create_graph=True`` (grad mode on inside it) computes
its gradient with differentiable PyTorch ops from the saved tensors instead of the kernels, so
second derivatives are exact; under forward-mode AD and torch.func transforms (``transformed``)
the entry point runs the PyTorch reference, which has every formula.
"""

import functools

import torch
import torch.autograd.forward_ad as _forward_ad

from ..activations import TABLE
from . import policy
from .common import FLOAT_DTYPES, compiling, dense, exporting, is_dense, like, on_kernels, with_strides


@functools.cache
def _kernels():
    from rtdetr_fused.kernels import pointwise  # imports triton: only when a kernel runs

    return pointwise


def _forward_into(x: torch.Tensor, out: torch.Tensor, name: str, alpha: float) -> None:
    if x.numel():
        _kernels().forward(x, out, name, alpha)


# --- act: out of place -----------------------------------------------------------------


def _act_triton(x: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
    x = dense(x)
    out = torch.empty_like(x)
    _forward_into(x, out, name, alpha)
    return out


def _act(x: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
    return _act_triton(x, name, alpha) if on_kernels(x) else TABLE[name].reference(x, alpha)


act = torch.library.custom_op("rtdetr_fused::act", _act_triton, mutates_args=(), device_types="cuda")


act.register_kernel("cpu")(_act)


@act.register_fake
def _act_fake(x: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
    return torch.empty_like(x)


# --- act_backward ------------------------------------------------------------------------


def _act_backward_triton(saved: torch.Tensor, grad: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
    saved = dense(saved)
    grad = like(grad, saved)
    out = torch.empty_like(saved)
    if saved.numel():
        _kernels().backward(saved, grad, out, name, alpha)
    return out


def _act_backward(saved: torch.Tensor, grad: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
    if on_kernels(saved):
        return _act_backward_triton(saved, grad, name, alpha)
    return like(TABLE[name].reference_backward(saved, grad, alpha), saved)


act_backward = torch.library.custom_op(
    "rtdetr_fused::act_backward", _act_backward_triton, mutates_args=(), device_types="cuda"
)


act_backward.register_kernel("cpu")(_act_backward)


@act_backward.register_fake
def _act_backward_fake(saved: torch.Tensor, grad: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
    return torch.empty_like(saved)


def _backward_graph(saved: torch.Tensor, grad: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
    """grad_input with differentiable ops, for a backward with ``create_graph=True``. Where the
    output is saved the derivative is piecewise constant (its own derivative zero), so the
    reference backward of the detached output is exact; else the reference forward at the saved
    input is differentiated (aten's ``silu_backward`` and ``mish_backward`` have no formula)."""
    row = TABLE[name]
    if row.saves_output(alpha):
        return row.reference_backward(saved.detach(), grad, alpha)
    x = saved if saved.requires_grad else saved.detach().requires_grad_()
    (grad_x,) = torch.autograd.grad(row.reference(x, alpha), x, grad, create_graph=True)
    return grad_x


def _setup_context(ctx, inputs, output) -> None:
    x, name, alpha = inputs
    ctx.name, ctx.alpha = name, alpha
    ctx.save_for_backward(output if TABLE[name].saves_output(alpha) else x)


class Act(torch.autograd.Function):
    """``act(x)`` out of place; backward saves the output where the row says its derivative can
    be read off it, else the input. (``forward`` takes ``ctx``: a Function with a
    ``setup_context`` method costs 20 us more per call, torch 2.14 binding its arguments with
    ``inspect.signature`` on every ``apply``.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
        out = _act(x, name, alpha)
        _setup_context(ctx, (x, name, alpha), out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (saved,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
            return _backward_graph(saved, grad, ctx.name, ctx.alpha), None, None
        return _act_backward(saved, grad, ctx.name, ctx.alpha), None, None


def _compiled_backward(ctx, grad: torch.Tensor):
    (saved,) = ctx.saved_tensors
    return act_backward(saved, grad, ctx.name, ctx.alpha), None, None


act.register_autograd(_compiled_backward, setup_context=_setup_context)


# --- act_mask: backward from one bit per element -----------------------------------------------


def _act_mask_triton(x: torch.Tensor, name: str, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = dense(x)
    out = torch.empty_like(x)
    bits = torch.empty((x.numel() + 7) // 8, dtype=torch.uint8, device=x.device)
    if x.numel():
        _kernels().mask_forward(x, out, bits, name, alpha, TABLE[name].saves_output(alpha))
    return out, bits


act_mask = torch.library.custom_op("rtdetr_fused::act_mask", _act_mask_triton, mutates_args=(), device_types="cuda")

_BIT_WEIGHTS = 2 ** torch.arange(8, dtype=torch.uint8)


def _storage_order(t: torch.Tensor) -> torch.Tensor:
    """The elements of a freshly allocated dense ``t`` in storage order, as a 1-D view."""
    return t.as_strided((t.numel(),), (1,))


def _act_mask(x: torch.Tensor, name: str, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    if on_kernels(x):
        return _act_mask_triton(x, name, alpha)
    out = like(TABLE[name].reference(x, alpha), x)
    saved = out if TABLE[name].saves_output(alpha) else x
    one = TABLE[name].reference_backward(saved, torch.ones_like(saved), alpha) == 1
    flat = _storage_order(torch.empty_like(out, dtype=torch.bool).copy_(one))
    padded = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)]).view(-1, 8).to(torch.uint8)
    return out, (padded * _BIT_WEIGHTS).sum(1, dtype=torch.uint8)


act_mask.register_kernel("cpu")(_act_mask)


@act_mask.register_fake
def _act_mask_fake(x: torch.Tensor, name: str, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), x.new_empty((x.numel() + 7) // 8, dtype=torch.uint8)


def _act_mask_backward_triton(bits: torch.Tensor, grad: torch.Tensor, stride: list[int], alpha: float) -> torch.Tensor:
    grad = with_strides(grad, stride)
    out = torch.empty_like(grad)
    if grad.numel():
        _kernels().mask_backward(bits, grad, out, alpha)
    return out


act_mask_backward = torch.library.custom_op(
    "rtdetr_fused::act_mask_backward", _act_mask_backward_triton, mutates_args=(), device_types="cuda"
)


def _act_mask_backward(bits: torch.Tensor, grad: torch.Tensor, stride: list[int], alpha: float) -> torch.Tensor:
    if on_kernels(grad):
        return _act_mask_backward_triton(bits, grad, stride, alpha)
    return _act_mask_backward_reference(bits, grad, stride, alpha)


def _act_mask_backward_reference(
    bits: torch.Tensor, grad: torch.Tensor, stride: list[int], alpha: float
) -> torch.Tensor:
    """grad_input from the bits with PyTorch ops, on any device: the CPU path, and a backward with
    ``create_graph=True`` (the derivative the bits hold is piecewise constant, so this is exact and
    differentiable in ``grad``). 0, not 0 * grad, where alpha is 0, as the kernel and torch."""
    grad = with_strides(grad, stride)
    one = torch.empty_like(grad, dtype=torch.bool)
    unpacked = (bits[:, None] & _BIT_WEIGHTS.to(bits.device)) != 0
    _storage_order(one).copy_(unpacked.view(-1)[: grad.numel()])
    return torch.where(one, grad, grad * alpha if alpha else torch.zeros_like(grad))


act_mask_backward.register_kernel("cpu")(_act_mask_backward)


@act_mask_backward.register_fake
def _act_mask_backward_fake(bits: torch.Tensor, grad: torch.Tensor, stride: list[int], alpha: float) -> torch.Tensor:
    return torch.empty_strided(grad.shape, stride, dtype=grad.dtype, device=grad.device)


def _mask_setup_context(ctx, inputs, output) -> None:
    out, bits = output
    ctx.stride, ctx.alpha = list(out.stride()), inputs[2]
    ctx.mark_non_differentiable(bits)
    ctx.save_for_backward(bits)


class ActMask(torch.autograd.Function):
    """``act(x)``; backward reads one bit per element (where the derivative is 1) instead of a
    tensor. The bits are saved, not returned: an output costs autograd more (the custom op
    returns them, as an op cannot save)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
        out, bits = _act_mask(x, name, alpha)
        ctx.stride, ctx.alpha = list(out.stride()), alpha
        ctx.save_for_backward(bits)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (bits,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            return _act_mask_backward_reference(bits, grad, ctx.stride, ctx.alpha), None, None
        return _act_mask_backward(bits, grad, ctx.stride, ctx.alpha), None, None


def _compiled_mask_backward(ctx, grad: torch.Tensor, _grad_bits: torch.Tensor | None):
    (bits,) = ctx.saved_tensors
    return act_mask_backward(bits, grad, ctx.stride, ctx.alpha), None, None


act_mask.register_autograd(_compiled_mask_backward, setup_context=_mask_setup_context)


# --- act_: in place -------------------------------------------------------------------------


def _act_inplace_triton(x: torch.Tensor, name: str, alpha: float) -> None:
    if is_dense(x):
        _forward_into(x, x, name, alpha)
    else:
        x.copy_(_act_triton(x, name, alpha))


act_ = torch.library.custom_op("rtdetr_fused::act_", _act_inplace_triton, mutates_args=("x",), device_types="cuda")


def _act_inplace(x: torch.Tensor, name: str, alpha: float) -> None:
    if on_kernels(x):
        _act_inplace_triton(x, name, alpha)
    else:
        x.copy_(TABLE[name].reference(x, alpha))


act_.register_kernel("cpu")(_act_inplace)


def _inplace(x: torch.Tensor, name: str, alpha: float) -> None:
    (act_ if compiling() else _act_inplace)(x, name, alpha)


class InplaceAct(torch.autograd.Function):
    """In place with autograd, as torch does it: the output is saved where the derivative
    can be read off it (ReLU, ReLU6, LeakyReLU with slope >= 0), else a clone of the input
    (SiLU, Mish, Hardswish, GELU; no memory is saved over ``inplace=False`` then). The clone is
    made in grad mode, so it keeps x's graph: a double backward differentiates through it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
        keep_output = TABLE[name].saves_output(alpha)
        saved = None
        if not keep_output:
            torch._C._set_grad_enabled(True)  # forward runs with grad off; 0.4 us, against 1.1 for enable_grad
            saved = x.clone()
            torch._C._set_grad_enabled(False)
        _inplace(x, name, alpha)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x if keep_output else saved)
        ctx.name, ctx.alpha = name, alpha
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (saved,) = ctx.saved_tensors
        if torch.is_grad_enabled() and not compiling():  # create_graph=True
            return _backward_graph(saved, grad, ctx.name, ctx.alpha), None, None
        backward = act_backward if compiling() else _act_backward
        return backward(saved, grad, ctx.name, ctx.alpha), None, None


_functorch_active = torch._C._are_functorch_transforms_active


def transformed() -> bool:
    """True under a torch.func transform (grad, vmap, jvp, jacrev, ...) or inside a forward-mode AD
    ``dual_level``: the entry points then run PyTorch's reference ops, which carry every formula
    (our Functions are first-order reverse mode only, and torch.func would need ``setup_context``,
    which costs every eager call 20 us). 0.1 us."""
    return _functorch_active() or _forward_ad._current_level >= 0


def _reference(x: torch.Tensor, name: str, alpha: float, inplace: bool) -> torch.Tensor:
    """The PyTorch reference; in place as torch.nn's in-place op (a clone is what it saves)."""
    if inplace:
        return x.copy_(TABLE[name].reference(x.clone(), alpha))
    return TABLE[name].reference(x, alpha)


def apply(x: torch.Tensor, name: str, alpha: float = 0.0, inplace: bool = False, bitmask: bool = False) -> torch.Tensor:
    """Run activation ``name`` on ``x``; the entry point of ``rtdetr_fused.functional``.
    ``bitmask``: backward from one bit per element (rows with ``bitmask``, out of place)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:  # integer, bool, complex: what torch.nn.functional does, or its error
        return _reference(x, name, alpha, inplace)
    if bitmask and not TABLE[name].bitmask:
        maskable = ", ".join(row.name for row in TABLE.values() if row.bitmask)
        raise ValueError(f"bitmask=True needs a derivative with two values: {maskable}, not {name}")
    if bitmask and inplace:
        raise ValueError("bitmask=True works out of place: in place, the output is saved, which costs nothing extra")
    row, compiled = TABLE[name], not inplace and compiling()  # in place, ``_inplace`` asks
    # PyTorch's op, first: exporters and torch.func transforms would get it too, so their checks
    # (four Python calls, about 5% of this route's host cost) are not needed before it.
    if not (inplace or bitmask or compiled) and policy.native(
        x, row.torch_as_fast, row.saves_output(alpha) == row.torch_saves_output
    ):
        return row.reference(x, alpha)
    if exporting():
        return row.reference(x, alpha)  # exporters see the standard op
    if transformed():
        return _reference(x, name, alpha, inplace)
    if inplace:
        if torch.is_grad_enabled() and x.requires_grad:
            return InplaceAct.apply(x, name, alpha)
        _inplace(x, name, alpha)
        return x
    if compiled:  # the custom ops, which torch.compile sees
        return act_mask(x, name, alpha)[0] if bitmask else act(x, name, alpha)
    grad = torch.is_grad_enabled() and x.requires_grad
    if bitmask:
        return ActMask.apply(x, name, alpha) if grad else _act(x, name, alpha)
    return Act.apply(x, name, alpha) if grad else _act(x, name, alpha)
