"""cat_conv2d and fuse_bn_act on HGBlocks: the same numbers as eager (bit for bit for the
convolution), the pieces saved instead of their concatenation, the fallbacks (no grad,
model.fuse()), and RT-DETR-l's whole training forward under 0.75x eager's saved bytes.

Whole models run the PyTorch path (``pytorch_path``); the Triton kernels run through the
interpreter on one tiny block.
"""

import copy
import io

import pytest
import torch
from test_fuse_bn import _fused_blocks, _step
from torch import nn

from benchmarks.measure import SavedTensors
from rtdetr_fused.cat_conv import cat_conv2d

pytest.importorskip("ultralytics")

from ultralytics.nn.modules import HGBlock  # noqa: E402

from rtdetr_fused.integrations.fuse_bn import FusedHGBlockForward, MaxPoolForward, fuse_bn_act, unfuse_bn_act  # noqa: E402
from rtdetr_fused.ops.common import interpreting  # noqa: E402

CONVS = {
    "1x1": dict(kernel_size=1, bias=False),
    "3x3 stride 2 bias": dict(kernel_size=3, stride=2, padding=1, bias=True),
    "grouped dilated": dict(kernel_size=3, padding=2, dilation=2, groups=3),
}


def _pieces(dtype: torch.dtype, requires_grad=(True, False, True)) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [
        torch.randn(2, c, 7, 6, generator=gen, dtype=dtype).requires_grad_(r) for c, r in zip((3, 6, 3), requires_grad)
    ]


def _grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> tuple:
    g = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    return out, *torch.autograd.grad(out, [t for t in inputs if t.requires_grad], g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", list(CONVS.values()), ids=list(CONVS))
def test_cat_conv2d_is_conv_of_cat_bit_for_bit(kwargs, dtype):
    conv = nn.Conv2d(12, 6, **kwargs).to(dtype)
    pieces = _pieces(dtype)
    inputs = [*pieces, *conv.parameters()]
    expected = _grads(conv(torch.cat(pieces, 1)), inputs)
    for got, want in zip(_grads(cat_conv2d(pieces, conv), inputs), expected, strict=True):
        assert torch.equal(got, want)


def test_cat_conv2d_under_autocast_matches_eager():
    """The convolution runs in autocast's dtype in both passes; gradients come back in each input's dtype."""
    conv = nn.Conv2d(12, 6, 3, padding=1)
    pieces = _pieces(torch.float32)
    inputs = [*pieces, *conv.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = cat_conv2d(pieces, conv), conv(torch.cat(pieces, 1))
    assert got.dtype == torch.bfloat16
    for a, b in zip(_grads(got, inputs), _grads(want, inputs), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_cat_conv2d_gradcheck():
    conv = nn.Conv2d(5, 2, 3, padding=1, bias=True).double()
    gen = torch.Generator().manual_seed(1)
    pieces = [torch.randn(1, c, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True) for c in (2, 3)]
    assert torch.autograd.gradcheck(lambda w, b, *p: cat_conv2d(p, conv), (conv.weight, conv.bias, *pieces))


def test_cat_conv2d_saves_the_pieces_not_the_cat():
    conv = nn.Conv2d(12, 6, 1, bias=False)
    pieces = _pieces(torch.float32)
    for fn, cat_saved in ((lambda: conv(torch.cat(pieces, 1)), True), (lambda: cat_conv2d(pieces, conv), False)):
        with SavedTensors(exclude=[conv.weight]) as saved:
            out = fn()
        assert saved.which(a=pieces[0], b=pieces[1], c=pieces[2]) == ("1 other" if cat_saved else "a+b+c")
        del out


def test_cat_conv2d_runs_any_conv_module():
    """The module itself runs: a reflect-padded conv gives its own numbers, and its pad keeps
    the pieces, not the concatenation (the conv keeps the padded map)."""
    conv = nn.Conv2d(12, 6, 3, padding=1, padding_mode="reflect").double()
    pieces = _pieces(torch.float64)
    inputs = [*pieces, *conv.parameters()]
    expected = _grads(conv(torch.cat(pieces, 1)), inputs)
    with SavedTensors(exclude=[*conv.parameters()]) as saved:
        out = cat_conv2d(pieces, conv)
    assert saved.which(a=pieces[0], b=pieces[1], c=pieces[2]) == "a+b+c+1 other"
    for got, want in zip(_grads(out, inputs), expected, strict=True):
        assert torch.equal(got, want)


BLOCKS = {
    "conv": dict(c1=8, cm=4, c2=16, k=3, n=3),
    "light shortcut": dict(c1=16, cm=4, c2=16, k=5, n=2, lightconv=True, shortcut=True),
}


@pytest.mark.parametrize("kwargs", list(BLOCKS.values()), ids=list(BLOCKS))
def test_hgblock_matches_eager(kwargs, pytorch_path):
    torch.manual_seed(0)
    eager = HGBlock(**kwargs, act=nn.SiLU()).double()
    fused = copy.deepcopy(eager)
    assert fuse_bn_act(fused) == 1 + 2 + kwargs["n"]  # the HGBlock, sc, ec and each m
    assert isinstance(fused.forward, FusedHGBlockForward)
    x = torch.randn(2, kwargs["c1"], 9, 8, dtype=torch.float64)
    for _ in range(2):  # running statistics too
        torch.testing.assert_close(_step(fused, x), _step(eager, x), rtol=1e-9, atol=1e-12)
    with torch.no_grad():  # the class's forward: nothing to save
        torch.testing.assert_close(fused(x), eager(x), rtol=1e-9, atol=1e-12)


def test_hgblock_sc_with_unsupported_act_keeps_eager_bn(pytorch_path):
    eager = HGBlock(**BLOCKS["conv"], act=nn.Tanh()).double()
    fused = copy.deepcopy(eager)
    assert fuse_bn_act(fused) == 1 and isinstance(fused.forward, FusedHGBlockForward)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(_step(fused, x), _step(eager, x), rtol=1e-9, atol=1e-12)


def test_hgblock_kernels_through_interpreter():
    assert interpreting()
    eager = HGBlock(**BLOCKS["light shortcut"], act=nn.SiLU()).double()
    fused = copy.deepcopy(eager)
    fuse_bn_act(fused)
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(_step(fused, x), _step(eager, x), rtol=1e-9, atol=1e-12)


def test_hgblock_saves_the_pieces_not_the_cat(pytorch_path):
    """Against the same block with only its Conv blocks fused: the cat (c1 + n * cm channels)
    is gone, and the last m output, which only the cat held, is saved itself."""
    block = HGBlock(**BLOCKS["conv"], act=nn.SiLU())
    fuse_bn_act(block)
    x = torch.randn(2, 8, 9, 8, requires_grad=True)

    def saved() -> int:
        with SavedTensors(exclude=[*block.parameters(), *block.buffers(), x]) as s:
            out = block(x)  # noqa: F841 (alive until the count)
        return s.nbytes

    fused = saved()
    del block.forward
    per_channel = 2 * 9 * 8 * 4
    assert saved() - fused == (8 + 3 * 4 - 4) * per_channel


def test_rtdetr_fuse_unfuse_pickle_and_model_fuse(pytorch_path):
    from ultralytics.nn.tasks import RTDETRDetectionModel

    model = RTDETRDetectionModel("rtdetr-l.yaml", nc=2, verbose=False).double()
    hg = [m for m in model.modules() if isinstance(m, HGBlock)]
    n = fuse_bn_act(model)
    assert all(isinstance(m.forward, FusedHGBlockForward) for m in hg) and len(hg) == 6
    pools = [m for m in model.modules() if isinstance(vars(m).get("forward"), MaxPoolForward)]
    assert len(pools) == 1 and pools[0] is model.model[0].pool  # HGStem's: it saves its input, no indices
    assert n == len(hg) + len(_fused_blocks(model)) + len(pools)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False).eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    expected = loaded(x)[0]
    loaded.fuse(verbose=False)  # folds sc.bn: the HGBlocks fall back to their class's forward
    torch.testing.assert_close(loaded(x)[0], expected, rtol=1e-7, atol=1e-7)
    assert unfuse_bn_act(model) == n and "forward" not in vars(hg[0])


def test_rtdetr_l_saves_at_most_three_quarters_of_eager(pytorch_path):
    """Issue 5's whole-model target at 640x640, batch 1, SiLU everywhere; fuse_bn="recompute"
    keeps a further 282 MiB out (0.471x measured, CPU), and meets it at 128x128 too, where the
    decoder holds most of the bytes (0.714x measured; fuse_bn=True 0.907x)."""
    from benchmarks.breakdown import _variants, measure

    models = _variants("silu")
    saved = measure(models, (1, 3, 640, 640))
    assert saved["fuse_bn"].nbytes <= 0.75 * saved["eager"].nbytes
    assert saved["recompute"].nbytes <= 0.49 * saved["eager"].nbytes
    small = measure({k: models[k] for k in ("eager", "recompute")}, (1, 3, 128, 128))
    assert small["recompute"].nbytes <= 0.73 * small["eager"].nbytes
