"""Functional forms, with torch.nn.functional's signatures: one per module of ``modules``,
taking the input and the module's constructor arguments (``prelu``: the input and the weight).

Each runs one fused Triton kernel forward and one backward on CUDA tensors (and on CPU
tensors under ``TRITON_INTERPRET=1``), PyTorch's own ops on other CPU tensors, and
PyTorch's ops under tracing and export so exported graphs hold standard operators. Built from
``activations.TABLE``: ``silu``, ``mish``, ``hardswish``, ``leaky_relu``, ``relu6``, ``prelu``,
``relu``, ``gelu``.
"""

import inspect
from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import nn

from .modules import ACTIVATIONS, ROWS, _saves
from .ops import prelu as _prelu


def prelu(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _prelu.apply(input, weight)


def _functional(name: str, cls: type[nn.Module]) -> Callable[..., torch.Tensor]:
    """``cls``'s forward as a function of the input and the constructor's arguments."""
    rows = ROWS[cls.__bases__[0]]
    if rows[0].per_channel:
        fn = prelu
    else:
        signature = inspect.signature(cls)
        input = inspect.Parameter("input", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=torch.Tensor)

        def fn(input: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return cls.forward(SimpleNamespace(**bound.arguments), input)

        fn.__signature__ = signature.replace(
            parameters=[input, *signature.parameters.values()], return_annotation=torch.Tensor
        )
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"{' or '.join(row.formula for row in rows)}. Backward saves {_saves(rows)}."
    return fn


globals().update({name: _functional(name, cls) for name, cls in ACTIVATIONS.items()})  # silu, mish, ...

__all__ = list(ACTIVATIONS)
