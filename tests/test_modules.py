"""Modules: torch.nn's signatures, repr and state_dict; lookup by name; export fallbacks."""

import inspect

import pytest
import torch
from torch import nn

import rtdetr_fused
from rtdetr_fused import ACTIVATIONS, get_activation

TORCH_NN = {
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "hardswish": nn.Hardswish,
    "leaky_relu": nn.LeakyReLU,
    "relu6": nn.ReLU6,
    "prelu": nn.PReLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
}


def test_names():
    assert list(ACTIVATIONS) == ["silu", "mish", "hardswish", "leaky_relu", "relu6", "prelu", "relu", "gelu"]


@pytest.mark.parametrize("name", TORCH_NN)
def test_same_signature_repr_and_state_dict(name):
    ours, theirs = ACTIVATIONS[name], TORCH_NN[name]
    params, torch_params = inspect.signature(ours.__init__).parameters, inspect.signature(theirs.__init__).parameters
    assert list(params.values())[: len(torch_params)] == list(torch_params.values())  # torch's, in order
    assert list(params)[len(torch_params) :] == (["bitmask"] if name in ("leaky_relu", "relu6", "relu") else [])
    assert ours.__doc__ and "(x)" in ours.__doc__  # the formula
    a, b = ours(), theirs()
    assert repr(a) == repr(b)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert isinstance(a, theirs)


@pytest.mark.parametrize(
    "name,kwargs",
    [("leaky_relu", {"negative_slope": 0.1, "inplace": True}), ("gelu", {"approximate": "tanh"}), ("prelu", {})],
)
def test_module_matches_torch(name, kwargs, device):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, device=device)
    ours, theirs = get_activation(name, **kwargs).to(device), TORCH_NN[name](**kwargs).to(device)
    assert repr(ours) == repr(theirs)
    torch.testing.assert_close(ours(x.clone()), theirs(x.clone()), rtol=1e-6, atol=1e-6)


def test_prelu_state_dict_both_ways():
    theirs = nn.PReLU(num_parameters=4, init=0.1)
    with torch.no_grad():
        theirs.weight.uniform_()
    ours = rtdetr_fused.PReLU(num_parameters=4)
    ours.load_state_dict(theirs.state_dict())
    back = nn.PReLU(num_parameters=4)
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back.weight, theirs.weight)
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(ours(x), theirs(x))


def test_get_activation():
    assert isinstance(get_activation("Leaky-ReLU", negative_slope=0.2), rtdetr_fused.LeakyReLU)
    assert get_activation("prelu", num_parameters=8).weight.shape == (8,)
    with pytest.raises(ValueError, match="silu, mish"):
        get_activation("elu")


@pytest.mark.parametrize(
    "alias, cls, kwargs",
    [
        ("swish", "SiLU", {}),
        ("hard_swish", "Hardswish", {}),
        ("leakyrelu", "LeakyReLU", {"negative_slope": 0.01}),
        ("ReLU6", "ReLU6", {}),
        ("gelu_tanh", "GELU", {"approximate": "tanh"}),
        ("GELU", "GELU", {"approximate": "none"}),
    ],
)
def test_get_activation_aliases(alias, cls, kwargs):
    """timm's names and torch.nn's class names, as timm's ``create_act`` takes them."""
    module = get_activation(alias)
    assert type(module) is getattr(rtdetr_fused, cls)
    assert all(getattr(module, k) == v for k, v in kwargs.items())


def test_import_is_light():
    """import rtdetr_fused pulls in neither ultralytics nor triton (kernels load on first use)."""
    import subprocess
    import sys

    code = "import sys, rtdetr_fused; print('ultralytics' in sys.modules, 'triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


class Block(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = act

    def forward(self, x):
        return self.act(self.conv(x))


@pytest.mark.filterwarnings("error::torch.jit.TracerWarning")  # a user's trace of our modules prints none
@pytest.mark.parametrize("name", ["silu", "prelu"])
def test_export_paths_use_reference_ops(name, tmp_path):
    """jit.trace, torch.export and ONNX see the standard op, not the custom one."""
    model = Block(get_activation(name)).eval()
    x = torch.randn(1, 3, 8, 8)
    expected = model(x)
    traced = torch.jit.trace(model, x)
    assert "rtdetr_fused::" not in str(traced.inlined_graph)
    torch.testing.assert_close(traced(x), expected)
    exported = torch.export.export(model, (x,))
    assert not any("rtdetr_fused" in str(node.target) for node in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(x), expected)
    onnx = pytest.importorskip("onnx")
    for dynamo in (False, True):
        path = tmp_path / f"block-{dynamo}.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=dynamo)
        assert not any(node.domain.startswith("rtdetr") for node in onnx.load(str(path)).graph.node)


def test_autocast_passes_the_dtype_through():
    """Like F.silu, the op returns the dtype autocast gives it (the conv's bfloat16 here)."""
    model = Block(get_activation("mish"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(1, 3, 8, 8))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert model.conv.weight.grad is not None and model.conv.weight.grad.dtype == torch.float32


def test_prelu_parametrized_weight():
    """The module reads its weight from its parameter dict, or, parametrized, through the
    parametrization (torch.nn.utils.parametrize), as torch.nn.PReLU does."""
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, w):
            return 2 * w

    ours, theirs = rtdetr_fused.PReLU(3), nn.PReLU(3)
    for m in (ours, theirs):
        parametrize.register_parametrization(m, "weight", Doubled())
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(ours(x), theirs(x))
