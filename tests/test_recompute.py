"""fuse_bn="recompute": convs, linear layers, HGBlock concatenations and max pools, run through
``recompute.consume``, keep a fused BatchNorm+activation output's recipe instead of the output and
recompute it in backward. Outputs and gradients must be those of fuse_bn=True bit for bit (the
same kernels on the same tensors); the saved bytes fall to one full tensor per Conv block.
"""

import copy
import io
import weakref
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from test_bn_act import saved_per_block
from torch import nn

import rtdetr_fused.recompute
from benchmarks.measure import SavedTensors
from rtdetr_fused.bn_act import batch_norm_act
from rtdetr_fused.cat_conv import cat_conv2d
from rtdetr_fused.max_pool import max_pool2d
from rtdetr_fused.recompute import consume, keep, recipe_of, restore, tag

DTYPES = [torch.float64, torch.float32, torch.bfloat16]


def _bn_act(y: torch.Tensor, recompute: bool, act: str = "silu") -> torch.Tensor:
    c, like = y.shape[1], dict(dtype=y.dtype, device=y.device)
    weight = torch.linspace(0.5, 1.5, c, **like).requires_grad_(True)
    bias = torch.linspace(-0.2, 0.2, c, **like).requires_grad_(True)
    act_weight = torch.full((c,), 0.25, **like) if act == "prelu" else None
    return batch_norm_act(y, None, None, weight, bias, True, act=act, act_weight=act_weight, recompute=recompute)


def _run(consume, y0: torch.Tensor, recompute: bool, act: str = "silu"):
    """(output, grad of y, bytes saved) of ``consume(bn_act(y))``, y a leaf copy of ``y0``."""
    y = y0.clone().requires_grad_(True)
    with SavedTensors(exclude=[y]) as saved:
        out = consume(_bn_act(y, recompute, act))
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view(out.shape))
    return out.detach(), y.grad, saved.nbytes


def _conv(c: int, dtype: torch.dtype, device: str = "cpu", **kwargs) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(c, 6, 3, padding=1, bias=False, dtype=dtype, device=device, **kwargs)


CONSUMERS = {
    "conv": lambda conv: lambda x: consume(conv, x),
    "chunk view": lambda conv: lambda x: consume(conv, x.chunk(2, 1)[1]),
    "cat": lambda conv: lambda x: cat_conv2d([x[:, :4], torch.ones_like(x[:, :4])], conv),
    "max pool": lambda conv: lambda x: consume(max_pool2d, x, 3, 1, 1),
    "linear": lambda conv: partial(consume, nn.Linear(7, 5, dtype=conv.weight.dtype, device=conv.weight.device)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("consumer", list(CONSUMERS))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_consumers_recompute_bit_for_bit(consumer, dtype, channels_last, device, monkeypatch):
    """The Triton kernels (the interpreter on the CPU): the same output and gradients as keeping
    the activation, and less saved (the output is not kept). cuDNN runs its deterministic
    algorithms, as the same inputs must give the same bits."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    y0 = torch.randn(2, 8, 5, 7, dtype=dtype, device=device)
    if channels_last:
        y0 = y0.to(memory_format=torch.channels_last)
    conv = _conv(4 if consumer == "chunk view" else 8, dtype, device)
    fn = CONSUMERS[consumer](conv)
    out_kept, grad_kept, kept = _run(fn, y0, recompute=False)
    weight_grad = conv.weight.grad.clone() if conv.weight.grad is not None else None
    conv.weight.grad = None
    out, grad, saved = _run(fn, y0, recompute=True)
    assert torch.equal(out, out_kept) and torch.equal(grad, grad_kept)
    if weight_grad is not None:
        assert torch.equal(conv.weight.grad, weight_grad)
    if consumer == "linear" and channels_last:  # its matmul keeps a contiguous copy, never the input
        assert saved == kept
    else:
        assert saved < kept


@pytest.mark.parametrize("act", ["prelu", "relu6", "gelu"])
def test_recompute_with_other_activations(act, pytorch_path):
    y0 = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    conv = _conv(8, torch.float64)
    consume = CONSUMERS["conv"](conv)
    out_kept, grad_kept, _ = _run(consume, y0, False, act)
    out, grad, _ = _run(consume, y0, True, act)
    assert torch.equal(out, out_kept) and torch.equal(grad, grad_kept)


def test_matches_plain_conv_and_gradcheck(pytorch_path):
    """consume(conv, x) is F.conv2d and consume(lin, x) F.linear: against them directly, and
    gradcheck through the recompute (the weights' gradients too)."""
    conv = _conv(8, torch.float64)
    lin = nn.Linear(3, 5, dtype=torch.float64)
    y = torch.randn(2, 8, 4, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(consume(conv, _bn_act(y, True)), F.conv2d(_bn_act(y, False), conv.weight, padding=1))
    torch.testing.assert_close(consume(lin, _bn_act(y, True)), F.linear(_bn_act(y, False), lin.weight, lin.bias))
    assert torch.autograd.gradcheck(lambda t, w: consume(conv, _bn_act(t, True)), (y, conv.weight))
    assert torch.autograd.gradcheck(lambda t, w, b: consume(lin, _bn_act(t, True)), (y, lin.weight, lin.bias))


def test_double_backward_through_a_recomputed_input():
    """Autograd gives an unpacked tensor its node back: a recomputed input's second derivative
    flows through its own graph, as if it had been kept."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 2, 3, padding=1, dtype=torch.float64)

    def tanh_conv(y: torch.Tensor, recompute: bool) -> torch.Tensor:
        x = torch.tanh(y)
        if recompute:
            tag(x, torch.tanh, (y,), ())
        return consume(conv, x) ** 2

    y = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: tanh_conv(t, True), (y,))
    grads = [torch.autograd.grad(tanh_conv(y, r).sum(), y, create_graph=True)[0] for r in (True, False)]
    assert torch.equal(*(torch.autograd.grad(g.sum(), y)[0] for g in grads))


def test_tags_only_in_eager_training(pytorch_path):
    y = torch.randn(2, 4, 3, 3, requires_grad=True)
    assert recipe_of(_bn_act(y, True)) is not None and recipe_of(_bn_act(y, True)[:, 1:]) is not None
    assert recipe_of(_bn_act(y, False)) is None
    with torch.no_grad():
        assert recipe_of(_bn_act(y, True)) is None
    conv = _conv(4, torch.float32)
    with torch.no_grad():  # an untagged input: the module itself runs
        torch.testing.assert_close(consume(conv, y), conv(y))


def test_changed_in_place_is_kept(pytorch_path):
    """An output changed in place after its tag is not what recomputing gives: kept as usual."""
    conv = _conv(8, torch.float64)

    def doubled(x: torch.Tensor) -> torch.Tensor:
        return consume(conv, x.mul_(2))

    y0 = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    out, grad, saved = _run(doubled, y0, recompute=True)
    out_kept, grad_kept, kept = _run(doubled, y0, recompute=False)
    assert torch.equal(out, out_kept) and torch.equal(grad, grad_kept) and saved == kept


def test_a_recipe_of_recipes_holds_only_what_is_kept_anyway(pytorch_path):
    """A sum of two tagged outputs, tagged in turn (RepConv's): its recipe takes them apart into
    their own recipes' tensors, so the two outputs themselves are freed, and it restores."""
    y1, y2 = (torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    t, u = _bn_act(y1, True, "identity"), _bn_act(y2, True, "identity")
    total = t + u
    tag(total, torch.add, (t, u), ())
    refs = [weakref.ref(t), weakref.ref(u)]
    del t, u
    assert all(ref() is None for ref in refs)
    flat, plans = keep([total])
    assert any(f is y1 for f in flat) and any(f is y2 for f in flat)
    expected = total.detach().clone()
    del total
    assert torch.equal(restore(flat, plans)[0], expected)


def test_other_padding_modes_recompute_what_the_pad_keeps(pytorch_path):
    """A reflect-padded conv: F.pad keeps the tagged input's recipe (the conv, the padded map)."""
    conv = _conv(8, torch.float64, padding_mode="reflect")
    y0 = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    out, grad, saved = _run(CONSUMERS["conv"](conv), y0, recompute=True)
    out_kept, grad_kept, kept = _run(CONSUMERS["conv"](conv), y0, recompute=False)
    assert torch.equal(out, out_kept) and torch.equal(grad, grad_kept) and kept - saved == y0.numel() * 8


def test_hooks_compose_with_an_outer_pair(pytorch_path):
    """Only the innermost saved-tensor hooks apply: consume's pass what they keep through the pair
    active when entered, which so sees every tensor kept (the recipe's, not the BN+act output)
    and unpacks each of its own packed objects once; the gradients are unchanged."""
    conv = _conv(8, torch.float64)
    y0 = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    packed, unpacked = [], []

    def pack(t: torch.Tensor) -> tuple:
        packed.append(t)
        return ("outer", t.detach())  # a packed form of the outer pair's own

    def unpack(box: tuple) -> torch.Tensor:
        assert box[0] == "outer"
        unpacked.append(box[1])
        return box[1]

    y = y0.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        x = _bn_act(y, True)
        n = len(packed)  # what BN+act saves itself
        out = consume(conv, x)
    own, by_conv = ({t.untyped_storage().data_ptr() for t in ts} for ts in (packed[:n], packed[n:]))
    assert by_conv == own | {conv.weight.untyped_storage().data_ptr()}
    assert x.untyped_storage().data_ptr() not in by_conv
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape))  # as _run
    assert len(unpacked) == len(packed)
    assert torch.equal(y.grad, _run(CONSUMERS["conv"](conv), y0, recompute=False)[1])


# --- Ultralytics ---------------------------------------------------------------------------------

ultralytics = pytest.importorskip("ultralytics")

from ultralytics.nn.modules import Conv  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

from rtdetr_fused.integrations.fuse_bn import FusedConvForward, fuse_bn_act  # noqa: E402
from rtdetr_fused.integrations.ultralytics import FusedActivations, replace_activations  # noqa: E402


def _recompute_against_keeping(model: nn.Module, x: torch.Tensor, steps: int = 1) -> None:
    """``model`` under fuse_bn="recompute" against the same fused model with nothing tagged (so
    everything kept), ``steps`` training steps: outputs, every gradient and buffer bit for bit;
    and against ``model`` as built (eager BatchNorm) to float64 tolerance."""
    from test_fuse_bn import _step

    eager = copy.deepcopy(model).train()
    recomputed, kept = copy.deepcopy(eager), copy.deepcopy(eager)
    for fused in (recomputed, kept):
        fuse_bn_act(fused, recompute=True)
    assert all(m.forward.recompute for m in recomputed.modules() if "forward" in vars(m))
    for _ in range(steps):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rtdetr_fused.recompute, "recipe_of", lambda t: None)  # keep() keeps every tensor
            expected = _step(kept, x)
        got = _step(recomputed, x)
        for a, b in zip(got, expected, strict=True):
            assert (a is None and b is None) or torch.equal(a, b)
        for a, b in zip(got, _step(eager, x), strict=True):  # in norm: a deep net's rounding drifts
            assert (a is None and b is None) or (a - b).double().norm() <= 1e-8 * b.double().norm() + 1e-9


def test_interior_conv_block_keeps_one_tensor():
    def block():
        conv = Conv(8, 8, 3, act=nn.SiLU())
        fuse_bn_act(conv, recompute=True)
        return conv

    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    assert saved_per_block(block, x) <= 1.1  # the conv output, mean and 1/std


def test_yolo(pytorch_path):
    """YOLO11n, float64, two training steps (running statistics too)."""
    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", verbose=False).double()
    assert fuse_bn_act(copy.deepcopy(model), recompute=True) > fuse_bn_act(copy.deepcopy(model))  # act-less too
    _recompute_against_keeping(model, torch.randn(2, 3, 64, 64, dtype=torch.float64), steps=2)


def test_rtdetr(pytorch_path):
    """RT-DETR-l (HGStem, HGBlocks through cat_conv2d, RepC3), float64, one training step."""
    from ultralytics.nn.tasks import RTDETRDetectionModel

    torch.manual_seed(0)
    model = RTDETRDetectionModel("rtdetr-l.yaml", nc=2, verbose=False).double()
    _recompute_against_keeping(model, torch.randn(2, 3, 64, 64, dtype=torch.float64))


@pytest.mark.parametrize("act", ["silu", "gelu", "prelu", "relu", "leaky_relu"])
def test_mlp_keeps_what_its_activations_keep(act):
    """RT-DETR's MLP heads, kernels through the interpreter: a hidden activation keeping its
    input has its output recomputed by the next linear; one keeping its output (ReLU, LeakyReLU)
    is not tagged, which would have the linear keep the input on top."""
    from ultralytics.nn.modules.transformer import MLP

    from rtdetr_fused.modules import get_activation

    torch.manual_seed(0)
    mlp = MLP(6, 16, 4, 3, act=lambda: get_activation(act))  # PReLU: one weight (dim 1 is no channel here)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    _recompute_against_keeping(mlp.double(), x)
    fuse_bn_act(mlp, recompute=True)

    def saved() -> int:
        with SavedTensors(exclude=[*mlp.parameters(), x]) as s:
            out = mlp(x.requires_grad_())  # noqa: F841 (alive until the count)
        return s.nbytes

    recomputed = saved()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rtdetr_fused.recompute, "recipe_of", lambda t: None)
        kept = saved()
    hidden = 2 * 2 * 5 * 16 * 8  # two hidden activations' outputs, float64
    assert kept - recomputed == (0 if act in ("relu", "leaky_relu") else hidden)


def test_unfuse_and_pickle_restore_every_method(pytorch_path):
    """RT-DETR-l under recompute pickles with its fused forwards (the decoder's replace
    ``forward_ffn``), and ``unfuse_bn_act`` takes every one of them off again."""
    from ultralytics.nn.tasks import RTDETRDetectionModel

    from rtdetr_fused.integrations.fuse_bn import FusedFFNForward, _FusedForward, unfuse_bn_act

    model = RTDETRDetectionModel("rtdetr-l.yaml", nc=2, verbose=False)
    n = fuse_bn_act(model, recompute=True)
    ffn = [m for m in model.modules() if isinstance(vars(m).get("forward_ffn"), FusedFFNForward)]
    assert len(ffn) == 6
    loaded = torch.load(io.BytesIO(_saved(model)), weights_only=False)
    assert sum(isinstance(v, _FusedForward) for m in loaded.modules() for v in vars(m).values()) == n
    assert unfuse_bn_act(model) == n
    assert not any(isinstance(v, _FusedForward) for m in model.modules() for v in vars(m).values())


def test_model_fuse_folds_a_recompute_model(pytorch_path):
    """model.fuse() (BN folded into the convs, RepConvs merged) on an RT-DETR-l under recompute:
    the same outputs, with autograd on (the fused forwards step aside)."""
    from ultralytics.nn.tasks import RTDETRDetectionModel

    torch.manual_seed(0)
    model = RTDETRDetectionModel("rtdetr-l.yaml", nc=2, verbose=False).double().eval()
    fuse_bn_act(model, recompute=True)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, requires_grad=True)
    expected = model(x)[0].detach()
    model.fuse(verbose=False)
    torch.testing.assert_close(model(x)[0].detach(), expected, rtol=1e-7, atol=1e-7)


def test_kernels_through_interpreter():
    blocks = nn.Sequential(Conv(3, 4, 3, act=nn.SiLU()), Conv(4, 4, 1, act=False), Conv(4, 4, 3, act=nn.PReLU(4)))
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    _recompute_against_keeping(blocks.double(), x)


def _rep_convs(act: nn.Module) -> nn.Sequential:
    from ultralytics.nn.modules import RepConv

    torch.manual_seed(0)
    return nn.Sequential(RepConv(4, 4, act=act), RepConv(4, 4, act=copy.deepcopy(act))).double()


@pytest.mark.parametrize("act", ["silu", "prelu"])
def test_rep_conv_keeps_its_branch_outputs_only(act):
    """Two RepConvs (RepC3's chain), kernels through the interpreter: each keeps its two branch
    conv outputs; neither the sum its activation reads nor the output the next one's convs read."""
    from rtdetr_fused.modules import get_activation

    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    _recompute_against_keeping(_rep_convs(get_activation(act)), x)
    blocks = _rep_convs(get_activation(act))
    fuse_bn_act(blocks, recompute=True)
    xr = x.clone().requires_grad_()
    with SavedTensors(exclude=[*blocks.parameters(), *blocks.buffers(), xr]) as saved:
        out = blocks(xr)  # noqa: F841 (alive until the count)
    assert saved.nbytes == 4 * x.numel() * x.element_size() + 2 * 2 * 2 * 4 * 8  # + mean, 1/std per BN


def test_rep_conv_with_an_in_place_activation(pytorch_path):
    """The output is the sum itself: only the sum is tagged, and nothing loops."""
    _recompute_against_keeping(_rep_convs(nn.SiLU(inplace=True)), torch.randn(2, 4, 5, 6, dtype=torch.float64))


def test_hg_stem_keeps_no_padded_map_nor_concatenation():
    """HGStem (RT-DETR's first layer), kernels through the interpreter: against keeping, the
    two padded maps, the pool output and stem2b's output (the concatenation's pieces) and
    stem3's output (stem4's input) are recomputed."""
    from ultralytics.nn.modules import HGStem

    torch.manual_seed(0)
    stem = HGStem(3, 8, 16).double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    _recompute_against_keeping(stem, x)
    fuse_bn_act(stem, recompute=True)

    def saved() -> int:
        with SavedTensors(exclude=[*stem.parameters(), *stem.buffers(), x]) as s:
            out = stem(x)  # noqa: F841 (alive until the count)
        return s.nbytes

    recomputed = saved()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rtdetr_fused.recompute, "recipe_of", lambda t: None)
        kept = saved()
    padded, pieces, stem3 = 2 * (8 + 4) * 7 * 7, 2 * 2 * 8 * 6 * 6, 2 * 8 * 3 * 3
    assert kept - recomputed == (padded + pieces + stem3) * 8


def test_the_option_switches_and_pickles(pytorch_path):
    model = nn.Sequential(Conv(3, 4, 3, act=nn.SiLU()), Conv(4, 4, 1, act=False))
    replace_activations(model, "mish", fuse_bn="recompute")
    forwards = [vars(m)["forward"] for m in model]
    assert all(isinstance(f, FusedConvForward) and f.recompute for f in forwards)
    assert "recompute" in repr(forwards[0])
    loaded = torch.load(io.BytesIO(_saved(model)), weights_only=False)
    assert all(vars(m)["forward"].recompute for m in loaded)
    assert fuse_bn_act(model, recompute=False) == 2 and not any(f.recompute for f in forwards)
    del forwards[0].__dict__["recompute"]  # as pickled before the option: the class default
    assert forwards[0].recompute is False


def _saved(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_bad_fuse_bn_values_name_the_argument(bad):
    model = nn.Sequential(Conv(3, 4, 3, act=nn.SiLU()))
    with pytest.raises(ValueError, match="fuse_bn"):
        replace_activations(model, "mish", fuse_bn=bad)
    with pytest.raises(ValueError, match="fuse_bn"):
        FusedActivations("mish", fuse_bn=bad)


def test_cli_reads_recompute():
    from rtdetr_fused.cli import _fuse_bn

    assert _fuse_bn("Recompute") == "recompute" and _fuse_bn(True) is True and _fuse_bn("maybe") == "maybe"


def test_compiles_in_one_graph(pytorch_path):
    """Under torch.compile nothing is tagged: the compiled graph decides what it keeps."""
    from ultralytics.nn.modules import HGBlock, RepConv

    torch.manual_seed(0)
    blocks = nn.Sequential(
        Conv(3, 8, 3, act=nn.SiLU()),
        HGBlock(8, 4, 16, 3, 2, act=nn.SiLU()),
        nn.MaxPool2d(3, 1, 1),
        RepConv(16, 16),
        Conv(16, 8, 3),
    )
    eager = copy.deepcopy(blocks)
    fuse_bn_act(blocks, recompute=True)
    x = torch.randn(2, 3, 8, 8)
    explanation = torch._dynamo.explain(blocks)(x)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0
    compiled = torch.compile(blocks, fullgraph=True, backend="aot_eager")
    grads = []
    for model in (compiled, eager):
        xr = x.clone().requires_grad_()
        model(xr).sum().backward()
        grads.append(xr.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
