"""Float64 references and an ulp-based comparison shared by the kernel tests, each activation's
test case, and how the tests build its module."""

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_fused.activations import TABLE

# Each activation's test case: name -> (our functional call, torch's); variants after. Every row of
# activations.TABLE has one (PReLU's, with its weight, are in test_prelu.py).
CASES = {
    "silu": (lambda f, x: f.silu(x), F.silu),
    "mish": (lambda f, x: f.mish(x), F.mish),
    "hardswish": (lambda f, x: f.hardswish(x), F.hardswish),
    "leaky_relu": (lambda f, x: f.leaky_relu(x, 0.2), lambda x: F.leaky_relu(x, 0.2)),
    "leaky_relu_neg": (lambda f, x: f.leaky_relu(x, -0.3), lambda x: F.leaky_relu(x, -0.3)),
    "relu6": (lambda f, x: f.relu6(x), F.relu6),
    "relu": (lambda f, x: f.relu(x), F.relu),
    "gelu": (lambda f, x: f.gelu(x), F.gelu),
    "gelu_tanh": (lambda f, x: f.gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh")),
    # Backward from one bit per element instead of the saved tensor.
    "relu_bitmask": (lambda f, x: f.relu(x, bitmask=True), F.relu),
    "relu6_bitmask": (lambda f, x: f.relu6(x, bitmask=True), F.relu6),
    "leaky_relu_bitmask": (lambda f, x: f.leaky_relu(x, 0.2, bitmask=True), lambda x: F.leaky_relu(x, 0.2)),
    "leaky_relu_neg_bitmask": (lambda f, x: f.leaky_relu(x, -0.3, bitmask=True), lambda x: F.leaky_relu(x, -0.3)),
}

INPLACE = [
    case
    for case in CASES
    if not case.endswith("bitmask")
    and "inplace" in inspect.signature(TABLE[case.removesuffix("_neg")].torch_nn).parameters
]
"""The cases whose module has an in-place form."""


def module_kwargs(name: str, channels: int) -> dict:
    """Arguments of the module of row ``name`` in the tests: the row's ``when``, a scalar parameter
    of 0.25 (exact in float32, as the kernels' constexpr slope is), one weight per channel."""
    row, kwargs = TABLE[name], dict(TABLE[name].when)
    if row.per_channel:
        kwargs["num_parameters"] = channels
    elif row.alpha:
        kwargs[row.alpha] = 0.25
    return kwargs


def torch_module(name: str, channels: int) -> nn.Module:
    """torch.nn's module of row ``name`` (``module_kwargs``); "identity": BatchNorm alone."""
    if name == "identity":
        return nn.Identity()
    return TABLE[name].torch_nn(**module_kwargs(name, channels))


# Largest distance, in representable values of the output dtype, from the float64 result
# rounded to that dtype. fp16/bf16: one step (bf16 stores truncate in the interpreter).
MAX_ULP = {torch.float64: 4, torch.float32: 8, torch.float16: 1, torch.bfloat16: 1}
# Cancellation (a small result of large terms) is judged against the inputs' size instead.
COMPUTE_EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.float16: 2.0**-23, torch.bfloat16: 2.0**-23}

INT_OF = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def ordered_int(t: torch.Tensor) -> torch.Tensor:
    """Map floats to integers whose order and differences count representable values."""
    bits = t.contiguous().view(INT_OF[t.dtype]).to(torch.int64)
    magnitude_mask = (1 << (t.dtype.itemsize * 8 - 1)) - 1
    return torch.where(bits < 0, -(bits & magnitude_mask), bits)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (ordered_int(a) - ordered_int(b)).abs()


def step(t: torch.Tensor, n: int) -> torch.Tensor:
    """The value ``n`` representable steps above ``t`` (below for negative ``n``)."""
    i = ordered_int(t) + n
    sign_bit = torch.iinfo(INT_OF[t.dtype]).min  # sign-extended: the same low bits
    bits = torch.where(i < 0, (-i) | sign_bit, i)
    return bits.to(INT_OF[t.dtype]).view(t.dtype)


def edge_values(dtype: torch.dtype, subnormals: bool = True) -> torch.Tensor:
    """0, -0, +-inf, nan, each formula's thresholds and their neighbours, the dtype's extremes.

    ``subnormals=False`` drops 0's neighbours: Triton's interpreter mangles bf16 subnormals
    (1 becomes 0, 11 becomes 64 in the bits), which the GPU converts exactly.
    """
    info = torch.finfo(dtype)
    points = torch.tensor([0.0, 20.0, -20.0, 3.0, -3.0, 6.0, 1.0, -1.0, 88.0, -88.0], dtype=dtype)
    around = torch.cat([step(points, -1), points, step(points, 1)])
    if not subnormals:
        around = around[(around == 0) | (around.abs() >= info.tiny)]
    special = [-0.0, float("inf"), -float("inf"), float("nan"), info.max, -info.max, info.tiny, -info.tiny, 1e4, -1e4]
    return torch.cat([around, torch.tensor(special, dtype=dtype)])


def assert_matches(out: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor, what: str) -> None:
    """``out`` (any float dtype) against the float64 ``ref``.

    Same NaN and infinity pattern; elsewhere within MAX_ULP of ``ref`` rounded to out's
    dtype, or within a few compute-dtype epsilons of ``scale`` (the inputs' magnitude).
    """
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert ref.dtype == torch.float64
    o, r = out.detach().cpu(), ref.detach().cpu()
    o64 = o.double()
    nan_o, nan_r = o64.isnan(), r.isnan()
    assert torch.equal(nan_o, nan_r), f"{what}: NaN at {(nan_o != nan_r).nonzero()[:5].tolist()}"
    r_rounded = r.to(o.dtype)
    bad = ~nan_r & (ulp_distance(o, r_rounded) > MAX_ULP[o.dtype])
    bad &= ~((o64 - r).abs() <= 8 * COMPUTE_EPS[o.dtype] * scale.cpu())
    bad &= ~(o64 == r)  # equal infinities
    if bad.any():
        i = bad.nonzero()[:5]
        idx = tuple(i.T)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {o.numel()} elements off, e.g. at {i.tolist()}: "
            f"got {o64[idx].tolist()}, want {r[idx].tolist()}"
        )


def reference(fn, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and grad_input of torch's ``fn`` in float64, on CPU."""
    x64 = x.detach().cpu().double().requires_grad_()
    y = fn(x64)
    (gx,) = torch.autograd.grad(y, x64, g.detach().cpu().double())
    return y.detach(), gx


def magnitude(*ts: torch.Tensor) -> torch.Tensor:
    """Elementwise product of max(1, |t|), NaN/inf treated as 1: the scale of the terms."""
    out = torch.ones(ts[0].shape, dtype=torch.float64)
    for t in ts:
        a = t.detach().cpu().double().abs()
        out = out * torch.where(a.isfinite(), a.clamp(min=1.0), 1.0)
    return out
