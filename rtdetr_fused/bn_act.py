"""BatchNorm2d + activation in one fused op, for training memory.

In eager PyTorch a Conv -> BatchNorm2d -> activation block keeps three full tensors for
backward (conv output, BN output, activation output). The fused op keeps only the conv
output plus per-channel statistics and recomputes the BN output in backward, so a block
keeps two (its input, saved by the conv, and the conv output), for every activation.
Forward reads the input twice and writes once; backward reads input and gradient twice and
writes once.

``nn.BatchNorm2d`` semantics throughout: ``eps``, ``momentum`` (``None``: cumulative
average), unbiased running variance, ``num_batches_tracked``, ``affine``,
``track_running_stats``, running statistics in eval mode.

Autograd: the fused Functions' backward is the kernel at first order and differentiable PyTorch
ops under ``create_graph=True``; under forward-mode AD and torch.func transforms the calls run
``F.batch_norm`` and the activation's reference, as torch.nn does (and refuse what it refuses,
e.g. vmap's in-place running-statistics update on unbatched buffers).
"""

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .activations import TABLE, Activation
from .kernels import accumulate_dtype
from .modules import SELECTORS, get_activation, selector
from .ops import bn_act as _ops
from .ops.activation import transformed
from .ops.common import FLOAT_DTYPES, ArgumentError, check_float, check_same_device, compiling, exporting
from .recompute import tag

_SELECTORS = SELECTORS | {nn.Identity: selector((_ops.IDENTITY,))}
_READERS: dict[type, Callable[[nn.Module], Activation | None] | None] = {}
"""Each module class seen -> its nearest torch.nn base's row selector, found once."""


def activation_spec(act: nn.Module) -> tuple[str, float, torch.Tensor | None] | None:
    """(name, alpha, PReLU's weight) of a module of ``activations.TABLE`` (torch.nn's or ours), or
    None: SiLU, Mish, Hardswish, LeakyReLU, ReLU6, ReLU, GELU (both approximations), PReLU, and
    ``nn.Identity`` (BatchNorm alone)."""
    cls = type(act)
    if cls not in _READERS:
        _READERS[cls] = next((_SELECTORS[base] for base in cls.__mro__ if base in _SELECTORS), None)
    select = _READERS[cls]
    row = select(act) if select is not None else None
    if row is None:
        return None
    if row.per_channel:
        return row.name, 0.0, getattr(act, row.alpha)
    return row.name, float(getattr(act, row.alpha)) if row.alpha else 0.0, None


def _channel_vector(t: torch.Tensor | None, channels: int, arg: str, x: torch.Tensor) -> None:
    if t is None:
        return
    check_float(t, arg)
    check_same_device(x, t, "input", arg)
    if t.numel() != channels:
        raise ArgumentError(f"{arg} has {t.numel()} elements but input has {channels} channels")


def batch_norm_act(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    act: str = "silu",
    alpha: float = 0.0,
    act_weight: torch.Tensor | None = None,
    recompute: bool = False,
) -> torch.Tensor:
    """``act(F.batch_norm(input, ...))`` with F.batch_norm's arguments, in one fused op.

    ``act``: silu, mish, hardswish, leaky_relu, relu6, relu, gelu, gelu_tanh, prelu or identity;
    ``alpha`` is LeakyReLU's slope; ``act_weight`` PReLU's weight (one, or one per channel).
    ``training=True`` normalizes with the batch statistics and updates the running ones when
    given (``momentum`` is the update factor). ``recompute=True`` tags the output so that ops
    reading it through ``rtdetr_fused.recompute.consume`` (a Conv block's conv, ``cat_conv2d``,
    ``max_pool2d``) recompute it in backward instead of keeping it (eager autograd only).
    """
    check_float(input, "input")
    if input.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    if act not in (*TABLE, "identity"):
        raise ValueError(f"unknown activation {act!r}; known: {', '.join(TABLE)}, identity")
    if _ops.row(act).per_channel != (act_weight is not None):
        raise ValueError(f"act_weight must be given for act={act!r} exactly when it has a weight per channel")
    # Exporters see standard ops; torch handles empty batches, forward-mode AD and torch.func.
    if exporting() or input.numel() == 0 or transformed():
        y = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        return _ops.row(act).bn_reference(y, alpha, act_weight)
    c = input.shape[1]
    for t, arg in ((running_mean, "running_mean"), (running_var, "running_var"), (weight, "weight"), (bias, "bias")):
        _channel_vector(t, c, arg, input)
    if act_weight is not None and act_weight.numel() != 1:
        _channel_vector(act_weight, c, "act_weight", input)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be both given or both None")
    if not training and running_mean is None:
        raise ArgumentError("training=False needs running_mean and running_var")
    if training and input.numel() // max(c, 1) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.shape}")

    acc = accumulate_dtype(input)
    weight = weight.reshape(c).contiguous() if weight is not None else input.new_ones(c, dtype=acc)
    bias = bias.reshape(c).contiguous() if bias is not None else input.new_zeros(c, dtype=acc)
    if act_weight is not None:
        act_weight = act_weight.reshape(-1).expand(c).contiguous()  # autograd sums a shared weight's grad
    args = (training, float(momentum), float(eps), act, float(alpha), recompute)
    return _fused(input, running_mean, running_var, weight, bias, act_weight, *args)


def _fused(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    act_weight: torch.Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    act: str,
    alpha: float,
    recompute: bool,
) -> torch.Tensor:
    """``batch_norm_act`` on checked arguments: C-element contiguous parameters."""
    if compiling():  # the custom ops, which torch.compile sees; no recompute tag
        if training:
            args = (input, running_mean, running_var, weight, bias, act_weight, momentum, eps, act, alpha)
            return _ops.bn_act_train_compiled(*args)[0]
        mean, invstd = _eval_statistics(running_mean, running_var, eps, accumulate_dtype(input))
        return _ops.bn_act(input, mean, invstd, weight, bias, act_weight, False, act, alpha)
    grad = torch.is_grad_enabled() and (
        input.requires_grad
        or weight.requires_grad
        or bias.requires_grad
        or (act_weight is not None and act_weight.requires_grad)
    )
    if training:
        args = (input, running_mean, running_var, weight, bias, act_weight, momentum, eps, act, alpha)
        if not grad:
            return _ops._bn_act_train(*args)[0]
        out = _ops.BatchNormActTrain.apply(*args)
        if recompute:
            mean, invstd = out.grad_fn.statistics
    else:
        mean, invstd = _fixed_statistics(running_mean, running_var, eps, accumulate_dtype(input))
        args = (input, mean, invstd, weight, bias, act_weight, False, act, alpha)
        if not grad:
            return _ops._bn_act(*args)
        out = _ops.BatchNormAct.apply(*args)
    if recompute:
        tag(out, _ops._bn_act, (input, mean, invstd, weight, bias, act_weight), (training, act, alpha))
    return out


def _eval_statistics(
    running_mean: torch.Tensor, running_var: torch.Tensor, eps: float, acc: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval mode's mean and 1 / sqrt(var + eps) in ``acc``."""
    return running_mean.to(acc), torch.rsqrt(running_var.to(acc) + eps)


_FIXED: dict[int, tuple] = {}
"""id(running_var) -> (weak reference to it, running_mean, both versions, eps, dtype, mean, invstd)
of the last eval call; an entry goes with its running_var."""


def _fixed_statistics(
    running_mean: torch.Tensor, running_var: torch.Tensor, eps: float, acc: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_eval_statistics``, worked out again only when the running statistics change (their
    version counters), as they do not between eval calls (two PyTorch kernels, and their
    launches, saved per call). Eager mode only."""
    cached = _FIXED.get(id(running_var))
    if (
        cached is not None
        and cached[0]() is running_var
        and cached[1] is running_mean
        and cached[2] == running_mean._version
        and cached[3] == running_var._version
        and cached[4] == eps
        and cached[5] == acc
    ):
        return cached[6], cached[7]
    with torch.no_grad():
        mean, invstd = _eval_statistics(running_mean, running_var, eps, acc)
    ident = id(running_var)
    gone = weakref.ref(running_var, lambda _: _FIXED.pop(ident, None))
    _FIXED[ident] = (gone, running_mean, running_mean._version, running_var._version, eps, acc, mean, invstd)
    return mean, invstd


_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _own_channel_vector(t: torch.Tensor, channels: int, input: torch.Tensor) -> bool:
    """``t`` (PReLU's weight) is C contiguous elements on ``input``'s device: used as it is."""
    return t.shape == (channels,) and t.is_contiguous() and t.device == input.device


def batch_norm_act_module(
    bn: nn.BatchNorm2d, act: nn.Module, input: torch.Tensor, recompute: bool = False
) -> torch.Tensor:
    """``act(bn(input))`` fused, with ``bn``'s module semantics (``num_batches_tracked``,
    ``momentum=None``, eval mode, ``track_running_stats``), as ``_BatchNorm.forward`` does;
    ``recompute`` as in ``batch_norm_act``."""
    spec = activation_spec(act)
    if spec is None:
        raise ValueError(f"act {type(act).__name__} is not supported; see activation_spec")
    bn._check_input_dim(input)
    try:  # the dicts nn.Module.__getattr__ reads, read directly: 0.3 us a tensor saved
        params, buffers = bn._parameters, bn._buffers
        weight, bias, tracked = params["weight"], params["bias"], buffers["num_batches_tracked"]
        running_mean, running_var = buffers["running_mean"], buffers["running_var"]
    except KeyError:  # a parametrization, or a hook's plain attribute
        weight, bias, running_mean, running_var, tracked = (getattr(bn, k) for k in _STATE)
    training, momentum = bn.training, bn.momentum
    factor = 0.0 if momentum is None else momentum
    if training and bn.track_running_stats and tracked is not None:
        tracked.add_(1)
        if momentum is None:
            factor = 1.0 / float(tracked)
    use_batch_stats = training or (running_mean is None and running_var is None)
    if training and not bn.track_running_stats:
        running_mean = running_var = None
    name, alpha, act_weight = spec
    c = bn.num_features
    if (
        weight is None
        or exporting()
        or transformed()
        or not input.numel()
        or input.shape[1] != c
        or input.dtype not in FLOAT_DTYPES
        or (act_weight is not None and not _own_channel_vector(act_weight, c, input))
    ):  # the checks and conversions of the functional form
        args = (running_mean, running_var, weight, bias, use_batch_stats, factor, bn.eps, name, alpha, act_weight)
        return batch_norm_act(input, *args, recompute)
    if use_batch_stats and input.numel() == c:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.shape}")
    # The module's own C-element parameters and buffers (PReLU's weight one per channel): nothing
    # to check or convert per call.
    return _fused(
        input, running_mean, running_var, weight, bias, act_weight, use_batch_stats, factor, bn.eps, name, alpha,
        recompute,
    )  # fmt: skip


class BatchNormAct2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` followed by an activation, fused: same constructor (plus ``act``),
    same state_dict keys (plus ``act.weight`` for PReLU), same numbers.

    ``act`` is a name of ``rtdetr_fused.get_activation`` (``"silu"``, ``"leaky_relu"``, ...)
    built with ``act_kwargs`` (e.g. ``negative_slope=0.1``, ``num_parameters=C``), or an
    activation module. Backward saves the input and per-channel statistics, not the output.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        act: str | nn.Module = "silu",
        **act_kwargs,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        if act_kwargs and not isinstance(act, str):
            raise TypeError("act_kwargs are for an activation given by name, not a module")
        self.act = get_activation(act, **act_kwargs) if isinstance(act, str) else act
        if activation_spec(self.act) is None:
            raise ValueError(f"act {type(self.act).__name__} is not supported; see activation_spec")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return batch_norm_act_module(self, self._modules["act"], input)  # self.act, without __getattr__
