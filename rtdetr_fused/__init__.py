"""Fused Triton activations (forward and backward) for Ultralytics RT-DETR and YOLO.

``import rtdetr_fused`` registers the custom ops and imports neither triton nor
ultralytics; kernels compile on first use.
"""

from . import functional
from .bn_act import BatchNormAct2d, batch_norm_act
from .modules import ACTIVATIONS, GELU, Hardswish, LeakyReLU, Mish, PReLU, ReLU, ReLU6, SiLU, get_activation

__version__ = "0.1.0"

# Ultralytics integration, imported on first use so `import rtdetr_fused` stays light.
_LAZY = {
    name: "rtdetr_fused.integrations.ultralytics"
    for name in ("patch_ultralytics", "unpatch_ultralytics", "replace_activations", "to_torch_nn")
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rtdetr_fused' has no attribute {name!r}")


__all__ = [
    "ACTIVATIONS",
    "BatchNormAct2d",
    "GELU",
    "Hardswish",
    "LeakyReLU",
    "Mish",
    "PReLU",
    "ReLU",
    "ReLU6",
    "SiLU",
    "batch_norm_act",
    "functional",
    "get_activation",
    *_LAZY,
]
