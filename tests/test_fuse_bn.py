"""fuse_bn_act on Ultralytics models: which blocks, unchanged state_dict keys, the same numbers as
eager in training and eval, pickling, model.fuse(), unfuse, memory kept for backward.

Whole models run the PyTorch path (``pytorch_path``); the Triton kernels run through the
interpreter on a few blocks with a tiny input.
"""

import copy
import io

import pytest
import torch
from test_bn_act import saved_per_block
from torch import nn

pytest.importorskip("ultralytics")

from ultralytics.nn.modules import Conv, Conv2, DWConv  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

from rtdetr_fused.integrations.fuse_bn import FusedConvForward, MaxPoolForward, fuse_bn_act, unfuse_bn_act  # noqa: E402
from rtdetr_fused.integrations.ultralytics import patch_ultralytics, replace_activations, to_torch_nn  # noqa: E402
from rtdetr_fused.modules import Mish  # noqa: E402
from rtdetr_fused.ops.common import interpreting  # noqa: E402


@pytest.fixture(scope="module")
def yolo() -> nn.Module:
    torch.manual_seed(0)
    return DetectionModel("yolo11n.yaml", verbose=False).double()


def _fused_blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(vars(m).get("forward"), FusedConvForward)]


def _leaves(out) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _step(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs, grads of input and parameters, buffers after one forward/backward."""
    x = x.clone().requires_grad_(True)
    out = _leaves(model(x))
    sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view(o.shape)).sum() for o in out).backward()
    return [*out, x.grad, *(p.grad for p in model.parameters()), *model.buffers()]


def test_fuses_conv_blocks_and_keeps_keys(yolo):
    model = copy.deepcopy(yolo)
    keys = list(model.state_dict())
    expected = [
        m
        for m in model.modules()
        if type(m) in (Conv, DWConv) and not isinstance(m.act, nn.Identity) and hasattr(m, "bn")
    ]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]  # SPPF's, stride 1
    assert fuse_bn_act(model) == len(expected) + len(pools) and len(expected) > 50 and len(pools) == 1
    assert _fused_blocks(model) == expected and isinstance(vars(pools[0])["forward"], MaxPoolForward)
    assert list(model.state_dict()) == keys
    assert fuse_bn_act(model) == 0  # already fused
    assert unfuse_bn_act(model) == len(expected) + len(pools)
    assert not _fused_blocks(model) and list(model.state_dict()) == keys


def test_training_and_eval_match_eager(yolo, pytorch_path):
    eager, fused = copy.deepcopy(yolo).train(), copy.deepcopy(yolo).train()
    fuse_bn_act(fused)
    # Seeded: not whatever earlier tests left in the RNG. At 32x32 the deepest BNs normalize 2 values.
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        torch.testing.assert_close(_step(fused, x), _step(eager, x), rtol=1e-7, atol=1e-10)
    eager.eval()
    fused.eval()
    torch.testing.assert_close(_leaves(fused(x)), _leaves(eager(x)), rtol=1e-9, atol=1e-9)


def test_pickle_fuse_and_checkpoints(yolo, pytorch_path):
    model = copy.deepcopy(yolo).eval()
    fuse_bn_act(model)
    n = len(_fused_blocks(model))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    blocks = _fused_blocks(loaded)
    assert len(blocks) == n and all(b.forward.block is b for b in blocks)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    expected = _leaves(model(x))
    torch.testing.assert_close(_leaves(loaded(x)), expected, rtol=1e-9, atol=1e-9)
    # Checkpoints load both ways, strictly.
    eager = copy.deepcopy(yolo)
    eager.load_state_dict(loaded.state_dict())
    loaded.load_state_dict(eager.state_dict())
    # model.fuse() folds BN into the conv and runs forward_fuse, with the activation.
    loaded.fuse(verbose=False)
    assert not _fused_blocks(loaded) and not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    torch.testing.assert_close(_leaves(loaded(x)), expected, rtol=1e-7, atol=1e-7)


def test_which_blocks_qualify(pytorch_path):
    prelu = Conv(3, 4, 3, act=nn.PReLU(4))
    blocks = nn.Sequential(
        prelu,
        DWConv(4, 4, 3, act=Mish()),
        Conv(4, 4, 1, act=False),  # nn.Identity: eager BN
        Conv(4, 4, 1, act=nn.Tanh()),  # unsupported
        Conv2(4, 4, 3),  # adds a branch in its own forward
    ).double()
    eager = copy.deepcopy(blocks)
    assert fuse_bn_act(blocks) == 2 and _fused_blocks(blocks) == [blocks[0], blocks[1]]
    assert "0.act.weight" in blocks.state_dict()
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64)
    torch.testing.assert_close(_step(blocks, x), _step(eager, x), rtol=1e-9, atol=1e-9)
    prelu.act = nn.LeakyReLU(0.25)  # read at each call
    eager[0].act = nn.LeakyReLU(0.25)
    torch.testing.assert_close(blocks(x), eager(x), rtol=1e-9, atol=1e-9)


def test_kernels_through_interpreter():
    assert interpreting()
    blocks = nn.Sequential(Conv(3, 4, 3, act=nn.SiLU()), DWConv(4, 4, 3, act=nn.PReLU(4))).double()
    eager = copy.deepcopy(blocks)
    fuse_bn_act(blocks)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    torch.testing.assert_close(_step(blocks, x), _step(eager, x), rtol=1e-9, atol=1e-9)


def test_interior_conv_block_keeps_two_tensors():
    def block(fuse: bool):
        conv = Conv(8, 8, 3, act=nn.SiLU())
        if fuse:
            fuse_bn_act(conv)
        return conv

    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    assert saved_per_block(lambda: block(True), x) <= 2.1
    assert saved_per_block(lambda: block(False), x) >= 3.0


def test_fuse_bn_option_of_the_ultralytics_api(yolo):
    """replace_activations and patch_ultralytics with fuse_bn=True fuse the Conv blocks;
    to_torch_nn unfuses them, so the model needs nothing of this package."""
    model = copy.deepcopy(yolo)
    keys = list(model.state_dict())
    replace_activations(model, "mish", fuse_bn=True)
    fused = _fused_blocks(model)
    assert len(fused) > 50 and all(isinstance(m.act, Mish) for m in fused)
    assert list(model.state_dict()) == keys
    to_torch_nn(model)
    assert not _fused_blocks(model) and not any(type(m).__module__.startswith("rtdetr_fused") for m in model.modules())
    with patch_ultralytics("silu", fuse_bn=True):
        built = DetectionModel("yolo11n.yaml", verbose=False)
    assert len(_fused_blocks(built)) == len(fused)
