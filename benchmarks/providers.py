"""What is measured: one row per activation, one row per provider, and the bytes each pass moves.

Every provider builds an ``nn.Module`` for an (activation, channels) pair, so the sections
time, move and inspect all of them the same way; adding a provider is one row of
``PROVIDERS``.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from rtdetr_fused import ACTIVATIONS, activations
from rtdetr_fused.modules import TORCH_NN


@dataclass(frozen=True)
class Activation:
    """A row of ``rtdetr_fused.activations.TABLE`` as the harness builds it: ours, torch.nn's (the
    base class of ours), and the composed formula (``row.composed``), which gets the torch.nn
    module for its parameters (PReLU's weight)."""

    row: activations.Activation

    @property
    def name(self) -> str:
        return self.row.name

    def module_kwargs(self, channels: int) -> dict:
        return {"num_parameters": channels} if self.row.per_channel else {}

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


ARTICLE_PRELU = "torch.max(input, 0) + self.weight * torch.min(input, 0)"

ACTIVATION_TABLE: dict[str, Activation] = {name: Activation(activations.TABLE[name]) for name in ACTIVATIONS}
"""Every activation module of rtdetr_fused (one per torch.nn class), by name."""


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
        self.formula = activation.row.composed

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
