"""PReLU against torch.prelu in float64: forward, grad_input and grad_weight (scalar and per
channel), every dtype and layout, poisoned kernel outputs, determinism, bad input."""

import pytest
import torch
import torch.nn.functional as F
from reference import assert_matches, magnitude
from rtdetr_fused.kernels import prelu as K
from rtdetr_fused.kernels.pointwise import block_size
from test_activations import DTYPES, _randn

import rtdetr_fused.functional as RF

# name -> (input builder, channels). Channel is dim 1 (torch's rule); 1 = one weight.
INPUTS = {
    "nchw": (lambda dt, dev: _randn((2, 5, 6, 7), dt, dev), 5),
    "channels_last": (lambda dt, dev: _randn((2, 5, 6, 7), dt, dev).to(memory_format=torch.channels_last), 5),
    "channel_middle": (lambda dt, dev: _randn((6, 2, 5, 7), dt, dev).permute(1, 2, 0, 3), 5),
    "offset": (lambda dt, dev: _randn((3, 5, 6, 7), dt, dev)[1:], 5),
    "sliced": (lambda dt, dev: _randn((2, 10, 6, 7), dt, dev)[:, ::2, :, 1:], 5),
    "nc": (lambda dt, dev: _randn((37, 9), dt, dev), 9),
    "ncl": (lambda dt, dev: _randn((3, 4, 2 * block_size(dt) // 4 + 5), dt, dev), 4),
    "big_channels_last": (lambda dt, dev: _randn((3, 300, 2, 5), dt, dev).to(memory_format=torch.channels_last), 300),
    "nchw_scalar": (lambda dt, dev: _randn((2, 5, 6, 7), dt, dev), 1),
    "flat_scalar": (lambda dt, dev: _randn((2 * block_size(dt) + 3,), dt, dev), 1),
    "zero_dim": (lambda dt, dev: _randn((), dt, dev), 1),
    "empty": (lambda dt, dev: _randn((0, 5, 2, 2), dt, dev), 5),
}


def check(x: torch.Tensor, w: torch.Tensor) -> None:
    g = _randn(x.shape, x.dtype, x.device, 1.0)
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = RF.prelu(xr, wr)
    gx, gw = torch.autograd.grad(y, (xr, wr), g)
    x64 = x.detach().cpu().double().requires_grad_()
    w64 = w.detach().cpu().double().requires_grad_()
    ref_y = F.prelu(x64, w64)
    ref_gx, ref_gw = torch.autograd.grad(ref_y, (x64, w64), g.cpu().double())
    assert y.stride() == torch.empty_like(x).stride()
    assert gw.dtype == w.dtype and gw.shape == w.shape
    assert_matches(y, ref_y, magnitude(x, w.max()), "prelu forward")
    assert_matches(gx, ref_gx, magnitude(g, w.max()), "prelu grad_input")
    # grad_weight is a sum: judge it against the sum of the terms' sizes.
    terms = (x64 * g.cpu().double()).abs()
    dims = [d for d in range(x.dim()) if d != 1 or w.numel() == 1]
    scale = (terms.sum(dims) if dims else terms).reshape(w.shape) + 1
    assert_matches(gw, ref_gw.detach(), scale, "prelu grad_weight")


@pytest.mark.parametrize("layout", INPUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_torch(layout, dtype, device):
    build, channels = INPUTS[layout]
    check(build(dtype, device), torch.rand(channels, dtype=dtype, device=device) - 0.3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_strided_weight_view(dtype, device):
    """A weight that is a strided view (every other value of a larger tensor): the kernels read
    its values, not the storage next to them; grads reach the tensor it views."""
    base = (torch.rand(10, dtype=dtype, device=device) - 0.3).requires_grad_()
    ref_base = base.detach().cpu().double().requires_grad_()
    x = _randn((2, 5, 6, 7), dtype, device)
    g = _randn(x.shape, dtype, device, 1.0)
    xr, x64 = x.clone().requires_grad_(), x.detach().cpu().double().requires_grad_()
    y = RF.prelu(xr, base[::2])
    gx, gb = torch.autograd.grad(y, (xr, base), g)
    ref_y = F.prelu(x64, ref_base[::2])
    ref_gx, ref_gb = torch.autograd.grad(ref_y, (x64, ref_base), g.cpu().double())
    assert_matches(y, ref_y.detach(), magnitude(x), "prelu forward, strided weight")
    assert_matches(gx, ref_gx, magnitude(g), "prelu grad_input, strided weight")
    torch.testing.assert_close(gb.cpu().double(), ref_gb, rtol=1e-5, atol=1e-5)


def test_weight_in_float32_with_half_input(device):
    """Under AMP the input is half and the weight float32: grad_weight stays float32."""
    check(_randn((2, 5, 6, 7), torch.float16, device), torch.rand(5, device=device))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_gradcheck(channels, channels_last, device):
    x = _randn((2, 3, 4, 5), torch.float64, device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.rand(channels, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(RF.prelu, (x.requires_grad_(), w.requires_grad_()))


def test_same_bits_every_run(device):
    x = _randn((4, 300, 3, 5), torch.float32, device).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.rand(300, device=device, requires_grad=True)
    grads = [torch.autograd.grad(RF.prelu(x, w), (x, w), torch.ones_like(x)) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape,channels_last,channels", [((3, 4, 33, 31), False, 4), ((5, 7, 3, 3), True, 7)])
def test_kernels_write_every_element(shape, channels_last, channels, dtype, device):
    """Outputs start as NaN; finite inputs must leave none behind (tails, splits, both paths)."""
    x = _randn(shape, dtype, device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.rand(channels, device=device)
    g = torch.randn_like(x)
    y = torch.full_like(x, float("nan"))
    K.forward(x, w, y)
    gx = torch.full_like(x, float("nan"))
    gw = K.backward(x, w, g, gx, programs=3)
    for t in (y, gx, gw):
        assert not t.isnan().any()
    torch.testing.assert_close(gx.float(), torch.where(x > 0, g, w.view(-1, 1, 1) * g).float(), rtol=1e-3, atol=1e-3)


def test_rejects_bad_weight():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="weight"):
        RF.prelu(x, torch.rand(4))
    with pytest.raises(ValueError, match="weight"):
        RF.prelu(torch.randn(5), torch.rand(5))  # no channel dim below 2 dims, as in torch
    with pytest.raises(ValueError, match="weight"):
        RF.prelu(x, torch.rand(3, device="meta"))
    with pytest.raises(TypeError, match="weight"):
        RF.prelu(x, torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="no channel dimension"):
        RF.prelu(torch.randn(5), torch.rand(5))


@pytest.mark.parametrize(
    "x, weight",
    [
        (torch.randn(2, 3, 4), torch.rand(4)),
        (torch.randn(2, 3, 4), torch.rand(3, device="meta")),
        (torch.randn(2, 3, 4), torch.ones(3, dtype=torch.int64)),
    ],
    ids=["count", "device", "int weight"],
)
def test_errors_are_torchs_types(x, weight):
    """Where torch.prelu raises, ours raises a subclass of its exception's type."""
    with pytest.raises(Exception) as theirs:
        torch.prelu(x, weight)
    with pytest.raises(type(theirs.value), match="weight"):
        RF.prelu(x, weight)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_non_float_input_as_torch(dtype):
    """An integer or bool input gets torch.prelu's result or its exception type."""
    x, w = torch.tensor([[-3, 0], [2, 7]]).to(dtype), torch.rand(2)
    try:
        expected = torch.prelu(x, w)
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        with pytest.raises(type(e)):
            RF.prelu(x, w)
    else:
        torch.testing.assert_close(RF.prelu(x, w), expected)


def test_one_weight_over_2_pow_28_elements(device):
    """One weight over more than 65535 * 4096 elements: the backward grid once put 131072
    blocks on an axis that stops at 65535 (CUDA 'invalid argument', seen on the H200)."""
    if device == "cpu":
        pytest.skip("2^28 elements: hours in the interpreter; the GPU run covers it")
    x = torch.randn(2**28 + 4099, device=device, dtype=torch.bfloat16, requires_grad=True)
    g, w = torch.randn_like(x), torch.full((1,), 0.25, device=device, dtype=torch.bfloat16, requires_grad=True)
    y = RF.prelu(x, w)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    x64, g64 = x.detach().double(), g.double()
    assert torch.equal(y, torch.where(x64 > 0, x64, 0.25 * x64).to(y.dtype))  # 0.25 * x is exact
    assert torch.equal(gx, torch.where(x64 > 0, g64, 0.25 * g64).to(gx.dtype))
    terms = torch.where(x64 > 0, 0.0, x64 * g64)
    want = terms.sum().item()
    assert abs(gw.item() - want) <= 2**-8 * abs(want) + 1e-6 * terms.abs().sum().item()
