"""What is measured: one row per activation, one row per provider, and the bytes each pass moves.

Every provider builds an ``nn.Module`` for an (activation, channels) pair, so the sections
time, move and inspect all of them the same way; adding a provider is one row of
``PROVIDERS``.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_fused import ACTIVATIONS
from rtdetr_fused.modules import TORCH_NN

Formula = Callable[[torch.Tensor, nn.Module], torch.Tensor]


def _per_channel(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return weight.reshape([-1] + [1] * (x.dim() - 2)) if weight.numel() > 1 else weight


@dataclass(frozen=True)
class Activation:
    """An activation: its torch.nn module (the base class of ours), ours, and a composed formula.

    ``formula(x, module)`` gets the torch.nn module for its parameters (PReLU's weight).
    """

    name: str
    formula: Formula
    formula_text: str
    formula_source: str
    kwargs: Mapping[str, object] = field(default_factory=dict)
    per_channel: bool = False

    def module_kwargs(self, channels: int) -> dict:
        kwargs = dict(self.kwargs)
        if self.per_channel:
            kwargs["num_parameters"] = channels
        return kwargs

    @property
    def fused_class(self) -> type[nn.Module]:
        return ACTIVATIONS[self.name]

    @property
    def torch_class(self) -> type[nn.Module]:
        """torch.nn's class: ours subclass it and change only ``forward``."""
        return TORCH_NN[self.fused_class]

    def fused(self, channels: int) -> nn.Module:
        return self.fused_class(**self.module_kwargs(channels))

    def torch_module(self, channels: int) -> nn.Module:
        return self.torch_class(**self.module_kwargs(channels))


ARTICLE = "article"
ARTICLE_PRELU = "torch.max(input, 0) + self.weight * torch.min(input, 0)"

ACTIVATION_TABLE: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("silu", lambda x, m: x * torch.sigmoid(x), "x * torch.sigmoid(x)", ARTICLE),
        Activation("mish", lambda x, m: x * F.softplus(x).tanh(), "x * F.softplus(x).tanh()", ARTICLE),
        Activation(
            "hardswish", lambda x, m: x * torch.clamp(x + 3, 0, 6) / 6, "x * torch.clamp(x + 3, 0, 6) / 6", ARTICLE
        ),
        Activation("leaky_relu", lambda x, m: torch.max(x, m.negative_slope * x), "torch.max(x, slope * x)", ARTICLE),
        Activation("relu6", lambda x, m: torch.clamp(x, 0, 6), "torch.clamp(x, 0, 6)", ARTICLE),
        Activation(
            "prelu",
            lambda x, m: torch.clamp(x, min=0) + _per_channel(m.weight, x) * torch.clamp(x, max=0),
            "torch.clamp(x, min=0) + w * torch.clamp(x, max=0)",
            "article, corrected: its own PReLU formula does not run (see notes)",
            per_channel=True,
        ),
        Activation("relu", lambda x, m: torch.clamp(x, min=0), "torch.clamp(x, min=0)", "not in the article"),
        Activation(
            "gelu",
            lambda x, m: 0.5 * x * (1 + torch.erf(x * 0.7071067811865476)),
            "0.5 * x * (1 + torch.erf(x / sqrt(2)))",
            "not in the article",
        ),
    )
}
assert set(ACTIVATION_TABLE) == set(ACTIVATIONS), "every activation of rtdetr_fused has a row"


def article_prelu_note() -> str:
    """Run the article's PReLU on a tiny tensor and say what happens (it raises)."""
    x, weight = torch.randn(2, 3, 4, 4), torch.full((1,), 0.25)
    try:
        torch.max(x, 0) + weight * torch.min(x, 0)
    except Exception as e:  # the failure is the finding
        outcome = f"raises {type(e).__name__}: {e}"
    else:
        outcome = "ran"
    return (
        f"The article's PReLU, `{ARTICLE_PRELU}`, is wrong: torch.max(input, 0) and torch.min(input, 0) reduce "
        f"over dim 0 and return (values, indices) tuples, not max(x, 0) elementwise; on this machine it {outcome}. "
        "The 'formula' provider runs the corrected `clamp(x, min=0) + w * clamp(x, max=0)`."
    )


class Composed(nn.Module):
    """An activation's composed formula as a module; holds the torch.nn module for its parameters."""

    def __init__(self, activation: Activation, channels: int):
        super().__init__()
        self.inner = activation.torch_module(channels)
        self.formula = activation.formula

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.formula(x, self.inner)


def _compiled(activation: Activation, channels: int) -> nn.Module:
    # Dynamo caches per code object and falls back to eager after a few recompiles; every
    # torch.nn.SiLU shares one forward, so each case starts from a clean cache, with static
    # shapes as a compiled model at a fixed image size sees them.
    torch._dynamo.reset()
    return torch.compile(activation.torch_module(channels), dynamic=False)


@dataclass(frozen=True)
class Provider:
    name: str
    description: str
    build: Callable[[Activation, int], nn.Module]


OURS = "rtdetr_fused"

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(OURS, "this package: one fused Triton kernel forward, one backward", Activation.fused),
        Provider("eager", "torch.nn module (PyTorch's native kernels)", Activation.torch_module),
        Provider("formula", "the article's formula composed of torch ops (autograd through each op)", Composed),
        Provider("compile", "torch.compile of the torch.nn module (default mode, static shapes)", _compiled),
    )
}

PASSES = ("forward", "backward", "forward+backward")

# Tensors each pass must read or write, each the input's size. The saved tensor is the input
# or the output, already counted; a provider that saves more moves more than this minimum.
PASS_TENSORS = {"forward": 2, "backward": 3, "forward+backward": 5}
# Times the parameters (PReLU's weight) are read, or their gradient written, per pass.
PASS_PARAM_TOUCHES = {"forward": 1, "backward": 2, "forward+backward": 3}


def moved_bytes(pass_name: str, numel: int, itemsize: int, param_bytes: int = 0) -> int:
    """Bytes a pass must move at the least: forward reads x and writes y; backward reads the
    saved tensor and grad_output and writes grad_input; forward+backward both."""
    return PASS_TENSORS[pass_name] * numel * itemsize + PASS_PARAM_TOUCHES[pass_name] * param_bytes
