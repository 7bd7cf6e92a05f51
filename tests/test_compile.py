"""torch.compile(fullgraph=True) of a Conv-BN-activation model: one graph, no breaks, and
the same outputs and gradients as eager, for every activation."""

import pytest
import torch
from torch import nn

from rtdetr_fused import ACTIVATIONS, get_activation


def _model(name: str, **kwargs) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), get_activation(name, **kwargs))


CONFIGS = {**{name: {} for name in ACTIVATIONS}, "relu6_bitmask": {"bitmask": True}}


@pytest.mark.parametrize("config", CONFIGS)
def test_compiles_without_graph_breaks(config, device):
    torch.manual_seed(0)
    model = _model(config.removesuffix("_bitmask"), **CONFIGS[config]).to(device)
    x = torch.randn(2, 3, 6, 6, device=device)

    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0
    assert "rtdetr_fused" in explanation.graphs[0].code  # our op, not a fallback

    compiled = torch.compile(model, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    grads = []
    outs = []
    for fn in (model, compiled):
        xr = x.clone().requires_grad_()
        out = fn(xr)
        params = [xr, *model.parameters()]
        grads.append(torch.autograd.grad(out, params, torch.ones_like(out)))
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_inductor_cpu_compiles_the_custom_ops():
    """The default backend too, once (it needs a C++ compiler, so it costs seconds)."""
    model = _model("mish")
    x = torch.randn(2, 3, 6, 6)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
