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
"""

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import accumulate_dtype
from .modules import get_activation
from .ops import bn_act as _ops
from .ops.common import check_float, check_same_device, compiling, exporting
from .recompute import tag


def activation_spec(act: nn.Module) -> tuple[str, float, torch.Tensor | None] | None:
    """(name, alpha, PReLU weight) of a supported activation module (torch.nn's or ours), or
    None: SiLU, Mish, Hardswish, LeakyReLU, ReLU6, ReLU, GELU (both approximations), PReLU, and
    ``nn.Identity`` (BatchNorm alone)."""
    if isinstance(act, nn.PReLU):
        return "prelu", 0.0, act.weight
    if isinstance(act, nn.LeakyReLU):
        return "leaky_relu", float(act.negative_slope), None
    if isinstance(act, nn.GELU):
        return ("gelu" if act.approximate == "none" else "gelu_tanh"), 0.0, None
    simple = {
        nn.SiLU: "silu",
        nn.Mish: "mish",
        nn.Hardswish: "hardswish",
        nn.ReLU6: "relu6",
        nn.ReLU: "relu",
        nn.Identity: "identity",
    }
    for cls, name in simple.items():
        if isinstance(act, cls):
            return name, 0.0, None
    return None


def _channel_vector(t: torch.Tensor | None, channels: int, arg: str, x: torch.Tensor) -> None:
    if t is None:
        return
    check_float(t, arg)
    check_same_device(x, t, "input", arg)
    if t.numel() != channels:
        raise ValueError(f"{arg} has {t.numel()} elements but input has {channels} channels")


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
    given (``momentum`` is the update factor). ``recompute=True`` tags the output so that our
    ops reading it (``cat_conv.conv2d``, ``cat_conv2d``, ``max_pool2d``) recompute it in
    backward instead of keeping it (``rtdetr_fused.recompute``; eager autograd only).
    """
    check_float(input, "input")
    if input.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    if act not in _ops.NAMES:
        raise ValueError(f"unknown activation {act!r}; known: {', '.join(_ops.NAMES)}")
    if (act == "prelu") != (act_weight is not None):
        raise ValueError("act_weight must be given for act='prelu' and only then")
    if exporting() or input.numel() == 0:  # exporters see standard ops; torch handles empty batches
        y = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        return torch.prelu(y, act_weight) if act == "prelu" else _ops.ACT_SPECS[act].reference(y, alpha)
    c = input.shape[1]
    for t, arg in ((running_mean, "running_mean"), (running_var, "running_var"), (weight, "weight"), (bias, "bias")):
        _channel_vector(t, c, arg, input)
    if act_weight is not None and act_weight.numel() != 1:
        _channel_vector(act_weight, c, "act_weight", input)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be both given or both None")
    if not training and running_mean is None:
        raise ValueError("training=False needs running_mean and running_var")
    if training and input.numel() // max(c, 1) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.shape}")

    acc = accumulate_dtype(input)
    weight = weight.reshape(c).contiguous() if weight is not None else input.new_ones(c, dtype=acc)
    bias = bias.reshape(c).contiguous() if bias is not None else input.new_zeros(c, dtype=acc)
    if act_weight is not None:
        act_weight = act_weight.reshape(-1).expand(c).contiguous()  # autograd sums a shared weight's grad
    if training:
        out, mean, invstd = _ops.BN_ACT_TRAIN(
            input, running_mean, running_var, weight, bias, act_weight, float(momentum), float(eps), act, float(alpha)
        )
    else:
        mean, invstd = running_mean.to(acc), torch.rsqrt(running_var.to(acc) + eps)
        out = _ops.BN_ACT(input, mean, invstd, weight, bias, act_weight, training, act, float(alpha))
    tensors, args = (input, mean, invstd, weight, bias, act_weight), (training, act, float(alpha))
    if recompute and out.requires_grad and not compiling():
        tag(out, _ops.BN_ACT.direct, tensors, args)
    return out


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
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats
    name, alpha, act_weight = spec
    return batch_norm_act(
        input,
        bn.running_mean if keep else None,
        bn.running_var if keep else None,
        bn.weight,
        bn.bias,
        use_batch_stats,
        factor,
        bn.eps,
        name,
        alpha,
        act_weight,
        recompute,
    )


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
        return batch_norm_act_module(self, self.act, input)
