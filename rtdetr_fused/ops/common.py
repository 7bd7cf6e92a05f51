"""Input checks, layout handling and the choice between Triton and PyTorch, shared by all ops."""

import os

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


def like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` laid out as ``torch.empty_like(ref)``, copying only when the strides differ."""
    if not is_dense(ref):
        ref = torch.empty_like(ref)
    if all(a == b for n, a, b in zip(ref.shape, t.stride(), ref.stride()) if n != 1):
        return t
    return torch.empty_like(ref, dtype=t.dtype).copy_(t)


def device_programs(t: torch.Tensor) -> int:
    """Programs that fill the device: 4 per SM on a GPU, a handful in the interpreter."""
    if t.is_cuda:
        return 4 * torch.cuda.get_device_properties(t.device).multi_processor_count
    return 4


def exporting() -> bool:
    """True under torch.jit.trace, torch.onnx.export and torch.export: they get the reference ops."""
    is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or is_exporting()
