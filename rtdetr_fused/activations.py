"""The activations: one row each, the only list of them.

Everything else is derived from ``TABLE``: the Triton formulas are ``<name>_fwd`` and
``<name>_bwd`` of ``rtdetr_fused/kernels/formulas.py`` (found by name), the autograd ops read a
row's references and what backward saves, ``modules`` builds one drop-in subclass per torch.nn
class and ``functional`` one function per row, ``bn_act`` maps a module to its row, and the tests
and the benchmark harness enumerate the rows.

Adding an activation: two ``@triton.jit`` formulas, one row here, one test case in
``tests/reference.py`` (README, "Adding an activation").
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

aten = torch.ops.aten
Tensor = torch.Tensor


def _never(alpha: float) -> bool:
    return False


def _always(alpha: float) -> bool:
    return True


@dataclass(frozen=True)
class Activation:
    """One activation and everything the package knows of it.

    The PyTorch references define the numbers: ``reference(x, alpha)`` is the forward,
    ``reference_backward(saved, grad, alpha)`` grad_input from what backward saves, which is
    the output where ``saves_output(alpha)`` (then an interior Conv -> act -> Conv block keeps
    one tensor, shared with the next conv, instead of two, and in place needs no clone), else
    the input. ``alpha`` is the module attribute named by ``alpha`` (LeakyReLU's
    ``negative_slope``), or 0; PReLU's is its ``weight``.
    """

    name: str
    torch_nn: type[nn.Module]
    """torch.nn's class: ours subclasses it and changes only ``forward``."""
    formula: str
    reference: Callable[[Tensor, float], Tensor]
    reference_backward: Callable[[Tensor, Tensor, float], Tensor]
    aliases: tuple[str, ...] = ()
    """Other names ``get_activation`` accepts (timm's; torch.nn's class name in lower case is
    accepted for every class)."""
    alpha: str | None = None
    when: Mapping[str, object] = field(default_factory=dict)
    """Attributes of the torch.nn module that select this row among its class's (GELU's
    ``approximate``); ``get_activation(name)`` builds the class with them. The first row of a
    class names its module (``modules.ACTIVATIONS``)."""
    saves_output: Callable[[float], bool] = _never
    bitmask: bool = False
    """The derivative takes two values, 1 or alpha, so one bit per element holds it."""
    per_channel: bool = False
    """PReLU: alpha is a learnable weight, one per channel (its own op, ``ops/prelu.py``)."""
    torch_saves_output: bool = False
    """What PyTorch's own op saves: where it saves what ours does, ``policy.native`` may run it."""
    torch_as_fast: bool = False
    """PyTorch's kernels run as fast as ours on the device (H200, 2026-11-30): ours can win only
    where the device, not the host, sets the pace (``policy.native``)."""
    composed: Callable[[Tensor, nn.Module], Tensor] | None = None
    """The formula as PyTorch ops, as a user writes it without fused kernels (the benchmark's
    "composed" provider); ``None`` for a class's later rows."""

    def bn_reference(self, z: Tensor, alpha: float, weight: Tensor | None) -> Tensor:
        """The forward after BatchNorm: ``weight`` is PReLU's, else None."""
        return self.reference(z, weight.to(z.dtype) if self.per_channel else alpha)


def weight_view(x: Tensor, weight: Tensor) -> Tensor:
    """PReLU's weight broadcastable against ``x``: one per channel on dim 1, or a single one."""
    if weight.numel() == 1:
        return weight.reshape([])
    return weight.reshape([-1] + [1] * (x.dim() - 2))


_ROWS = (
    Activation(
        "silu",
        nn.SiLU,
        "x * sigmoid(x)",
        lambda x, a: F.silu(x),
        lambda x, g, a: aten.silu_backward(g, x),
        aliases=("swish",),
        torch_as_fast=True,
        composed=lambda x, m: x * torch.sigmoid(x),
    ),
    Activation(
        "mish",
        nn.Mish,
        "x * tanh(softplus(x))",
        lambda x, a: F.mish(x),
        lambda x, g, a: aten.mish_backward(g, x),
        composed=lambda x, m: x * F.softplus(x).tanh(),
    ),
    Activation(
        "hardswish",
        nn.Hardswish,
        "x * relu6(x + 3) / 6",
        lambda x, a: F.hardswish(x),
        lambda x, g, a: aten.hardswish_backward(g, x),
        aliases=("hard_swish",),
        torch_as_fast=True,
        composed=lambda x, m: x * torch.clamp(x + 3, 0, 6) / 6,
    ),
    Activation(
        "leaky_relu",
        nn.LeakyReLU,
        "x if x > 0 else negative_slope * x",
        lambda x, a: F.leaky_relu(x, a),
        # The saved tensor has the input's sign (the output when alpha >= 0, else the input).
        lambda s, g, a: aten.leaky_relu_backward(g, s, a, False),
        alpha="negative_slope",
        saves_output=lambda a: a >= 0,
        bitmask=True,
        composed=lambda x, m: torch.max(x, m.negative_slope * x),
    ),
    Activation(
        "relu6",
        nn.ReLU6,
        "min(max(x, 0), 6)",
        lambda x, a: F.relu6(x),
        lambda y, g, a: aten.hardtanh_backward(g, y, 0.0, 6.0),
        saves_output=_always,
        bitmask=True,
        composed=lambda x, m: torch.clamp(x, 0, 6),
    ),
    Activation(
        "prelu",
        nn.PReLU,
        "x if x > 0 else weight[c] * x",
        lambda x, w: torch.prelu(x, w),
        lambda x, g, w: torch.where(x > 0, g, weight_view(x, w) * g),
        alpha="weight",
        per_channel=True,
        composed=lambda x, m: torch.clamp(x, min=0) + weight_view(x, m.weight) * torch.clamp(x, max=0),
    ),
    Activation(
        "relu",
        nn.ReLU,
        "max(x, 0)",
        lambda x, a: F.relu(x),
        lambda y, g, a: aten.threshold_backward(g, y, 0),
        saves_output=_always,
        bitmask=True,
        torch_saves_output=True,
        torch_as_fast=True,
        composed=lambda x, m: torch.clamp(x, min=0),
    ),
    Activation(
        "gelu",
        nn.GELU,
        "x * Phi(x), Phi the standard normal CDF",
        lambda x, a: F.gelu(x),
        lambda x, g, a: aten.gelu_backward(g, x),
        when={"approximate": "none"},
        torch_as_fast=True,
        composed=lambda x, m: 0.5 * x * (1 + torch.erf(x * 0.7071067811865476)),
    ),
    Activation(
        "gelu_tanh",
        nn.GELU,
        "0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))",
        lambda x, a: F.gelu(x, approximate="tanh"),
        lambda x, g, a: aten.gelu_backward(g, x, approximate="tanh"),
        when={"approximate": "tanh"},
        torch_as_fast=True,
    ),
)

TABLE: Mapping[str, Activation] = MappingProxyType({row.name: row for row in _ROWS})
"""Name -> row, in the order above."""
