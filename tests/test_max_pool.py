"""Max pooling that saves its input instead of argmax indices: PyTorch's outputs and gradients
bit for bit (ties included), what it keeps for backward, and where fuse_bn_act uses it."""

import pytest
import torch
from torch import nn

from rtdetr_fused.integrations.fuse_bn import MaxPoolForward, fuse_bn_act, unfuse_bn_act
from rtdetr_fused.max_pool import max_pool2d

# (kernel_size, stride, padding, dilation, ceil_mode): HGStem's, SPPF's, and overlapping others.
CONFIGS = [(2, 1, 0, 1, True), (5, 1, 2, 1, False), (3, 2, 1, 1, True), ((3, 2), (2, 1), (1, 0), (1, 2), False)]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_output_and_gradient_as_torch(config, dtype, channels_last, device):
    x = torch.randint(-3, 4, (2, 3, 9, 11), device=device).to(dtype)  # small integers: many ties
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    kernel_size, stride, padding, dilation, ceil_mode = config
    torch_pool = nn.MaxPool2d(kernel_size, stride, padding, dilation, ceil_mode=ceil_mode)
    g = torch.randn(torch_pool(x).shape, device=device, dtype=dtype)
    results = []
    for pool in (torch_pool, lambda t: max_pool2d(t, *config)):
        xr = x.clone().requires_grad_()
        y = pool(xr)
        results.append((y, *torch.autograd.grad(y, xr, g)))
    for ours, theirs in zip(results[1], results[0]):
        assert torch.equal(ours, theirs) and ours.stride() == theirs.stride()


def _saved_dtypes(pool) -> list[torch.dtype]:
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        pool(torch.randn(2, 3, 8, 8, requires_grad=True) * 1.0)
    return [t.dtype for t in saved]


def test_saves_the_input_not_indices():
    assert torch.int64 in _saved_dtypes(nn.MaxPool2d(2, 1))
    assert _saved_dtypes(lambda t: max_pool2d(t, 2, 1)) == [torch.float32]


def test_gradcheck():
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: max_pool2d(t, 3, 1, 1), (x,))


def test_fuse_bn_act_takes_stride_one_pools_only():
    model = nn.Sequential(nn.MaxPool2d(2, 1, ceil_mode=True), nn.MaxPool2d(2), nn.MaxPool2d(3, 1, return_indices=False))
    assert fuse_bn_act(model) == 2
    assert [isinstance(vars(m).get("forward"), MaxPoolForward) for m in model] == [True, False, True]
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    eager = nn.Sequential(nn.MaxPool2d(2, 1, ceil_mode=True), nn.MaxPool2d(2), nn.MaxPool2d(3, 1))
    (ours,), (theirs,) = (torch.autograd.grad(m(x).sum(), x) for m in (model, eager))
    assert torch.equal(ours, theirs)
    with torch.no_grad():
        assert torch.equal(model(x), eager(x))
    assert unfuse_bn_act(model) == 2 and not any("forward" in vars(m) for m in model)
