"""Input checks, layout handling and the choice between Triton and PyTorch, shared by all ops."""

import functools
import os
from collections.abc import Callable

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def interpreting() -> bool:
    """True when Triton's interpreter runs kernels on CPU tensors (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_float(t: torch.Tensor, arg: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{arg} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_same_device(a: torch.Tensor, b: torch.Tensor, arg_a: str, arg_b: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{arg_b} is on {b.device} but {arg_a} is on {a.device}")


def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: the elements fill ``numel`` consecutive storage slots."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return True  # the usual layouts, answered in C++: 0.1 us against 1.3 for the loop below
    expected = 1
    dims = sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1)
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when dense (any memory format); else one copy in ``empty_like``'s layout."""
    return t if is_dense(t) else torch.empty_like(t).copy_(t)


def with_strides(t: torch.Tensor, stride: list[int]) -> torch.Tensor:
    """``t`` with ``stride`` (a dense layout of its shape), copying only when they differ."""
    if all(a == b for n, a, b in zip(t.shape, t.stride(), stride) if n != 1):
        return t
    return torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device).copy_(t)


def like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` laid out as ``torch.empty_like(ref)``, copying only when the strides differ."""
    return with_strides(t, (ref if is_dense(ref) else torch.empty_like(ref)).stride())


def device_programs(t: torch.Tensor) -> int:
    """Programs that fill the device: 4 per SM on a GPU, a handful in the interpreter."""
    return 4 * _multiprocessors(t.device.index) if t.is_cuda else 4


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def exporting() -> bool:
    """True under torch.jit.trace (the TorchScript ONNX exporter traces too) and torch.export
    (which the dynamo ONNX exporter runs): they get the reference ops.

    Reads torch.compiler's export flag rather than ``torch.compiler.is_exporting()``: Dynamo
    in torch 2.11 folds that call to True under plain torch.compile as well (seen on the
    H200), which would trace the reference ops into every compiled graph."""
    return torch.jit.is_tracing() or getattr(torch.compiler, "_is_exporting_flag", False)


def compiling() -> bool:
    """True while torch.compile (Dynamo) traces: the ops then go through the dispatcher as
    custom ops, which it can see. Eager calls skip the dispatcher (see ``Routed``)."""
    return torch.compiler.is_compiling()


class Routed:
    """A custom op for torch.compile, and the same implementations called directly in eager
    mode: there, the dispatcher and the custom op's autograd wrapper cost the host several
    times what a small map's kernel costs the GPU (250 us per forward+backward on the H200's
    host, against 75 us for torch.nn).

    ``cuda`` and ``cpu`` are the op's kernels (the first argument's device picks one); with
    ``setup_context`` and ``backward`` (the custom op's autograd, written against
    ``backward_op``: called as the custom op under compile, directly in eager), eager calls
    that need a gradient run a plain ``torch.autograd.Function`` over them. ``op`` may instead
    be a function of custom ops with their own autograd, computing what the kernels do: what
    torch.compile traces in place of an eager-only fusion.
    """

    def __init__(
        self,
        op: Callable,
        cuda: Callable,
        cpu: Callable,
        setup_context: Callable | None = None,
        backward: Callable[[Callable], Callable] | None = None,
        backward_op: "Routed | None" = None,
    ):
        self.op, self._cuda, self._cpu = op, cuda, cpu
        self.function = None
        if backward is not None:
            if isinstance(op, torch.library.CustomOpDef):
                op.register_autograd(backward(backward_op.op), setup_context=setup_context)
            self.function = _eager_function(cuda.__name__, self.direct, setup_context, backward(backward_op.direct))

    def direct(self, x: torch.Tensor, *args):
        return (self._cuda if x.is_cuda else self._cpu)(x, *args)

    def __call__(self, *args):
        if compiling():
            return self.op(*args)
        if self.function is not None and torch.is_grad_enabled() and any(_requires_grad(a) for a in args):
            return self.function.apply(*args)
        return self.direct(*args)


def _requires_grad(a: object) -> bool:
    return isinstance(a, torch.Tensor) and a.requires_grad


def _eager_function(name: str, forward: Callable, setup_context: Callable, backward: Callable) -> type:
    """A ``torch.autograd.Function`` running ``forward`` and ``backward`` with the custom op's
    ``setup_context``."""

    def function_forward(ctx, *inputs):
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    methods = {"forward": staticmethod(function_forward), "backward": staticmethod(backward)}
    return type(f"Eager{name}", (torch.autograd.Function,), methods)
