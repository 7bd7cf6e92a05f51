"""Input checks, layout handling and the choice between Triton and PyTorch, shared by all ops."""

import functools
import os

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


STUBBED = False
"""Set by ``rtdetr_fused.testing.stub_launches``: CPU tensors take the kernels' route."""


# os.environ's own mapping, read directly: ``os.environ.get`` encodes its key on every call
# (1.4 us, more than an activation's Python path may spend), and the variable is read live, as
# tests switch it.
_ENVIRON, _INTERPRET, _ONE = os.environ._data, os.environ.encodekey("TRITON_INTERPRET"), os.environ.encodevalue("1")


def interpreting() -> bool:
    """True when Triton's interpreter runs kernels on CPU tensors (``TRITON_INTERPRET=1``)."""
    return _ENVIRON.get(_INTERPRET) == _ONE


def on_kernels(x: torch.Tensor) -> bool:
    """Whether ops on ``x`` launch our Triton kernels: CUDA tensors, and CPU tensors under the
    interpreter or ``stub_launches``. Other CPU tensors compute with PyTorch's ops."""
    return x.is_cuda or STUBBED or interpreting()


class ArgumentError(ValueError, RuntimeError):
    """A bad argument where torch raises ``RuntimeError`` for the same misuse (devices, channel
    counts, missing running statistics): code that catches torch's error catches ours."""


class DtypeError(TypeError, NotImplementedError):
    """An unsupported dtype, where torch raises ``NotImplementedError`` (the input) or
    ``RuntimeError`` (a parameter; ``NotImplementedError`` is one)."""


def check_float(t: torch.Tensor, arg: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise DtypeError(f"{arg} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_same_device(a: torch.Tensor, b: torch.Tensor, arg_a: str, arg_b: str) -> None:
    if a.device != b.device:
        raise ArgumentError(f"{arg_b} is on {b.device} but {arg_a} is on {a.device}")


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
    if t.stride() == tuple(stride) or all(a == b for n, a, b in zip(t.shape, t.stride(), stride) if n != 1):
        return t  # the same strides (0.2 us), or strides that differ only on dims of size 1
    return torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device).copy_(t)


def like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` laid out as ``torch.empty_like(ref)``, copying only when the strides differ."""
    if t.stride() == ref.stride() and is_dense(ref):
        return t  # the usual case, a gradient laid out as the tensor saved for it
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
    H200), which would trace the reference ops into every compiled graph. (``torch.jit``'s
    function, not ``torch._C._is_tracing``, which Dynamo breaks its graph on.)"""
    return torch.jit.is_tracing() or getattr(torch.compiler, "_is_exporting_flag", False)


compiling = torch.compiler.is_compiling
"""True while torch.compile (Dynamo) traces: the ops then go through the dispatcher as custom
ops, which it can see. Eager calls skip the dispatcher: there the custom op and its autograd
wrapper cost the host several times a small map's kernels (250 us per forward+backward on the
H200's host, against 75 us for torch.nn). torch's own function, not a wrapper: one call less."""
