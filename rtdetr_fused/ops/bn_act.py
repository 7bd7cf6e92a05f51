"""BatchNorm2d fused with an activation as custom ops.

- ``rtdetr_fused::bn_stats(x, running_mean?, running_var?, momentum, eps) -> (mean, invstd)``:
  the batch statistics per channel, updating the running statistics in place. No autograd:
  it runs on the detached input, and ``bn_act``'s backward differentiates through the
  statistics itself.
- ``rtdetr_fused::bn_act(x, mean, invstd, weight, bias, act_weight?, training, name, alpha)``:
  ``act((x - mean) * invstd * weight + bias)``. ``training`` says the statistics are this
  batch's, which adds their gradient terms.
- ``rtdetr_fused::bn_act_backward``: grad of x, weight, bias and act_weight.
- ``BN_ACT_TRAIN``: training mode's ``bn_stats`` then ``bn_act`` in one call, ``(out, mean,
  invstd)``: eagerly one kernel on small maps (``kernels.bn_act.train_forward``); torch.compile
  sees the two ops (a custom op that mutates its arguments cannot have an autograd formula).

``bn_act`` saves ``x``, ``mean``, ``invstd``, ``weight``, ``bias`` (and PReLU's
``act_weight``) for backward, never the output, so a Conv -> BN+act -> Conv chain keeps two
full tensors per block (the conv's input and output). Per-channel tensors are float32 (float64
for float64 input) except ``weight``, ``bias`` and ``act_weight``, which keep their own dtype.
On CPU tensors the ops run the Triton kernels under ``TRITON_INTERPRET=1`` and PyTorch
references otherwise.
"""

from collections.abc import Callable

import torch

from ..kernels import accumulate_dtype
from .activation import SPECS, ActSpec
from .common import Routed, dense, device_programs, interpreting, like

ACT_SPECS = {**SPECS, "identity": ActSpec(lambda x, a: x, lambda x, g, a: g)}
"""The elementwise activations' PyTorch references, and identity (BatchNorm alone)."""
NAMES = (*ACT_SPECS, "prelu")
"""Activation names ``bn_act`` accepts."""


def _kernels():
    from rtdetr_fused.kernels import bn_act  # imports triton: only when a kernel runs

    return bn_act


def _channel_view(t: torch.Tensor) -> torch.Tensor:
    """A [C] vector broadcastable against NCHW."""
    return t.reshape(-1, 1, 1)


# --- bn_stats ------------------------------------------------------------------------------


def _bn_stats_triton(
    x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None, momentum: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels().statistics(dense(x), running_mean, running_var, momentum, eps, device_programs(x))


bn_stats = torch.library.custom_op(
    "rtdetr_fused::bn_stats", _bn_stats_triton, mutates_args=("running_mean", "running_var"), device_types="cuda"
)


@bn_stats.register_kernel("cpu")
def _bn_stats_cpu(
    x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None, momentum: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if interpreting():
        return _bn_stats_triton(x, running_mean, running_var, momentum, eps)
    # BatchNorm's own statistics and running update (3x faster than var_mean over dims 0, 2, 3),
    # on running statistics in the accumulation dtype: themselves, or copies written back.
    acc = accumulate_dtype(x)
    running = [t.to(acc) if t is not None else None for t in (running_mean, running_var)]
    _, mean, invstd = torch.native_batch_norm(x.to(acc), None, None, *running, True, momentum, eps)
    for t, updated in zip((running_mean, running_var), running):
        if t is not None and updated is not t:
            t.copy_(updated)
    return mean, invstd


@bn_stats.register_fake
def _bn_stats_fake(x, running_mean, running_var, momentum, eps):
    c = x.shape[1]
    return x.new_empty(c, dtype=accumulate_dtype(x)), x.new_empty(c, dtype=accumulate_dtype(x))


# --- bn_act --------------------------------------------------------------------------------


def _bn_act_triton(
    x: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    act_weight: torch.Tensor | None,
    training: bool,
    name: str,
    alpha: float,
) -> torch.Tensor:
    x = dense(x)
    out = torch.empty_like(x)
    if x.numel():
        _kernels().forward(x, out, mean, invstd, weight, bias, act_weight, name, alpha)
    return out


bn_act = torch.library.custom_op("rtdetr_fused::bn_act", _bn_act_triton, mutates_args=(), device_types="cuda")


def _reference_z(x, mean, invstd, weight, bias) -> torch.Tensor:
    """The BN output z = (x - mean) * (weight * invstd) + bias in the accumulation dtype, in two
    passes over x."""
    acc = mean.dtype
    scale = weight.to(acc) * invstd
    return torch.addcmul(_channel_view(bias.to(acc)), x.to(acc) - _channel_view(mean), _channel_view(scale))


@bn_act.register_kernel("cpu")
def _bn_act_cpu(x, mean, invstd, weight, bias, act_weight, training, name, alpha) -> torch.Tensor:
    if interpreting():
        return _bn_act_triton(x, mean, invstd, weight, bias, act_weight, training, name, alpha)
    z = _reference_z(x, mean, invstd, weight, bias)
    y = torch.prelu(z, act_weight.to(z.dtype)) if name == "prelu" else ACT_SPECS[name].reference(z, alpha)
    return like(y.to(x.dtype), x)


@bn_act.register_fake
def _bn_act_fake(x, mean, invstd, weight, bias, act_weight, training, name, alpha):
    return torch.empty_like(x)


# --- bn_act_train: training forward, statistics and output in one call ---------------------


def _bn_act_train_triton(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    act_weight: torch.Tensor | None,
    momentum: float,
    eps: float,
    name: str,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = dense(x)
    out = torch.empty_like(x)
    mean, invstd = _kernels().train_forward(
        x, out, running_mean, running_var, momentum, eps, weight, bias, act_weight, name, alpha, device_programs(x)
    )
    return out, mean, invstd


def _bn_act_train_cpu(x, running_mean, running_var, weight, bias, act_weight, momentum, eps, name, alpha):
    if interpreting():
        return _bn_act_train_triton(x, running_mean, running_var, weight, bias, act_weight, momentum, eps, name, alpha)
    mean, invstd = _bn_stats_cpu(x, running_mean, running_var, momentum, eps)
    return _bn_act_cpu(x, mean, invstd, weight, bias, act_weight, True, name, alpha), mean, invstd


def _bn_act_train_composed(x, running_mean, running_var, weight, bias, act_weight, momentum, eps, name, alpha):
    """``BN_ACT_TRAIN`` as torch.compile sees it."""
    mean, invstd = bn_stats(x.detach(), running_mean, running_var, momentum, eps)
    return bn_act(x, mean, invstd, weight, bias, act_weight, True, name, alpha), mean, invstd


# --- bn_act_backward -------------------------------------------------------------------------


def _bn_act_backward_triton(
    x: torch.Tensor,
    grad: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    act_weight: torch.Tensor | None,
    training: bool,
    name: str,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x = dense(x)
    grad = like(grad, x)
    grad_x, grad_w, grad_b = torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)
    grad_a = torch.empty_like(act_weight) if act_weight is not None else weight.new_empty(0)
    _kernels().backward(
        x, grad, grad_x, grad_w, grad_b, grad_a, mean, invstd, weight, bias, act_weight, training, name, alpha,
        device_programs(x),
    )  # fmt: skip
    return grad_x, grad_w, grad_b, grad_a


bn_act_backward = torch.library.custom_op(
    "rtdetr_fused::bn_act_backward", _bn_act_backward_triton, mutates_args=(), device_types="cuda"
)


@bn_act_backward.register_kernel("cpu")
def _bn_act_backward_cpu(x, grad, mean, invstd, weight, bias, act_weight, training, name, alpha):
    if interpreting():
        return _bn_act_backward_triton(x, grad, mean, invstd, weight, bias, act_weight, training, name, alpha)
    acc = mean.dtype
    z, g = _reference_z(x, mean, invstd, weight, bias), grad.to(acc)
    if name == "prelu":
        positive = z > 0
        gz = torch.where(positive, g, _channel_view(act_weight.to(acc)) * g)
        grad_a = torch.where(positive, 0.0, z * g).sum((0, 2, 3)).to(act_weight.dtype)
    else:
        gz = ACT_SPECS[name].reference_backward(z, g, alpha)  # z has the output's sign and range
        grad_a = weight.new_empty(0)
    # BatchNorm's own backward: with this batch's statistics, or (eval) with fixed ones, which it
    # reads as running statistics, 1 / sqrt(var + eps) with var = invstd ** -2 and eps = 0.
    fixed = (None, None) if training else (mean, invstd.pow(-2))
    grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
        gz, x.to(acc), weight.to(acc), *fixed, mean, invstd, training, 0.0, [True, True, True]
    )
    return like(grad_x.to(x.dtype), x), grad_w.to(weight.dtype), grad_b.to(bias.dtype), grad_a


@bn_act_backward.register_fake
def _bn_act_backward_fake(x, grad, mean, invstd, weight, bias, act_weight, training, name, alpha):
    grad_a = torch.empty_like(act_weight) if act_weight is not None else weight.new_empty(0)
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias), grad_a


def _setup_context(ctx, inputs, output) -> None:
    x, mean, invstd, weight, bias, act_weight, training, name, alpha = inputs
    ctx.training, ctx.name, ctx.alpha = training, name, alpha
    ctx.save_for_backward(x, mean, invstd, weight, bias, act_weight)


def _train_setup_context(ctx, inputs, output) -> None:
    x, _, _, weight, bias, act_weight, _, _, name, alpha = inputs
    _, mean, invstd = output
    ctx.mark_non_differentiable(mean, invstd)
    ctx.training, ctx.name, ctx.alpha = True, name, alpha
    ctx.save_for_backward(x, mean, invstd, weight, bias, act_weight)


def _backward_with(backward: Callable) -> Callable:
    """Backward of both forwards: their first six inputs are x, two per-channel tensors, weight,
    bias and act_weight (differentiable: x and the last three); grads of the train op's
    statistics outputs are ignored (they are not differentiable)."""

    def _backward(ctx, grad: torch.Tensor, *statistics_grads):
        x, mean, invstd, weight, bias, act_weight = ctx.saved_tensors
        grad_x, grad_w, grad_b, grad_a = backward(
            x, grad, mean, invstd, weight, bias, act_weight, ctx.training, ctx.name, ctx.alpha
        )
        grads = grad_x, None, None, grad_w, grad_b, grad_a if act_weight is not None else None
        return grads + (None,) * (len(ctx.needs_input_grad) - len(grads))

    return _backward


BN_STATS = Routed(bn_stats, _bn_stats_triton, _bn_stats_cpu)
BN_ACT_BACKWARD = Routed(bn_act_backward, _bn_act_backward_triton, _bn_act_backward_cpu)
BN_ACT = Routed(bn_act, _bn_act_triton, _bn_act_cpu, _setup_context, _backward_with, BN_ACT_BACKWARD)
BN_ACT_TRAIN = Routed(
    _bn_act_train_composed,
    _bn_act_train_triton,
    _bn_act_train_cpu,
    _train_setup_context,
    _backward_with,
    BN_ACT_BACKWARD,
)
