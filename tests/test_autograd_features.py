"""Autograd beyond first-order reverse mode, against torch.nn in float64: double backward
(gradgradcheck of every op: activations, bit masks, in place, PReLU, BatchNorm+activation in
training and eval, the recompute path), forward-mode AD, torch.func (jvp, grad, vmap, jacrev),
and a gradient-penalty model. Small shapes: the interpreter runs the kernels."""

import copy
from functools import partial

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from reference import CASES, INPLACE, module_kwargs
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vmap

import rtdetr_fused.functional as RF
from rtdetr_fused import get_activation
from rtdetr_fused.activations import TABLE
from rtdetr_fused.bn_act import BatchNormAct2d, batch_norm_act
from rtdetr_fused.modules import TORCH_NN
from rtdetr_fused.recompute import consume

SHAPE = (2, 3, 2, 3)
TOL = dict(rtol=1e-10, atol=1e-12)


def _x(shape=SHAPE, seed=0) -> torch.Tensor:
    """Inputs away from the kinks (0, +-3, 6), where finite differences would straddle them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    x = torch.where((x.abs() - 0).abs() < 0.1, x + 0.3, x)
    for kink in (3.0, 6.0):
        x = torch.where((x.abs() - kink).abs() < 0.1, x + 0.3, x)
    return x.requires_grad_()


# --- double backward -------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_gradgradcheck_activation(name):
    ours, _ = CASES[name]
    assert torch.autograd.gradgradcheck(lambda t: ours(RF, t), (_x(),))


@pytest.mark.parametrize("name", INPLACE)
def test_gradgradcheck_inplace(name):
    fn = getattr(RF, name.removesuffix("_neg"))
    kwargs = {"negative_slope": -0.3 if name.endswith("_neg") else 0.2} if name.startswith("leaky") else {}
    assert torch.autograd.gradgradcheck(lambda t: fn(t * 1.0, inplace=True, **kwargs), (_x(),))


@pytest.mark.parametrize("channels", [1, 3])
def test_gradgradcheck_prelu(channels):
    weight = torch.linspace(-0.5, 0.5, channels, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradgradcheck(RF.prelu, (_x(), weight))


def _bn_inputs(act: str):
    c = SHAPE[1]
    weight = torch.linspace(0.5, 1.5, c, dtype=torch.float64).requires_grad_()
    bias = torch.linspace(-0.2, 0.2, c, dtype=torch.float64).requires_grad_()
    act_weight = torch.linspace(0.1, 0.3, c, dtype=torch.float64).requires_grad_() if act == "prelu" else None
    return weight, bias, act_weight


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act", [*TABLE, "identity"])
def test_gradgradcheck_bn_act(act, training):
    weight, bias, act_weight = _bn_inputs(act)
    mean = torch.linspace(-0.3, 0.3, SHAPE[1], dtype=torch.float64)
    var = torch.linspace(0.5, 2.0, SHAPE[1], dtype=torch.float64)
    alpha = 0.2 if act == "leaky_relu" else 0.0

    def fn(x, w, b, *a):
        stats = (None, None) if training else (mean, var)
        return batch_norm_act(x, *stats, w, b, training, act=act, alpha=alpha, act_weight=a[0] if a else None)

    inputs = (_x(), weight, bias) + ((act_weight,) if act_weight is not None else ())
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)  # random directions: the kernels are slow


def test_gradgradcheck_bn_act_running_statistics_untouched_by_double_backward():
    """Training with running statistics: the double backward recomputes, never updates them."""
    weight, bias, _ = _bn_inputs("silu")
    running = [torch.zeros(SHAPE[1], dtype=torch.float64), torch.ones(SHAPE[1], dtype=torch.float64)]
    x = _x()
    y = batch_norm_act(x, *running, weight, bias, True, act="silu")
    after_forward = [t.clone() for t in running]
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    gx.square().sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(running, after_forward))


@pytest.mark.parametrize("act", ["silu", "prelu"])
def test_gradgradcheck_recompute(act):
    """fuse_bn="recompute": the conv keeps the fused output's recipe; its double backward
    differentiates through the recomputed output, which autograd gives the BatchNorm's node."""
    torch.manual_seed(0)
    conv = nn.Conv2d(SHAPE[1], 2, 3, padding=1, bias=False, dtype=torch.float64)
    weight, bias, act_weight = _bn_inputs(act)

    def fn(x, w, b, cw):
        y = batch_norm_act(x, None, None, w, b, True, act=act, act_weight=act_weight, recompute=True)
        return consume(lambda t: torch.nn.functional.conv2d(t, cw, padding=1), y)

    cw = conv.weight.detach().requires_grad_()
    assert torch.autograd.gradgradcheck(fn, (_x(), weight, bias, cw), fast_mode=True)


def test_first_order_backward_output_does_not_require_grad():
    """Without create_graph nothing extra: the kernels' gradient, not a graph."""
    x = _x()
    (gx,) = torch.autograd.grad(RF.silu(x).sum(), x)
    assert not gx.requires_grad


# --- torch.func and forward-mode AD against torch.nn -------------------------------------------

MODULES = {name: module_kwargs(name, SHAPE[1]) for name in TABLE} | {"relu_bitmask": {"bitmask": True}}


def _pair(config: str) -> tuple[nn.Module, nn.Module]:
    """(ours, torch.nn's) with the same state."""
    name = config.removesuffix("_bitmask").removesuffix("_tanh")
    ours = get_activation(name, **MODULES[config]).double()
    kwargs = {k: v for k, v in MODULES[config].items() if k != "bitmask"}
    theirs = type(ours).__bases__[0](**kwargs).double()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _bn_pair(act: str, training: bool, track_running_stats: bool = True) -> tuple[nn.Module, nn.Module]:
    """(BatchNormAct2d, torch.nn's BatchNorm2d then activation) with the same state."""
    torch.manual_seed(0)
    c = SHAPE[1]
    kwargs = dict(dtype=torch.float64, track_running_stats=track_running_stats)
    ours = BatchNormAct2d(c, act=get_activation(act, **MODULES[act]).double(), **kwargs)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.2, 0.2)
        if track_running_stats:
            ours.running_mean.uniform_(-0.3, 0.3)
            ours.running_var.uniform_(0.5, 2.0)
    theirs = nn.Sequential(nn.BatchNorm2d(c, **kwargs), TORCH_NN[type(ours.act)](**MODULES[act]).double())
    theirs.load_state_dict(
        {k.replace("act.", "1.") if k.startswith("act.") else f"0.{k}": v for k, v in ours.state_dict().items()}
    )
    return ours.train(training), theirs.train(training)


def _bn_buffers(m: nn.Module) -> list[torch.Tensor]:
    return list((m if isinstance(m, BatchNormAct2d) else m[0]).buffers())


TARGETS = {
    **{f"act_{c}": partial(_pair, c) for c in MODULES},
    **{f"bn_{a}_eval": partial(_bn_pair, a, False) for a in ("silu", "relu", "prelu")},
    **{f"bn_{a}_train": partial(_bn_pair, a, True) for a in ("silu", "leaky_relu", "prelu")},
    **{f"bn_{a}_batch_stats": partial(_bn_pair, a, True, False) for a in ("silu", "prelu")},
}
"""Each -> a fresh (ours, torch.nn's) pair: every activation, BatchNormAct2d in eval, in training
(running statistics updated in place: torch.func refuses that for torch.nn, and for ours alike),
and in training without running statistics."""


def _assert_same(transform, target: str) -> None:
    """``transform(module)`` on ours and torch.nn's: same results, same buffers after; or, where
    torch.nn's raises, the same error."""
    ours, theirs = TARGETS[target]()
    try:
        want = transform(theirs)
    except RuntimeError as e:
        assert target.endswith("_train"), f"torch.nn refused {target}: {e}"
        with pytest.raises(RuntimeError) as info:
            transform(ours)
        assert str(info.value).split(":")[0] == str(e).split(":")[0]
        return
    got = transform(ours)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want), strict=True):
        torch.testing.assert_close(a, b, **TOL)
    if target.startswith("bn_"):
        for a, b in zip(_bn_buffers(ours), _bn_buffers(theirs)):
            torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("target", TARGETS)
def test_jvp(target):
    x, t = _x().detach(), _x(seed=1).detach()
    _assert_same(lambda m: jvp(m, (x,), (t,)), target)


@pytest.mark.parametrize("target", TARGETS)
def test_grad(target):
    x = _x().detach()
    _assert_same(lambda m: grad(lambda t: m(t).square().sum())(x), target)


@pytest.mark.parametrize("target", TARGETS)
def test_jacrev_input_and_parameters(target):
    x = _x().detach()

    def jac(m):
        params = dict(m.named_parameters())
        return jacrev(lambda p, t: functional_call(m, p, (t,)), argnums=(0, 1))(params, x)

    _assert_same(jac, target)


@pytest.mark.parametrize("dim", [0, 2], ids=["dim0", "inner"])
@pytest.mark.parametrize("target", TARGETS)
def test_vmap(target, dim):
    """Over dim 0 and an inner dim. Training BatchNorm: torch.func refuses the in-place update of
    unbatched running statistics with a batched value, for torch.nn and for ours alike."""
    xs = _x((*SHAPE[:dim], 2, *SHAPE[dim:])).detach()
    _assert_same(lambda m: vmap(m, in_dims=dim)(xs), target)


@pytest.mark.parametrize("target", TARGETS)
def test_forward_ad_dual_numbers(target):
    x, t = _x().detach(), _x(seed=1).detach()

    def tangent(m):
        with fwAD.dual_level():
            out = m(fwAD.make_dual(x, t))
            primal, tan = fwAD.unpack_dual(out)
            return primal.clone(), tan.clone()

    _assert_same(tangent, target)


@pytest.mark.parametrize("name", ["silu", "relu"])
def test_forward_ad_inplace(name):
    x, t = _x().detach(), _x(seed=1).detach()
    results = []
    for fn in (getattr(RF, name), getattr(torch.nn.functional, name)):
        with fwAD.dual_level():
            d = fwAD.make_dual(x.clone(), t)
            y = d * 1.0
            out = fn(y, inplace=True)
            assert out is y
            results.append([u.clone() for u in fwAD.unpack_dual(out)[:2]])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL)


# --- gradient penalty ----------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["silu", "leaky_relu", "prelu"])
def test_gradient_penalty_model(act):
    """Conv-BN-act twice, loss plus the squared input gradient (create_graph=True), one backward:
    the parameter gradients of torch.nn's model."""
    _, first = _bn_pair(act, True)
    _, second = _bn_pair(act, True)
    torch.manual_seed(1)
    theirs = nn.Sequential(
        nn.Conv2d(2, SHAPE[1], 3, padding=1, dtype=torch.float64),
        *first,
        nn.Conv2d(SHAPE[1], SHAPE[1], 1, dtype=torch.float64),
        *second,
    ).train()
    ours = copy.deepcopy(theirs)
    for i in (1, 4):
        bn, a = ours[i], ours[i + 1]
        fused = BatchNormAct2d(SHAPE[1], act=get_activation(act, **MODULES[act]).double(), dtype=torch.float64)
        fused.load_state_dict({**bn.state_dict(), **{f"act.{k}": v for k, v in a.state_dict().items()}})
        ours[i], ours[i + 1] = fused, nn.Identity()
    x0 = _x((2, 2, 3, 3)).detach()
    grads = []
    for model in (ours, theirs):
        x = x0.clone().requires_grad_()
        out = model(x)
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        loss = out.square().mean() + gx.square().sum()
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL)
