"""Fused Triton activations (forward and backward) for Ultralytics RT-DETR and YOLO.

``import rtdetr_fused`` registers the custom ops and imports neither triton nor
ultralytics; kernels compile on first use.
"""

from . import functional
from .modules import ACTIVATIONS, GELU, Hardswish, LeakyReLU, Mish, PReLU, ReLU, ReLU6, SiLU, get_activation

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "GELU",
    "Hardswish",
    "LeakyReLU",
    "Mish",
    "PReLU",
    "ReLU",
    "ReLU6",
    "SiLU",
    "functional",
    "get_activation",
]
