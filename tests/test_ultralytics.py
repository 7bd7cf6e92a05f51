"""Ultralytics integration: patch, replace, back to torch.nn, equivalence, fuse, predict, export, bad input.

Big models (rtdetr-l, yolo11n) run the PyTorch path (``pytorch_path``); the Triton kernels run through the
interpreter on a few Conv blocks on an 8x8 input.
"""

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("ultralytics")

import rtdetr_fused.integrations.ultralytics as U  # noqa: E402
from rtdetr_fused import GELU, Hardswish, LeakyReLU, Mish, PReLU, ReLU  # noqa: E402
from rtdetr_fused.cli import main  # noqa: E402
from rtdetr_fused.integrations.ultralytics.sites import _sites  # noqa: E402
from rtdetr_fused.ops.common import interpreting  # noqa: E402


@pytest.fixture(autouse=True)
def _unpatched():
    yield
    U.unpatch_ultralytics()


def _leaves(out) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _forward_backward(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    out = _leaves(model(x))
    sum((o.float() * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in out).backward()
    return out, [x.grad] + [p.grad for p in model.parameters() if p.requires_grad]


def _assert_same_as_torch_nn(model: nn.Module, x: torch.Tensor) -> None:
    """``model`` (ours) and its torch.nn copy, same weights: same outputs and gradients to fp32 tolerance."""
    reference = U.to_torch_nn(copy.deepcopy(model))
    assert not any(t.startswith("rtdetr_fused.") for t in U.activation_sites(reference))
    out, grads = _forward_backward(model, x)
    ref_out, ref_grads = _forward_backward(reference, x)
    torch.testing.assert_close(out, ref_out)
    assert all(g is not None for g in grads)
    torch.testing.assert_close(grads, ref_grads)


def test_patch_reaches_every_default_act_site_of_rtdetr(pytorch_path):
    from ultralytics import RTDETR
    from ultralytics.nn import tasks
    from ultralytics.nn.modules import Conv, ConvTranspose, RepConv

    originals = {c: (vars(c)["__init__"], c.default_act) for c in (Conv, ConvTranspose, RepConv)}
    parse_model = tasks.parse_model
    with U.patch_ultralytics("mish") as patch:
        assert patch.active
        model = RTDETR("rtdetr-l.yaml")
    # 12 Conv + 12 RepConv SiLU sites; HGNetv2's explicit nn.ReLU and AIFI's GELU are not default_act sites.
    assert U.activation_sites(model) == {"nn.ReLU": 67, "rtdetr_fused.Mish": 24, "nn.GELU": 1}
    mish = [m for _, _, m in _sites(model) if type(m) is Mish]
    assert len({id(m) for m in mish}) == 24, "one instance per layer"
    repconvs = [m for m in model.modules() if isinstance(m, RepConv)]
    assert len(repconvs) == 12 and all(type(m.act) is Mish for m in repconvs)
    assert not patch.active and tasks.parse_model is parse_model
    assert all(vars(c)["__init__"] is init and c.default_act is act for c, (init, act) in originals.items())


def test_patch_prelu_one_weight_per_channel(pytorch_path):
    from ultralytics import YOLO

    with U.patch_ultralytics("prelu"):
        model = YOLO("yolo11n.yaml").model  # its stride pass already ran every PReLU
    assert U.activation_sites(model) == {"rtdetr_fused.PReLU": 77}  # SPPF's cv1.act, set after __init__, too
    convs = [m for m in model.modules() if hasattr(m, "bn") and type(getattr(m, "act", None)) is PReLU]
    assert len(convs) == 77 and all(m.act.num_parameters == m.bn.num_features for m in convs)
    assert len({id(m.act.weight) for m in convs}) == 77
    with U.patch_ultralytics("prelu", num_parameters=1):
        model = YOLO("yolo11n.yaml").model
    assert {m.num_parameters for m in model.modules() if type(m) is PReLU} == {1}


def test_patch_direct_construction_replacement_and_yaml_activation():
    from ultralytics.nn.modules import Conv, RepConv
    from ultralytics.nn.tasks import ClassificationModel

    U.patch_ultralytics("leaky_relu", negative_slope=0.2)
    a, b = Conv(3, 8), Conv(8, 8)
    assert type(a.act) is LeakyReLU and a.act is not b.act and a.act.negative_slope == 0.2
    with U.patch_ultralytics("hardswish"):  # replaces the first patch
        assert type(Conv(3, 8).act) is Hardswish and type(RepConv(8, 8).act) is Hardswish
        cfg = {
            "nc": 2,
            "activation": "nn.ReLU()",
            "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "RepConv", [8, 8]]],
            "head": [[-1, 1, "Classify", [2]]],
        }
        with pytest.warns(UserWarning, match=r"activation: nn\.ReLU\(\) wins"):
            layers = ClassificationModel(cfg, verbose=False).model
    assert type(layers[0].act) is nn.ReLU, "the YAML's activation wins where Ultralytics applies it"
    assert type(layers[1].act) is Hardswish, "RepConv's own default_act is not the YAML's, as in Ultralytics"
    assert type(Conv(3, 8).act) is nn.SiLU


def test_replace_all_on_rtdetr_matches_torch_nn(pytorch_path):
    from ultralytics import RTDETR

    model = RTDETR("rtdetr-l.yaml")
    counts = U.replace_activations(model, "prelu", targets="all")
    assert counts == {
        ("nn.ReLU", "rtdetr_fused.PReLU"): 67,
        ("nn.SiLU", "rtdetr_fused.PReLU"): 24,
        ("nn.GELU", "rtdetr_fused.PReLU"): 1,
    }
    assert U.activation_sites(model) == {"rtdetr_fused.PReLU": 92}
    sized = {(type(parent).__name__, m.num_parameters > 1) for parent, _, m in _sites(model) if type(m) is PReLU}
    assert ("Conv", True) in sized and ("RepConv", True) in sized
    assert ("AIFI", False) in sized, "tokens keep their features last: one PReLU weight"
    net = model.model.train()
    for m in net.modules():  # PReLU weights away from their shared init, so a weight mix-up would show
        if type(m) is PReLU:
            m.weight.data.uniform_(0.05, 0.5)
    _assert_same_as_torch_nn(net, torch.rand(1, 3, 64, 64))


def test_replace_with_bitmask_relu_matches_torch_nn(pytorch_path):
    """Constructor arguments pass through: every site gets ReLU(bitmask=True)."""
    from ultralytics import YOLO

    model = YOLO("yolo11n.yaml").model.train()
    U.replace_activations(model, "relu", targets="all", bitmask=True)
    relus = [m for m in model.modules() if type(m) is ReLU]
    assert relus and all(m.bitmask for m in relus)
    _assert_same_as_torch_nn(model, torch.rand(2, 3, 64, 64))


def test_patched_yolo_matches_torch_nn(pytorch_path):
    from ultralytics import YOLO

    with U.patch_ultralytics("mish"):
        model = YOLO("yolo11n.yaml").model.train()
    _assert_same_as_torch_nn(model, torch.rand(2, 3, 64, 64))


def test_triton_kernels_through_the_interpreter():
    """The fused kernels (forward, backward, PReLU weight gradients) inside Ultralytics blocks, in
    float64: in float32 a PReLU weight's gradient, a sum of cancelling terms added in another
    order than torch's, can differ by more than float32's default tolerance (seen: 8e-6)."""
    if not interpreting():
        pytest.skip("the Triton interpreter is off (a GPU machine runs the kernels on CUDA tensors)")
    from ultralytics.nn.modules import Conv, RepConv

    torch.manual_seed(0)
    with U.patch_ultralytics("prelu"):
        net = nn.Sequential(Conv(3, 8, 3), RepConv(8, 8), Conv(8, 4, 1, act=nn.GELU()))
    assert U.replace_activations(net, "mish", targets="GELU") == {("nn.GELU", "rtdetr_fused.Mish"): 1}
    for m in net.modules():
        if type(m) is PReLU:
            m.weight.data.uniform_(0.05, 0.5)
    _assert_same_as_torch_nn(net.double().train(), torch.randn(2, 3, 8, 8, dtype=torch.float64))


def test_replace_keeps_device_dtype_mode_and_weights():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.SiLU(inplace=True), nn.PReLU(4, 0.125))
    net = net.double().eval()
    counts = U.replace_activations(net, "prelu", targets=("SiLU", "prelu"))
    assert counts == {("nn.SiLU", "rtdetr_fused.PReLU"): 1, ("nn.PReLU", "rtdetr_fused.PReLU"): 1}
    new, kept = net[2], net[3]
    assert new.num_parameters == 4 and new.weight.dtype == torch.float64 and not new.training
    assert kept.num_parameters == 4 and torch.all(kept.weight == 0.125) and kept.weight.dtype == torch.float64
    assert U.replace_activations(net, "gelu", targets="PReLU", approximate="tanh") == {
        ("rtdetr_fused.PReLU", "rtdetr_fused.GELU"): 2
    }
    assert type(net[2]) is GELU and net[2].approximate == "tanh"
    assert U.to_torch_nn(net) is net and type(net[2]) is nn.GELU and net[2].approximate == "tanh"


def test_rtdetr_fuse_and_predict(pytorch_path):
    import numpy as np
    from ultralytics import RTDETR

    with U.patch_ultralytics("mish"):
        model = RTDETR("rtdetr-l.yaml")
    net = model.model.eval()
    x = torch.rand(1, 3, 64, 64)
    # Compare the decoder's input features: BN folding changes rounding, which can reorder the
    # decoder's top-k query selection of an untrained model and so its outputs.
    features = []
    net.model[-1].register_forward_pre_hook(lambda module, args: features.append(_leaves(args)))
    with torch.no_grad():
        net(x)
        net.fuse(verbose=False)
        net(x)
    assert U.activation_sites(net)["rtdetr_fused.Mish"] == 24
    torch.testing.assert_close(features[1], features[0], rtol=1e-3, atol=1e-3)
    results = model.predict(np.full((64, 64, 3), 114, np.uint8), imgsz=64, device="cpu", verbose=False)
    assert len(results) == 1 and results[0].boxes is not None


@pytest.mark.filterwarnings("error::torch.jit.TracerWarning:rtdetr_fused")  # Ultralytics' head warns on its own
def test_onnx_export_matches_pytorch(pytorch_path, tmp_path, monkeypatch):
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)  # the exporter writes next to the model file
    with U.patch_ultralytics("prelu"):
        model = YOLO("yolo11n.yaml")
    for m in model.model.modules():
        if type(m) is PReLU:
            m.weight.data.uniform_(0.05, 0.5)
    path = model.export(format="onnx", imgsz=64, simplify=False, device="cpu")
    assert U.activation_sites(model.model) == {"rtdetr_fused.PReLU": 77}, "export leaves the model patched"
    onnx = pytest.importorskip("onnx")
    assert "PRelu" in {n.op_type for n in onnx.load(path).graph.node}
    ort = pytest.importorskip("onnxruntime")
    x = torch.rand(1, 3, 64, 64)
    session = ort.InferenceSession(path)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = _leaves(model.model.eval()(x))[0]
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-3)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown activation 'elu'"):
        U.patch_ultralytics("elu")
    with pytest.raises(ValueError, match="unknown activation"):
        U.replace_activations(nn.SiLU(), "elu")
    with pytest.raises(TypeError, match="negative_slope"):
        U.patch_ultralytics("mish", negative_slope=0.1)
    with pytest.raises(ValueError, match=r"targets \['Swish'\] name no activation type"):
        U.replace_activations(nn.Sequential(nn.SiLU()), "mish", targets=("SiLU", "Swish"))
    with pytest.raises(ValueError, match="name no activation type"):
        U.replace_activations(nn.Sequential(nn.SiLU()), "mish", targets=())
    with pytest.raises(ValueError, match="name no activation type"):
        U.FusedActivations("mish", targets="Tanh")
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Tanh())
    with pytest.warns(UserWarning, match="has no activation of types"):
        assert U.replace_activations(net, "mish", targets="all") == {}
    assert type(net[1]) is nn.Tanh


def test_cli_info_reports_rtdetr_sites(capsys):
    assert main(["info", "model=rtdetr-l.yaml"]) == 0
    out = capsys.readouterr().out
    assert "| nn.ReLU | 67 | 25 | 0 | 0 |" in out
    assert "| nn.SiLU | 24 | 2 | 12 | 24 |" in out
    assert "| nn.GELU | 1 | 1 | 0 | 0 |" in out
    assert "| total | 92 | 28 | 12 | 24 |" in out
