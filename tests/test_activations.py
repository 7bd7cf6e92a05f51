"""Elementwise activations against PyTorch in float64: forward and grad_input, every dtype,
layout and shape class, the formulas' edge values, in place, and gradcheck."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import CASES, INPLACE, assert_matches, edge_values, magnitude, reference
from rtdetr_fused.kernels.pointwise import block_size

import rtdetr_fused
import rtdetr_fused.functional as RF

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _randn(shape, dtype, device, scale=4.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype).to(device)


# Each shape class builds an input; the non-dense ones check the single-copy path.
SHAPES = {
    "scalar": lambda dt, dev: _randn((), dt, dev),
    "empty": lambda dt, dev: _randn((0, 3), dt, dev),
    "tail": lambda dt, dev: _randn((2 * block_size(dt) + 37,), dt, dev),
    "nchw": lambda dt, dev: _randn((2, 3, 5, 7), dt, dev),
    "channels_last": lambda dt, dev: _randn((2, 3, 5, 7), dt, dev).to(memory_format=torch.channels_last),
    "permuted": lambda dt, dev: _randn((5, 2, 7, 3), dt, dev).permute(1, 3, 0, 2),
    "offset": lambda dt, dev: _randn((3, 3, 5, 7), dt, dev)[1:],
    "sliced": lambda dt, dev: _randn((2, 6, 5, 7), dt, dev)[:, ::2, :, 1:],
}


def check(name: str, x: torch.Tensor, g: torch.Tensor | None = None) -> None:
    ours, theirs = CASES[name]
    g = _randn(x.shape, x.dtype, x.device, 1.0) if g is None else g
    xr = x.detach().clone().requires_grad_()
    y = ours(RF, xr)
    (gx,) = torch.autograd.grad(y, xr, g) if y.numel() else (torch.zeros_like(x),)
    ref_y, ref_gx = reference(theirs, x, g)
    assert y.dtype == x.dtype and gx.dtype == x.dtype and y.device == x.device
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last) or x.dim() != 4:
        assert y.stride() == torch.empty_like(x).stride(), "output must keep the input's layout"
    assert_matches(y, ref_y, magnitude(x), f"{name} forward")
    assert_matches(gx, ref_gx, magnitude(x, g), f"{name} grad_input")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_matches_torch(name, dtype, shape, device):
    check(name, SHAPES[shape](dtype, device))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_edge_values(name, dtype, device):
    edges = edge_values(dtype, subnormals=not (dtype == torch.bfloat16 and device == "cpu"))
    if name == "gelu_tanh" and dtype == torch.float64:
        # torch's own float64 derivative is NaN at +-max (x * x overflows); ours is the limit.
        edges = edges[edges.abs() != torch.finfo(dtype).max]
    x = torch.cat([edges, _randn((block_size(dtype) - 5,), dtype, "cpu")]).to(device)
    g = _randn(x.shape, dtype, device, 1.0)
    check(name, x, g)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_grad_output_with_other_strides(name, dtype, device):
    x = _randn((2, 3, 4, 5), dtype, device).to(memory_format=torch.channels_last)
    g = _randn((2, 3, 4, 5), dtype, device, 1.0)  # contiguous, x is channels_last
    check(name, x, g)
    check(name, x, torch.ones((), dtype=dtype, device=device).expand(x.shape))  # stride 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name", INPLACE)
def test_inplace(name, dtype, device):
    ours, theirs = CASES[name]
    fn = getattr(RF, name.removesuffix("_neg"))
    kwargs = {"negative_slope": -0.3 if name.endswith("_neg") else 0.2} if name.startswith("leaky") else {}
    x0 = _randn((2, 3, 4, 5), dtype, device)
    ref_y, ref_gx = reference(theirs, x0, torch.ones_like(x0))

    x = x0.clone()  # no autograd: the mutating op
    out = fn(x, inplace=True, **kwargs)
    assert out is x
    assert_matches(x, ref_y, magnitude(x0), f"{name} in place")

    leaf = x0.clone().requires_grad_()
    y = leaf * 1.0  # a non-leaf, as after a conv
    out = fn(y, inplace=True, **kwargs)
    assert out is y and y._version > 0
    out.sum().backward()
    assert_matches(leaf.grad, ref_gx, magnitude(x0), f"{name} in place grad")


@pytest.mark.parametrize("name", CASES)
def test_gradcheck(name, device):
    ours, _ = CASES[name]
    x = _randn((3, 5), torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ours(RF, t), (x,))


@pytest.mark.parametrize("name", CASES)
def test_cpu_without_interpreter_uses_torch(name, monkeypatch):
    """Where no kernel can run, the same results come from PyTorch's own ops."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    check(name, _randn((2, 3, 4, 5), torch.float32, "cpu").to(memory_format=torch.channels_last))


@pytest.mark.parametrize("name", ["silu", "leaky_relu", "relu6"])
def test_saved_for_backward(name):
    """silu saves its input; relu6 and leaky_relu (slope >= 0) their output, shared with the next layer."""
    x = _randn((2, 3, 4, 5), torch.float32, "cpu").requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = CASES[name][0](RF, x * 1.0)
    assert len(saved) == 1
    expected = y if name != "silu" else None
    if expected is None:
        assert saved[0].data_ptr() != y.data_ptr()
    else:
        assert saved[0].data_ptr() == y.data_ptr()


@pytest.mark.parametrize(("name", "alpha"), [("relu", 0.0), ("relu6", 0.0), ("leaky_relu", 0.2), ("leaky_relu", -0.3)])
def test_bitmask_saves_one_bit_per_element(name, alpha):
    """Backward keeps ceil(n / 8) bytes, not the output or the input."""
    from rtdetr_fused.ops.activation import apply

    x = _randn((2, 3, 5, 7), torch.float32, "cpu").requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = apply(x * 1.0, name, alpha, bitmask=True)
    assert [(t.dtype, t.numel()) for t in saved] == [(torch.uint8, (x.numel() + 7) // 8)]
    assert y.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bitmask_kernel_bits_and_every_element(dtype, device):
    """The bits are where the derivative is 1, element 8k + i in bit i of byte k, through the
    last partial byte; outputs start as NaN and none may be left."""
    from rtdetr_fused.kernels import pointwise

    n = 2 * block_size(dtype) + 13
    x = _randn((n,), dtype, device)
    for name, alpha, one in (("relu6", 0.0, lambda v: (v > 0) & (v < 6)), ("leaky_relu", -0.3, lambda v: v > 0)):
        y = torch.full_like(x, float("nan"))
        bits = torch.full(((n + 7) // 8,), 0xA5, dtype=torch.uint8, device=device)
        pointwise.mask_forward(x, y, bits, name, alpha, from_output=alpha >= 0)
        expected = torch.cat([one(x.cpu().double()), torch.zeros(-n % 8, dtype=torch.bool)]).view(-1, 8)
        assert torch.equal(
            bits.cpu(), (expected.to(torch.uint8) * 2 ** torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)
        )
        dx = torch.full_like(x, float("nan"))
        pointwise.mask_backward(bits, torch.ones_like(x), dx, alpha)
        assert not y.isnan().any() and not dx.isnan().any(), name


def test_bitmask_needs_two_valued_derivative_and_out_of_place():
    from rtdetr_fused.ops.activation import apply

    with pytest.raises(ValueError, match="out of place"):
        RF.relu(torch.zeros(3), inplace=True, bitmask=True)
    with pytest.raises(ValueError, match="two values"):
        apply(torch.zeros(3), "silu", bitmask=True)


def test_same_bits_every_run(device):
    x = _randn((3, 4, 33), torch.float32, device).requires_grad_()
    runs = []
    for _ in range(2):
        y = RF.mish(x)
        (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
        runs.append((y, gx))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


NON_FLOAT = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64]
FUNCTIONAL = ["silu", "mish", "hardswish", "leaky_relu", "relu6", "relu", "gelu"]


def _outcome(fn, x: torch.Tensor):
    """``fn(x)``'s result, or the type of the exception it raised."""
    try:
        return fn(x)
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return type(e)


@pytest.mark.parametrize("dtype", NON_FLOAT)
@pytest.mark.parametrize("name", FUNCTIONAL)
@pytest.mark.parametrize("inplace", [False, True])
def test_non_float_inputs_as_torch(name, dtype, inplace):
    """Integer, bool and complex inputs get what torch.nn.functional gives: its result, in its
    dtype, or its exception type."""
    x = torch.tensor([-3, 0, 2, 7]).to(dtype)
    kwargs = {"inplace": True} if inplace and name != "gelu" else {}
    ours = _outcome(lambda t: getattr(RF, name)(t, **kwargs), x.clone())
    theirs = _outcome(lambda t: getattr(torch.nn.functional, name)(t, **kwargs), x.clone())
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and ours.dtype == theirs.dtype and torch.equal(ours, theirs)
    else:
        assert ours is theirs


def test_rejects_non_tensor():
    with pytest.raises(TypeError, match="input"):
        RF.silu([1.0, 2.0])


def test_rejects_bad_gelu_approximate():
    """torch's error, raised by torch: code that catches torch's catches ours."""
    with pytest.raises(RuntimeError, match="approximate"):
        RF.gelu(torch.zeros(3), approximate="fast")
    with pytest.raises(RuntimeError, match="approximate"):
        rtdetr_fused.GELU("fast")(torch.zeros(3))


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(sorted(CASES)),
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=4),
    perm_seed=st.integers(0, 1000),
    step=st.integers(1, 2),
    scale=st.sampled_from([1e-3, 1.0, 8.0, 30.0]),
)
def test_hypothesis_shapes_strides_values(name, dtype, shape, perm_seed, step, scale):
    """Random shapes, dense permutations, strided slices and value ranges."""
    base = _randn([s * step for s in shape], dtype, "cpu", scale)
    x = base[tuple(slice(None, None, step) for _ in shape)]
    perm = torch.randperm(len(shape), generator=torch.Generator().manual_seed(perm_seed)).tolist()
    check(name, x.permute(perm))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernels_write_every_element(dtype, device):
    """Outputs start as NaN; finite inputs must leave none behind, full blocks and the tail."""
    from rtdetr_fused.kernels import pointwise

    x = _randn((3 * block_size(dtype) + 11,), dtype, device)
    for name in ("silu", "relu"):
        y = torch.full_like(x, float("nan"))
        pointwise.forward(x, y, name, 0.0)
        dx = torch.full_like(x, float("nan"))
        pointwise.backward(x, torch.ones_like(x), dx, name, 0.0)
        assert not y.isnan().any() and not dx.isnan().any(), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs 8.6 GB on a GPU")
def test_64bit_offsets_past_2_to_the_31():
    """2**31 + 4099 fp16 elements: int32 offsets would wrap and write into the wrong half."""
    n = 2**31 + 4099
    x = torch.empty(n, dtype=torch.float16, device="cuda").fill_(-1.0)
    x[-4099:] = 2.0
    y = RF.relu(x)
    assert y[-4099:].eq(2.0).all() and y[: -4099 : 1 << 20].eq(0.0).all()
    del x, y
    torch.cuda.empty_cache()


def test_opcheck():
    """The custom ops' schemas, fake kernels and autograd registrations agree (torch.library)."""
    x = _randn((2, 3, 4, 5), torch.float32, "cpu").to(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.rtdetr_fused.act, (x, "mish", 0.0))
    torch.library.opcheck(torch.ops.rtdetr_fused.act_mask, (x, "leaky_relu", 0.2))
    y, bits = torch.ops.rtdetr_fused.act_mask(x.detach(), "relu6", 0.0)
    g = _randn(x.shape, torch.float32, "cpu")
    torch.library.opcheck(torch.ops.rtdetr_fused.act_mask_backward, (bits, g, list(y.stride()), 0.0))


def test_eager_calls_skip_the_dispatcher(monkeypatch):
    """Eager calls run the kernels directly: through the custom op they cost the H200's host
    three times a small map's kernels. The ops are for torch.compile (tests/test_compile.py)."""
    from rtdetr_fused import BatchNormAct2d, PReLU
    from rtdetr_fused.ops import activation, bn_act, prelu

    def refuse(*args):
        raise AssertionError("an eager call went through the custom op")

    for module in (activation, bn_act, prelu):
        for name in [k for k, v in vars(module).items() if isinstance(v, torch.library.CustomOpDef)]:
            monkeypatch.setattr(module, name, refuse)
    x = _randn((2, 3, 4, 5), torch.float32, "cpu").requires_grad_()
    for fn in (RF.mish, lambda t: RF.relu(t, bitmask=True), PReLU(3), BatchNormAct2d(3, act="silu")):
        torch.autograd.grad(fn(x).sum(), x)
    RF.relu6(x.detach().clone(), inplace=True)
