"""One forward and one backward ``@triton.jit`` formula per activation.

Every formula takes values already upcast to the compute dtype (float32, or float64 for
float64 tensors) and a constexpr ``ALPHA`` (LeakyReLU's slope; unused elsewhere).
Backward formulas take ``s``, the tensor saved by forward (the input, or the output where the
activation's row says ``saves_output``), and the upstream gradient ``g``.

Adding an activation: write ``<name>_fwd`` and ``<name>_bwd`` here and add its row to
``rtdetr_fused/activations.py`` (README, "Adding an activation"). No libdevice: it does not run
in the interpreter, so tanh and softplus are written with ``exp``.
"""

import functools

import triton
import triton.language as tl

# Constants are literals: Triton keeps them in float64 for float64 math (checked in the PTX).


@triton.jit
def silu_fwd(x, ALPHA: tl.constexpr):
    return x * tl.sigmoid(x)


@triton.jit
def silu_bwd(x, g, ALPHA: tl.constexpr):
    s = tl.sigmoid(x)
    return g * s * (1.0 + x * (1.0 - s))


@triton.jit
def _tanh_softplus(x):
    """Return (n, e) with e = exp(min(x, 20)), n = e * (e + 2): tanh(softplus(x)) = n / (n + 2)."""
    e = tl.exp(tl.minimum(x, 20.0))
    n = e * (e + 2.0)
    return n, e


@triton.jit
def mish_fwd(x, ALPHA: tl.constexpr):
    # torch's softplus threshold: above 20, softplus(x) = x and tanh of it is 1 in float64.
    n, e = _tanh_softplus(x)
    return tl.where(x > 20.0, x, x * n / (n + 2.0))


@triton.jit
def mish_bwd(x, g, ALPHA: tl.constexpr):
    # d/dx = tanh(sp) + x * sigmoid(x) * sech^2(sp), sech^2(sp) = 4 (n + 1) / (n + 2)^2.
    n, e = _tanh_softplus(x)
    d = n + 2.0
    grad = n / d + x * (e / (1.0 + e)) * (4.0 * (n + 1.0) / (d * d))
    return g * tl.where(x > 20.0, 1.0 + x * 0.0, grad)  # x * 0: torch's NaN at +inf


@triton.jit
def hardswish_fwd(x, ALPHA: tl.constexpr):
    return x * tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0


@triton.jit
def hardswish_bwd(x, g, ALPHA: tl.constexpr):
    # torch: 0 for x <= -3, g for x >= 3, the slope formula between (and for NaN)
    return tl.where(x <= -3.0, 0.0, tl.where(x >= 3.0, g, g * (x / 3.0 + 0.5)))


@triton.jit
def leaky_relu_fwd(x, ALPHA: tl.constexpr):
    return tl.where(x > 0.0, x, x * ALPHA)


@triton.jit
def leaky_relu_bwd(s, g, ALPHA: tl.constexpr):
    # s is the output when ALPHA >= 0 (same sign as the input), else the input.
    return tl.where(s > 0.0, g, g * ALPHA)


@triton.jit
def relu6_fwd(x, ALPHA: tl.constexpr):
    # Comparisons, not min/max: the GPU's max.f32 drops NaN, torch keeps it.
    return tl.where(x < 0.0, 0.0, tl.where(x > 6.0, 6.0, x))


@triton.jit
def relu6_bwd(y, g, ALPHA: tl.constexpr):
    # From the output: 0 < y < 6 exactly where 0 < x < 6; torch gives 0 for NaN.
    return tl.where((y > 0.0) & (y < 6.0), g, 0.0)


@triton.jit
def relu_fwd(x, ALPHA: tl.constexpr):
    return tl.where(x < 0.0, 0.0, x)


@triton.jit
def relu_bwd(y, g, ALPHA: tl.constexpr):
    return tl.where(y <= 0.0, 0.0, g)


@triton.jit
def gelu_fwd(x, ALPHA: tl.constexpr):
    return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))


@triton.jit
def gelu_bwd(x, g, ALPHA: tl.constexpr):
    cdf = 0.5 * (1.0 + tl.erf(x * 0.7071067811865476))
    pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327  # 1 / sqrt(2 pi)
    return g * (cdf + x * pdf)


@triton.jit
def _gelu_tanh_sigmoid(x):
    # 0.5 * (1 + tanh(z)) = sigmoid(2z), so no tanh is needed. Past |x| = 100 the sigmoid is
    # exactly 0 or 1; clamping keeps x^3 finite so the derivative's x * 0 * x^2 is not NaN.
    x = tl.minimum(tl.maximum(x, -100.0), 100.0)
    return tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))  # 2 sqrt(2/pi)


@triton.jit
def gelu_tanh_fwd(x, ALPHA: tl.constexpr):
    return x * _gelu_tanh_sigmoid(x)


@triton.jit
def gelu_tanh_bwd(x, g, ALPHA: tl.constexpr):
    # 1 - tanh(z)^2 = 4 s (1 - s)
    s = _gelu_tanh_sigmoid(x)
    xc = tl.minimum(tl.maximum(x, -100.0), 100.0)
    dz = 0.7978845608028654 * (1.0 + 0.134145 * xc * xc)  # sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    return g * (s + x * (s * (1.0 - s) * 2.0 * dz))  # x last: 2 * max(fp32) overflows


@triton.jit
def identity_fwd(x, ALPHA: tl.constexpr):
    return x


@triton.jit
def identity_bwd(x, g, ALPHA: tl.constexpr):
    return g


# BatchNorm + PReLU (kernels/bn_act.py): LeakyReLU's formulas, ALPHA replaced by the channel's weight.
prelu_fwd, prelu_bwd = leaky_relu_fwd, leaky_relu_bwd


@functools.cache
def pair(name: str) -> tuple[triton.JITFunction, triton.JITFunction]:
    """Activation ``name``'s ``<name>_fwd`` and ``<name>_bwd``, found by name: the list of
    activations is ``rtdetr_fused.activations.TABLE`` alone ("identity": BatchNorm alone)."""
    return globals()[f"{name}_fwd"], globals()[f"{name}_bwd"]
