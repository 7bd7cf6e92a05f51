"""Fused BatchNorm2d + activation against nn.BatchNorm2d + the torch.nn activation in float64:
outputs, every gradient, running statistics, every BatchNorm option, layouts and dtypes,
poisoned kernel outputs, determinism, bad input, and what backward keeps in memory."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from reference import torch_module
from rtdetr_fused.kernels import bn_act as K
from test_activations import _randn
from torch import nn

from rtdetr_fused.activations import TABLE
from rtdetr_fused.bn_act import BatchNormAct2d, activation_spec, batch_norm_act

ACTS = {name: functools.partial(torch_module, name) for name in (*TABLE, "identity")}
"""Every activation BatchNormAct2d runs, as a torch.nn module of C channels; identity: BatchNorm
alone (fuse_bn="recompute" fuses it)."""
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@pytest.fixture(autouse=True, params=["split", "per_channel"])
def reduction(request, monkeypatch):
    """Every test runs with each reduction: the split one (many programs per channel) and one
    program per channel (NCHW-like maps of at most CHANNEL_PROGRAM_MAX elements per channel;
    channels_last inputs keep the split one)."""
    monkeypatch.setattr(K, "CHANNEL_PROGRAM_MAX", 0 if request.param == "split" else 1 << 40)
    return request.param


def make(act: str, c: int, device: str, param_dtype=torch.float64, **bn_kwargs):
    """(float64 CPU reference BatchNorm2d -> act, BatchNormAct2d on ``device``) with the same
    random state: weights, biases, running statistics, PReLU slopes, drawn as values that
    ``param_dtype`` holds exactly (else a z near 0 could change sign between the two and with
    it a ReLU-like derivative)."""
    bn = nn.BatchNorm2d(c, dtype=torch.float64, **bn_kwargs)
    a = ACTS[act](c).double()
    with torch.no_grad():
        for p in bn.parameters():
            p.uniform_(0.5, 2.0)
        if bn.track_running_stats:
            bn.running_mean.uniform_(-1.0, 1.0)
            bn.running_var.uniform_(0.5, 2.0)
        for p in a.parameters():
            p.uniform_(-0.5, 0.5)
        for t in [*bn.parameters(), *a.parameters(), bn.running_mean, bn.running_var]:
            if t is not None:
                t.copy_(t.to(param_dtype))
    fused = BatchNormAct2d(c, act=copy.deepcopy(a), dtype=torch.float64, **bn_kwargs)
    fused.load_state_dict({**bn.state_dict(), **{f"act.{k}": v for k, v in a.state_dict().items()}})
    return nn.Sequential(bn, a), fused.to(device, param_dtype)


def run(module: nn.Module, x: torch.Tensor, g: torch.Tensor):
    """Output and gradients (input first, then the parameters in module order)."""
    x = x.detach().clone().requires_grad_()
    y = module(x)
    return y, torch.autograd.grad(y, [x, *module.parameters()], g)


def check(ref: nn.Module, fused: nn.Module, x: torch.Tensor, steps: int = 2) -> None:
    """``steps`` forward/backward passes; results and buffers equal the reference's."""
    tol = TOL[x.dtype]
    for step in range(steps):
        g = _randn(x.shape, x.dtype, x.device, 1.0)
        y, grads = run(fused, x, g)
        ref_y, ref_grads = run(ref, x.double().cpu(), g.double().cpu())
        assert y.dtype == x.dtype and y.stride() == torch.empty_like(x).stride()
        pairs = [("output", y, ref_y)] + [(f"grad {i}", a, b) for i, (a, b) in enumerate(zip(grads, ref_grads))]
        pairs += [(k, v, ref.state_dict()[f"0.{k}"]) for k, v in fused.state_dict().items() if "act" not in k]
        for what, got, want in pairs:
            torch.testing.assert_close(got.cpu().to(want.dtype), want, rtol=tol, atol=tol, msg=f"{what}, step {step}")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ACTS)
def test_training_matches_torch(act, layout, device):
    x = _randn((2, 4, 5, 6), torch.float64, device) + 1.5
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    check(*make(act, 4, device), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act", ["silu", "prelu", "relu6"])
def test_dtypes(act, dtype, device):
    """Half inputs with float32 parameters, as under autocast; float32 throughout."""
    x = _randn((2, 3, 5, 7), dtype, device, 2.0).to(memory_format=torch.channels_last)
    check(*make(act, 3, device, torch.float32), x)


@pytest.mark.parametrize(
    "options",
    [
        {"momentum": None},
        {"momentum": 0.3, "eps": 1e-3},
        {"affine": False},
        {"track_running_stats": False},
        {"affine": False, "track_running_stats": False},
    ],
    ids=str,
)
def test_batchnorm_options(options, device):
    ref, fused = make("hardswish", 3, device, **options)
    x = _randn((3, 3, 4, 5), torch.float64, device)
    check(ref, fused, x, steps=3)
    ref.eval()
    fused.eval()
    check(ref, fused, x, steps=1)


@pytest.mark.parametrize("act", ["silu", "prelu"])
def test_eval_uses_running_statistics(act, device):
    ref, fused = make(act, 4, device)
    ref.eval()
    fused.eval()
    x = _randn((1, 4, 1, 1), torch.float64, device)  # one value per channel: fine in eval
    check(ref, fused, x, steps=1)
    assert int(fused.num_batches_tracked) == 0


def test_large_mean_keeps_variance(device):
    """mean 1000, std 1 in float32: E[x^2] - E[x]^2 would lose the variance to cancellation."""
    x = (torch.randn(4, 3, 16, 16, dtype=torch.float64) + 1000.0).float().to(device)
    ref, fused = make("silu", 3, device, torch.float32, momentum=1.0)
    fused(x)
    ref(x.double().cpu())
    torch.testing.assert_close(fused.running_var.cpu().double(), ref[0].running_var, rtol=1e-4, atol=0)
    torch.testing.assert_close(fused.running_mean.cpu().double(), ref[0].running_mean, rtol=1e-6, atol=0)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act", ACTS)
def test_gradcheck(act, training, device):
    c = 3
    x = _randn((2, c, 2, 3), torch.float64, device, 1.0).requires_grad_()
    w = (torch.rand(c, dtype=torch.float64, device=device) + 0.5).requires_grad_()
    b = torch.randn(c, dtype=torch.float64, device=device).requires_grad_()
    inputs = [x, w, b]
    if act == "prelu":
        inputs.append((torch.rand(c, dtype=torch.float64, device=device) - 0.5).requires_grad_())
    name, alpha, _ = activation_spec(ACTS[act](c))
    rm = torch.randn(c, dtype=torch.float64, device=device)
    rv = torch.rand(c, dtype=torch.float64, device=device) + 0.5

    def fn(x, w, b, a=None):
        running = (None, None) if training else (rm, rv)
        return batch_norm_act(x, *running, w, b, training, 0.1, 1e-5, name, alpha, a)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=act != "silu")


LAUNCHES = {
    "per_channel": (["_channel_forward_kernel"], ["_channel_backward_kernel"]),
    "split": (
        ["_stats_kernel", "_finalize_kernel", "_forward_kernel"],
        ["_backward_reduce_kernel", "_backward_kernel"],
    ),
}


def test_kernel_launches_per_step(reduction, monkeypatch):
    """A small map's host time is its launches: one program per channel makes a training
    forward one kernel and backward one, with the parameter grads written in their dtypes."""
    from rtdetr_fused.kernels.launch import Launch

    launches, call = [], Launch.__call__

    def counting(self, *args):
        launches.append(self.kernel.fn.__name__)
        return call(self, *args)

    monkeypatch.setattr(Launch, "__call__", counting)
    _, fused = make("silu", 3, "cpu", torch.float32)
    y = fused(torch.randn(2, 3, 5, 6, requires_grad=True))
    forward, launches[:] = launches[:], []
    y.backward(torch.ones_like(y))
    assert (forward, launches) == LAUNCHES[reduction]


def test_same_bits_every_run(device):
    x = _randn((3, 5, 17, 19), torch.float32, device)
    _, first = make("mish", 5, device, torch.float32)
    outs = []
    for _ in range(2):
        fused = copy.deepcopy(first)
        y, grads = run(fused, x, torch.ones_like(x))
        outs.append([y, *grads, fused.running_mean, fused.running_var])
    assert all(torch.equal(a, b) for a, b in zip(*outs))


SHAPES = {
    "one_channel": ((2, 1, 5, 6), False),
    "one_pixel": ((3, 4, 1, 1), False),
    "odd_tails": ((3, 5, 7, 9), False),
    "hw_400": ((2, 3, 20, 20), False),
    "many_strips": ((2, 3, 48, 48), False),
    "channels_last": ((3, 5, 7, 9), True),
    "channels_last_one_channel": ((2, 1, 5, 6), True),
    "channels_last_wide": ((2, 70, 3, 5), True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_write_every_element(shape, dtype, device):
    """Outputs start as NaN; every element is written: tails, one channel, one pixel, strips."""
    size, channels_last = SHAPES[shape]
    x = _randn(size, dtype, device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    c = size[1]
    w, b, a = (torch.rand(c, device=device) + 0.5 for _ in range(3))
    rm, rv = torch.zeros(c, device=device), torch.ones(c, device=device)
    y = torch.full_like(x, float("nan"))
    mean, invstd = K.train_forward(x, y, rm, rv, 0.5, 1e-5, w, b, a, "prelu", 0.0, programs=3)
    var64, mean64 = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(invstd.double(), torch.rsqrt(var64 + 1e-5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rm.double(), 0.5 * mean64, rtol=1e-5, atol=1e-5)
    given = torch.full_like(x, float("nan"))
    K.forward(x, given, mean, invstd, w, b, a, "prelu", 0.0)
    assert torch.equal(given, y)  # a recomputed output has the bits of the original
    g = torch.randn_like(x)
    grads = [torch.full_like(t, float("nan")) for t in (x, w, b, a)]
    K.backward(x, g, *grads, mean, invstd, w, b, a, True, "prelu", 0.0, programs=3)
    leaves = [t.double().requires_grad_() for t in (x, w, b, a)]
    ref_y = torch.prelu(F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], True), leaves[3])
    ref_grads = torch.autograd.grad(ref_y, leaves, g.double())
    torch.testing.assert_close(y.double(), ref_y, rtol=TOL[dtype], atol=TOL[dtype])
    for got, want in zip(grads, ref_grads):  # grad_x, then sums over N * H * W elements
        torch.testing.assert_close(got.double(), want, rtol=TOL[dtype], atol=TOL[dtype] * (x.numel() // c) ** 0.5)


def test_non_dense_input(device):
    ref, fused = make("gelu", 3, device)
    x = _randn((2, 6, 5, 8), torch.float64, device)[:, ::2, :, 1:]
    check(ref, fused, x, steps=1)


@pytest.mark.parametrize(
    ("dtype", "param_dtype"),
    [(torch.float64, torch.float64), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)],
    ids=["float64", "bfloat16_float32_params", "bfloat16_bfloat16_params"],
)
def test_pytorch_path_without_interpreter(dtype, param_dtype, monkeypatch):
    """CPU tensors outside the interpreter take the PyTorch reference ops, with the same results:
    running statistics in another dtype than the accumulation's too, BatchNorm's options, eval."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = _randn((2, 3, 4, 5), dtype, "cpu").to(memory_format=torch.channels_last)
    for act in ("silu", "prelu", "leaky_relu"):
        for options in ({}, {"momentum": None}, {"track_running_stats": False}, {"affine": False}):
            check(*make(act, 3, "cpu", param_dtype, **options), x, steps=2)
        ref, fused = make(act, 3, "cpu", param_dtype)
        check(ref.eval(), fused.eval(), x, steps=1)  # gradients through the running statistics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_pytorch_path_statistics_are_batchnorms_bits(dtype, layout, monkeypatch):
    """The PyTorch path's training statistics (``batch_norm_update_stats`` and 1 / sqrt(var + eps)
    in float64, for the compiled ``bn_stats``) are native_batch_norm's, bit for bit: mean, 1 / std
    and the running update; and the eager training forward, which runs native_batch_norm, gives
    the output that ``_bn_act`` recomputes from them (``fuse_bn="recompute"``)."""
    from rtdetr_fused.ops import bn_act as ops

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = _randn((2, 5, 7, 9), dtype, "cpu", 3.0) + 2.0
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    running = [torch.rand(5, dtype=dtype) for _ in range(2)]
    ref_running = [t.clone() for t in running]
    mean, invstd = ops._bn_stats_cpu(x, *running, 0.1, 1e-3)
    _, ref_mean, ref_invstd = torch.native_batch_norm(x, None, None, *ref_running, True, 0.1, 1e-3)
    for got, want in zip((mean, invstd, *running), (ref_mean, ref_invstd, *ref_running)):
        assert torch.equal(got, want)
    weight, bias = _randn((5,), dtype, "cpu"), _randn((5,), dtype, "cpu")
    trained = [t.clone() for t in ref_running]
    out, mean, invstd = ops._bn_act_train(x, *trained, weight, bias, None, 0.1, 1e-3, "silu", 0.0)
    torch.native_batch_norm(x, None, None, *ref_running, True, 0.1, 1e-3)  # updates them in place
    for got, want in zip((mean, invstd, *trained), (ref_mean, ref_invstd, *ref_running)):
        assert torch.equal(got, want)
    assert torch.equal(out, ops._bn_act(x, mean, invstd, weight, bias, None, True, "silu", 0.0))
    assert out.stride() == x.stride()


@pytest.mark.parametrize("training", [True, False])
def test_module_parameters_by_attribute(training, device):
    """The module reads its parameters and buffers from its dicts; a parametrized weight (a
    property, not in ``_parameters``) and PReLU's single shared weight take the general path,
    with the same numbers."""
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, w):
            return 2 * w

    ref, fused = make("silu", 4, device)
    for bn in (ref[0], fused):
        parametrize.register_parametrization(bn, "weight", Doubled())
    ref.train(training)
    fused.train(training)
    x = _randn((2, 4, 3, 5), torch.float64, device)
    g = _randn(x.shape, torch.float64, device, 1.0)
    (y, grads), (ref_y, ref_grads) = run(fused, x, g), run(ref, x.cpu(), g.cpu())
    for got, want in [(y, ref_y), *zip(grads, ref_grads), (fused.running_var, ref[0].running_var)]:
        torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)
    shared = BatchNormAct2d(4, act=nn.PReLU(dtype=torch.float64), dtype=torch.float64)  # one weight for all
    shared.to(device).train(training)
    ref = nn.Sequential(nn.BatchNorm2d(4, dtype=torch.float64), nn.PReLU(dtype=torch.float64)).train(training)
    (y, grads), (ref_y, ref_grads) = run(shared, x, g), run(ref, x.cpu(), g.cpu())
    for got, want in [(y, ref_y), *zip(grads, ref_grads)]:
        torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


def test_state_dict_is_batchnorm2d():
    assert BatchNormAct2d(4, act="relu").state_dict().keys() == nn.BatchNorm2d(4).state_dict().keys()
    prelu = BatchNormAct2d(4, act="prelu", num_parameters=4)
    assert set(prelu.state_dict()) == {*nn.BatchNorm2d(4).state_dict(), "act.weight"}
    assert isinstance(prelu, nn.BatchNorm2d) and prelu.act.weight.shape == (4,)
    leaky = BatchNormAct2d(4, momentum=None, act=nn.LeakyReLU(0.1))
    assert activation_spec(leaky.act) == ("leaky_relu", 0.1, None) and leaky.momentum is None


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace is deprecated, still used by exporters
def test_tracing_records_standard_ops():
    module = BatchNormAct2d(3, act="mish").eval()
    graph = str(torch.jit.trace(module, torch.randn(2, 3, 4, 4)).graph)
    assert "rtdetr_fused::" not in graph and "batch_norm" in graph and "mish" in graph


@pytest.mark.parametrize("interpret", ["1", "0"], ids=["interpreter", "pytorch_path"])
def test_opcheck(interpret, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    mean, invstd = torch.zeros(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    w, b = torch.rand(3, dtype=torch.float64, requires_grad=True), torch.rand(3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.rtdetr_fused.bn_act, (x, mean, invstd, w, b, None, True, "silu", 0.0))
    for act, act_weight in (("silu", None), ("prelu", torch.rand(3, dtype=torch.float64))):
        for training in (True, False):
            args = (x, torch.randn_like(x), mean, invstd, w.detach(), b, act_weight, training, act, 0.0)
            torch.library.opcheck(torch.ops.rtdetr_fused.bn_act_backward, args)
    stats_args = (x, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), 0.1, 1e-5)
    torch.library.opcheck(torch.ops.rtdetr_fused.bn_stats, stats_args)


@pytest.mark.parametrize("act", ["silu", "prelu"])
def test_compiles_to_the_two_ops(act, device):
    """torch.compile sees bn_stats and bn_act (the eager forward's one-kernel fusion mutates the
    running statistics, which a custom op with autograd may not): one graph, and the outputs,
    gradients and running statistics of eager."""
    _, eager = make(act, 3, device, torch.float32)
    compiled_module = copy.deepcopy(eager)
    x = _randn((2, 3, 5, 6), torch.float32, device)
    explanation = torch._dynamo.explain(copy.deepcopy(eager))(x)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0
    code = explanation.graphs[0].code
    assert "rtdetr_fused.bn_stats" in code and "rtdetr_fused.bn_act" in code
    backend = "aot_eager" if device == "cpu" else "inductor"
    compiled = torch.compile(compiled_module, fullgraph=True, backend=backend)
    g = torch.randn_like(x)
    (y, grads), (ref_y, ref_grads) = run(compiled, x, g), run(eager, x, g)
    torch._dynamo.reset()
    for got, want in [(y, ref_y), *zip(grads, ref_grads), *zip(compiled_module.buffers(), eager.buffers())]:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rejects_bad_input():
    module = BatchNormAct2d(3)
    with pytest.raises(ValueError, match="4D input"):
        module(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match="input must be 4-D"):
        batch_norm_act(torch.randn(3, 4, 5), None, None, training=True)
    with pytest.raises(TypeError, match="input"):
        batch_norm_act(torch.ones(2, 3, 4, 5, dtype=torch.int64), None, None, training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        module(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="weight"):
        batch_norm_act(torch.randn(2, 3, 4, 5), None, None, torch.ones(4), training=True)
    with pytest.raises(ValueError, match="act_weight"):
        batch_norm_act(torch.randn(2, 3, 4, 5), None, None, training=True, act="prelu", act_weight=torch.ones(2))
    with pytest.raises(ValueError, match="unknown activation"):
        batch_norm_act(torch.randn(2, 3, 4, 5), None, None, training=True, act="tanh")
    with pytest.raises(ValueError, match="not supported"):
        BatchNormAct2d(3, act=nn.Tanh())


def _raised(fn) -> Exception:
    with pytest.raises(Exception) as info:
        fn()
    return info.value


@pytest.mark.parametrize(
    "misuse",
    [
        lambda f: f(torch.ones(2, 3, 4, 5, dtype=torch.int64), None, None, training=True),
        lambda f: f(torch.randn(2, 3, 4, 5), torch.zeros(4), torch.ones(4), training=True),
        lambda f: f(torch.randn(2, 3, 4, 5), None, None, torch.ones(4), training=True),
        lambda f: f(torch.randn(2, 3, 4, 5), None, None, torch.ones(3, dtype=torch.int64), training=True),
        lambda f: f(torch.randn(2, 3, 4, 5), torch.zeros(3), None, training=True),
        lambda f: f(torch.randn(2, 3, 4, 5), None, None, training=False),
        lambda f: f(torch.randn(2, 3, 4, 5), torch.zeros(3, device="meta"), torch.ones(3, device="meta")),
        lambda f: f(torch.randn(1, 3, 1, 1), None, None, training=True),
    ],
    ids=["int input", "stats size", "weight size", "int weight", "one stat", "eval no stats", "device", "one value"],
)
def test_errors_are_torchs_types(misuse):
    """Where F.batch_norm raises for a misuse, ours raises a subclass of its exception's type
    (code that catches torch's catches ours), with a message that names the argument."""
    theirs, ours = _raised(lambda: misuse(F.batch_norm)), _raised(lambda: misuse(batch_norm_act))
    assert isinstance(ours, type(theirs)), (type(ours).__mro__, type(theirs))


# --- memory kept for backward ------------------------------------------------------------------


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the unique storages autograd saves in a forward pass, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def saved_per_block(block, x: torch.Tensor) -> float:
    """Full tensors kept by one interior block: a chain of 3 blocks minus a chain of 2."""
    chains = [nn.Sequential(*(block() for _ in range(n))) for n in (2, 3)]
    return (saved_bytes(chains[1], x) - saved_bytes(chains[0], x)) / (x.numel() * x.element_size())


@pytest.mark.parametrize("act", ACTS)
def test_interior_block_keeps_two_tensors(act):
    c = 8
    x = torch.randn(2, c, 6, 6, requires_grad=True)

    def eager():
        return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), ACTS[act](c))

    def fused():
        return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), BatchNormAct2d(c, act=ACTS[act](c)))

    assert saved_per_block(fused, x) <= 2.1  # 2 full tensors plus mean and 1/std (2C values)
    eager_tensors = saved_per_block(eager, x)
    assert eager_tensors >= (2.0 if act in ("relu", "identity") else 3.0)
