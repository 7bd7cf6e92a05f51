"""Functional forms, with torch.nn.functional's signatures.

Each runs one fused Triton kernel forward and one backward on CUDA tensors (and on CPU
tensors under ``TRITON_INTERPRET=1``), PyTorch's own ops on other CPU tensors, and
PyTorch's ops under tracing and export so exported graphs hold standard operators.
"""

import torch

from .ops import activation as _act
from .ops import prelu as _prelu


def silu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x * sigmoid(x). Saves the input for backward."""
    return _act.apply(input, "silu", 0.0, inplace)


def mish(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x * tanh(softplus(x)), softplus with torch's threshold of 20. Saves the input."""
    return _act.apply(input, "mish", 0.0, inplace)


def hardswish(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x * relu6(x + 3) / 6. Saves the input."""
    return _act.apply(input, "hardswish", 0.0, inplace)


def leaky_relu(
    input: torch.Tensor, negative_slope: float = 0.01, inplace: bool = False, bitmask: bool = False
) -> torch.Tensor:
    """x if x > 0 else negative_slope * x. Saves the output (the input if the slope is
    negative), or with ``bitmask`` one bit per element (out of place)."""
    return _act.apply(input, "leaky_relu", float(negative_slope), inplace, bitmask)


def relu6(input: torch.Tensor, inplace: bool = False, bitmask: bool = False) -> torch.Tensor:
    """min(max(x, 0), 6). Saves the output, or with ``bitmask`` one bit per element."""
    return _act.apply(input, "relu6", 0.0, inplace, bitmask)


def relu(input: torch.Tensor, inplace: bool = False, bitmask: bool = False) -> torch.Tensor:
    """max(x, 0). Saves the output, or with ``bitmask`` one bit per element."""
    return _act.apply(input, "relu", 0.0, inplace, bitmask)


def gelu(input: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """x * Phi(x) (``"none"``) or 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (``"tanh"``).
    Saves the input."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return _act.apply(input, "gelu" if approximate == "none" else "gelu_tanh", 0.0, False)


def prelu(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x if x > 0 else weight[c] * x, c the channel (dim 1), or one weight for all.
    Saves the input and the weight."""
    return _prelu.apply(input, weight)
