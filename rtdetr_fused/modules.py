"""Drop-in ``torch.nn`` activation modules backed by the fused kernels.

Each subclasses its ``torch.nn`` counterpart, so constructor signature, defaults,
``extra_repr``, state_dict keys and ``isinstance`` checks are torch's; only ``forward``
changes. A state_dict moves between ``torch.nn.PReLU`` and ``PReLU`` both ways.
"""

import torch
from torch import nn

from . import functional as F


class SiLU(nn.SiLU):
    """SiLU(x) = x * sigmoid(x). Backward saves the input (a clone of it when in place)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.silu(input, self.inplace)


class Mish(nn.Mish):
    """Mish(x) = x * tanh(softplus(x)). Backward saves the input (a clone when in place)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.mish(input, self.inplace)


class Hardswish(nn.Hardswish):
    """Hardswish(x) = x * ReLU6(x + 3) / 6. Backward saves the input (a clone when in place)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.hardswish(input, self.inplace)


def _with_bitmask(extra_repr: str, bitmask: bool) -> str:
    return ", ".join(part for part in (extra_repr, "bitmask=True" if bitmask else "") if part)


class LeakyReLU(nn.LeakyReLU):
    """LeakyReLU(x) = x if x > 0 else negative_slope * x. Backward saves the output (no
    extra memory in place); with a negative slope, the input.

    ``bitmask=True``: backward from one bit per element (where the derivative is 1) instead:
    1/16 of a bfloat16 map kept instead of a map. A saving only where nothing after the
    activation keeps its output: a following conv, linear or BatchNorm saves it anyway, and
    then saving the output costs nothing extra (the default). Out of place only.
    """

    bitmask = False  # modules pickled before the option load without it

    def __init__(self, negative_slope: float = 1e-2, inplace: bool = False, bitmask: bool = False) -> None:
        super().__init__(negative_slope, inplace)
        self.bitmask = bitmask

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(input, self.negative_slope, self.inplace, self.bitmask)

    def extra_repr(self) -> str:
        return _with_bitmask(super().extra_repr(), self.bitmask)


class ReLU6(nn.ReLU6):
    """ReLU6(x) = min(max(x, 0), 6). Backward saves the output, or with ``bitmask=True`` one
    bit per element (see ``LeakyReLU``)."""

    bitmask = False

    def __init__(self, inplace: bool = False, bitmask: bool = False) -> None:
        super().__init__(inplace)
        self.bitmask = bitmask

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu6(input, self.inplace, self.bitmask)

    def extra_repr(self) -> str:
        return _with_bitmask(super().extra_repr(), self.bitmask)


class ReLU(nn.ReLU):
    """ReLU(x) = max(x, 0). Backward saves the output, or with ``bitmask=True`` one bit per
    element (see ``LeakyReLU``)."""

    bitmask = False

    def __init__(self, inplace: bool = False, bitmask: bool = False) -> None:
        super().__init__(inplace)
        self.bitmask = bitmask

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu(input, self.inplace, self.bitmask)

    def extra_repr(self) -> str:
        return _with_bitmask(super().extra_repr(), self.bitmask)


class GELU(nn.GELU):
    """GELU(x) = x * Phi(x), or with ``approximate="tanh"``
    0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))). Backward saves the input."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.gelu(input, self.approximate)


class PReLU(nn.PReLU):
    """PReLU(x) = x if x > 0 else weight[c] * x, one learnable ``weight`` per channel (dim 1)
    when ``num_parameters > 1``, else one for all. Backward saves the input and the weight
    and computes grad_weight inside the kernel, deterministically."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.prelu(input, self.weight)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": SiLU,
    "mish": Mish,
    "hardswish": Hardswish,
    "leaky_relu": LeakyReLU,
    "relu6": ReLU6,
    "prelu": PReLU,
    "relu": ReLU,
    "gelu": GELU,
}

TORCH_NN: dict[type[nn.Module], type[nn.Module]] = {cls: cls.__bases__[0] for cls in ACTIVATIONS.values()}
"""Each of our classes -> the torch.nn class it subclasses (ours change only ``forward``)."""


def get_activation(name: str, **kwargs) -> nn.Module:
    """Build an activation module by plain name, e.g. ``get_activation("leaky_relu",
    negative_slope=0.1)``; the keyword arguments are the torch.nn module's."""
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[key](**kwargs)
