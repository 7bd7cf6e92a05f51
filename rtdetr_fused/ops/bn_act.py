"""BatchNorm2d fused with an activation: the eager autograd Functions ``BatchNormAct`` (given
statistics) and ``BatchNormActTrain`` (this batch's), and the custom ops torch.compile sees:

- ``rtdetr_fused::bn_stats(x, running_mean?, running_var?, momentum, eps) -> (mean, invstd)``:
  the batch statistics per channel, updating the running statistics in place. No autograd:
  it runs on the detached input, and ``bn_act``'s backward differentiates through the
  statistics itself.
- ``rtdetr_fused::bn_act(x, mean, invstd, weight, bias, act_weight?, training, name, alpha)``:
  ``act((x - mean) * invstd * weight + bias)``. ``training`` says the statistics are this
  batch's, which adds their gradient terms.
- ``rtdetr_fused::bn_act_backward``: grad of x, weight, bias and act_weight.

``BatchNormActTrain`` runs training mode's statistics and output in one call (the statistics
on its autograd node): one kernel on small maps (``kernels.bn_act.train_forward``);
torch.compile sees ``bn_stats`` then ``bn_act`` (a custom op that mutates its arguments cannot
have an autograd formula).

``bn_act`` saves ``x``, ``mean``, ``invstd``, ``weight``, ``bias`` (and PReLU's
``act_weight``) for backward, never the output, so a Conv -> BN+act -> Conv chain keeps two
full tensors per block (the conv's input and output). Per-channel tensors are float32 (float64
for float64 input) except ``weight``, ``bias`` and ``act_weight``, which keep their own dtype.
On CPU tensors the ops run the Triton kernels under ``TRITON_INTERPRET=1`` and PyTorch
references otherwise: BatchNorm's own statistics, eval-mode kernel (``_z``) and backward.

A backward with ``create_graph=True`` differentiates the reference forward at the saved tensors
instead of running the kernel (``_grads_graph``), so second derivatives are exact.
"""

import functools

import torch

from ..activations import TABLE, Activation
from ..kernels import accumulate_dtype
from .common import dense, device_programs, like, on_kernels

IDENTITY = Activation("identity", torch.nn.Identity, "x", lambda x, a: x, lambda x, g, a: g)
"""BatchNorm alone (``kernels/formulas.py``'s ``identity_fwd`` and ``identity_bwd``)."""


def row(name: str) -> Activation:
    """The activation ``bn_act`` runs after BatchNorm: a row of the table, or ``IDENTITY``."""
    return IDENTITY if name == "identity" else TABLE[name]


@functools.cache
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
    if on_kernels(x):
        return _bn_stats_triton(x, running_mean, running_var, momentum, eps)
    # BatchNorm's own statistics and running update (3x faster than var_mean over dims 0, 2, 3),
    # without its output (native_batch_norm's costs a fifth more), on running statistics in the
    # accumulation dtype: themselves, or copies written back. 1 / sqrt(var + eps) in float64, as
    # native_batch_norm works it out: the same bits.
    acc = accumulate_dtype(x)
    running = [t.to(acc) if t is not None else None for t in (running_mean, running_var)]
    mean, var = torch.batch_norm_update_stats(x.to(acc), *running, momentum)
    _write_back((running_mean, running_var), running)
    return mean, var.double().add_(eps).rsqrt_().to(acc)


def _write_back(running: tuple, updated: list) -> None:
    """Copy running statistics updated in the accumulation dtype back into their own."""
    for t, u in zip(running, updated):
        if t is not None and u is not t:
            t.copy_(u)


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


@functools.lru_cache(maxsize=64)
def _unit_statistics(c: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeros and ones: running statistics under which BatchNorm's eval kernel computes
    ``x * weight + bias`` (normal tensors, which autograd may save, even if first asked for
    under inference mode)."""
    with torch.inference_mode(False):
        return torch.zeros(c, dtype=dtype, device=device), torch.ones(c, dtype=dtype, device=device)


def _z(x, mean, invstd, weight, bias) -> torch.Tensor:
    """The BN output in the accumulation dtype with PyTorch ops: x * scale + shift, scale =
    weight * invstd and shift = bias - mean * scale, as BatchNorm's own kernel computes it, and
    by that kernel (eval mode on unit statistics, exact): one pass over x (2.5x faster than
    (x - mean) * scale + bias in two), the same bits on every call (a recomputed output), and
    differentiable in every argument (``_grads_graph``)."""
    acc = mean.dtype
    scale = weight.to(acc) * invstd
    shift = torch.addcmul(bias.to(acc), mean, scale, value=-1)
    unit = _unit_statistics(mean.numel(), acc, mean.device)
    return torch.batch_norm(x.to(acc), scale, shift, *unit, False, 0.0, 0.0, False)


@bn_act.register_kernel("cpu")
def _bn_act(x, mean, invstd, weight, bias, act_weight, training, name, alpha) -> torch.Tensor:
    """``bn_act``'s forward on any device, without autograd (also what a recomputed output runs)."""
    if on_kernels(x):
        return _bn_act_triton(x, mean, invstd, weight, bias, act_weight, training, name, alpha)
    return _activated(_z(x, mean, invstd, weight, bias), x, act_weight, name, alpha)


def _activated(z: torch.Tensor, x: torch.Tensor, act_weight, name: str, alpha: float) -> torch.Tensor:
    """The activation of the BN output ``z`` with PyTorch ops, in ``x``'s dtype and layout: one
    definition for the forward and its recomputation, which must give the same bits."""
    return like(row(name).bn_reference(z, alpha, act_weight).to(x.dtype), x)


@bn_act.register_fake
def _bn_act_fake(x, mean, invstd, weight, bias, act_weight, training, name, alpha):
    return torch.empty_like(x)


# --- bn_act_train: training forward, statistics and output in one call ---------------------


def _bn_act_train(x, running_mean, running_var, weight, bias, act_weight, momentum, eps, name, alpha):
    """``(out, mean, invstd)`` of training mode without autograd."""
    if on_kernels(x):
        x = dense(x)
        out = torch.empty_like(x)
        mean, invstd = _kernels().train_forward(
            x, out, running_mean, running_var, momentum, eps, weight, bias, act_weight, name, alpha, device_programs(x)
        )
        return out, mean, invstd
    # BatchNorm's own training forward: the statistics of ``_bn_stats_cpu`` and the output of
    # ``_z`` (the same bits, tests/test_bn_act.py), in one call where those two cost a tenth more.
    acc = accumulate_dtype(x)
    running = [t.to(acc) if t is not None else None for t in (running_mean, running_var)]
    z, mean, invstd = torch.native_batch_norm(x.to(acc), weight.to(acc), bias.to(acc), *running, True, momentum, eps)
    _write_back((running_mean, running_var), running)
    return _activated(z, x, act_weight, name, alpha), mean, invstd


def bn_act_train_compiled(x, running_mean, running_var, weight, bias, act_weight, momentum, eps, name, alpha):
    """``BatchNormActTrain`` as torch.compile sees it."""
    mean, invstd = bn_stats(x.detach(), running_mean, running_var, momentum, eps)
    return bn_act(x, mean, invstd, weight, bias, act_weight, True, name, alpha), mean, invstd


# --- bn_act_backward -------------------------------------------------------------------------


def _backward_kernels(x, grad, mean, invstd, weight, bias, act_weight, training, name, alpha):
    """The grads of x, weight, bias and PReLU's act_weight (None without it) by the kernels."""
    x = dense(x)
    grad = like(grad, x)
    grad_x, grad_w, grad_b = torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)
    grad_a = torch.empty_like(act_weight) if act_weight is not None else None
    _kernels().backward(
        x, grad, grad_x, grad_w, grad_b, grad_a, mean, invstd, weight, bias, act_weight, training, name, alpha,
        device_programs(x),
    )  # fmt: skip
    return grad_x, grad_w, grad_b, grad_a


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
    grad_x, grad_w, grad_b, grad_a = _backward_kernels(
        x, grad, mean, invstd, weight, bias, act_weight, training, name, alpha
    )
    return grad_x, grad_w, grad_b, grad_a if grad_a is not None else weight.new_empty(0)


bn_act_backward = torch.library.custom_op(
    "rtdetr_fused::bn_act_backward", _bn_act_backward_triton, mutates_args=(), device_types="cuda"
)


@bn_act_backward.register_kernel("cpu")
def _bn_act_backward(x, grad, mean, invstd, weight, bias, act_weight, training, name, alpha):
    if on_kernels(x):
        return _bn_act_backward_triton(x, grad, mean, invstd, weight, bias, act_weight, training, name, alpha)
    acc = mean.dtype
    z, g = _z(x, mean, invstd, weight, bias), grad.to(acc)
    if row(name).per_channel:  # PReLU's own backward, one pass (as torch.nn's): grad of z and of the weight
        gz, grad_a = torch.ops.aten._prelu_kernel_backward(g, z, _channel_view(act_weight.to(acc)))
        grad_a = grad_a.sum((0, 2, 3)).to(act_weight.dtype)
    else:
        gz = row(name).reference_backward(z, g, alpha)  # z has the output's sign and range
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


def _save(ctx, x, mean, invstd, weight, bias, act_weight, training: bool, name: str, alpha: float) -> None:
    ctx.training, ctx.name, ctx.alpha = training, name, alpha
    ctx.save_for_backward(x, mean, invstd, weight, bias, act_weight)


def _backward(x, grad, mean, invstd, weight, bias, act_weight, training, name, alpha):
    """``bn_act_backward`` in eager autograd: without an empty grad for a missing act_weight."""
    if on_kernels(x):
        return _backward_kernels(x, grad, mean, invstd, weight, bias, act_weight, training, name, alpha)
    return _bn_act_backward(x, grad, mean, invstd, weight, bias, act_weight, training, name, alpha)


def _grads(ctx, grad: torch.Tensor, backward=_backward) -> tuple:
    """Grads of x, the two statistics (none), weight, bias and act_weight, the inputs both
    Functions start with."""
    x, mean, invstd, weight, bias, act_weight = ctx.saved_tensors
    grad_x, grad_w, grad_b, grad_a = backward(
        x, grad, mean, invstd, weight, bias, act_weight, ctx.training, ctx.name, ctx.alpha
    )
    return grad_x, None, None, grad_w, grad_b, grad_a if act_weight is not None else None


def _grads_graph(ctx, grad: torch.Tensor) -> tuple:
    """``_grads`` with differentiable ops, for a backward with ``create_graph=True``: the reference
    forward at the saved tensors (which keep their graph), differentiated. In training the
    statistics are this batch's, as functions of x written around the saved values: the detached
    terms are zero in value and keep every derivative, and eps is not needed (with c = var + eps
    = invstd ** -2, (c + dv) ** -0.5 = invstd * (1 + invstd ** 2 * dv) ** -0.5)."""
    x, mean, invstd, weight, bias, act_weight = ctx.saved_tensors
    if ctx.training:
        xa = x.to(mean.dtype)
        m, v = xa.mean((0, 2, 3)), xa.var((0, 2, 3), unbiased=False)
        mean = mean + (m - m.detach())
        invstd = invstd * torch.rsqrt(1 + invstd.square() * (v - v.detach()))
    z = _z(x, mean, invstd, weight, bias)
    y = row(ctx.name).bn_reference(z, ctx.alpha, act_weight)
    inputs, needs = (x, weight, bias, act_weight), (ctx.needs_input_grad[0], *ctx.needs_input_grad[3:6])
    wanted = [t for t, need in zip(inputs, needs) if need]
    grads = iter(torch.autograd.grad(y.to(x.dtype), wanted, grad, create_graph=True, allow_unused=True))
    grad_x, grad_w, grad_b, grad_a = (next(grads) if need else None for need in needs)
    return grad_x, None, None, grad_w, grad_b, grad_a


class BatchNormAct(torch.autograd.Function):
    """``act((x - mean) * invstd * weight + bias)`` with given statistics; ``training`` says they
    are this batch's (backward then adds their gradient terms). Saves ``x``, the statistics and
    the parameters, never the output."""

    @staticmethod
    def forward(ctx, x, mean, invstd, weight, bias, act_weight, training, name, alpha) -> torch.Tensor:
        _save(ctx, x, mean, invstd, weight, bias, act_weight, training, name, alpha)
        return _bn_act(x, mean, invstd, weight, bias, act_weight, training, name, alpha)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
            return *_grads_graph(ctx, grad), None, None, None
        return *_grads(ctx, grad), None, None, None


class BatchNormActTrain(torch.autograd.Function):
    """The output of training mode: with this batch's statistics (updating the running ones when
    given), as ``BatchNormAct`` with ``training=True``. The statistics are the node's
    ``statistics`` (``out.grad_fn.statistics``), not outputs: an output more, even marked
    non-differentiable, costs the host 1.5 us per forward+backward."""

    @staticmethod
    def forward(ctx, x, running_mean, running_var, weight, bias, act_weight, momentum, eps, name, alpha):
        out, mean, invstd = _bn_act_train(
            x, running_mean, running_var, weight, bias, act_weight, momentum, eps, name, alpha
        )
        _save(ctx, x, mean, invstd, weight, bias, act_weight, True, name, alpha)
        ctx.statistics = mean, invstd  # for a recompute tag; kept anyway (saved)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if torch.is_grad_enabled():  # create_graph=True
            return *_grads_graph(ctx, grad), None, None, None, None
        return *_grads(ctx, grad), None, None, None, None


bn_act.register_autograd(
    lambda ctx, grad: (*_grads(ctx, grad, bn_act_backward), None, None, None),
    setup_context=lambda ctx, inputs, output: _save(ctx, *inputs),
)
