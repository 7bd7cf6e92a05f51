"""Ultralytics models for the model and training sections, and their activation variants.

Ultralytics and the integration (``rtdetr_fused.integrations.ultralytics``) are imported
only here and only when a section runs: without them the section is reported as skipped.
"""

import copy
import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

from rtdetr_fused.modules import TORCH_NN

from .core import Unavailable
from .providers import OURS

MODEL_CONFIGS = {"rtdetr-l": ("rtdetr-l.yaml", "RTDETRDetectionModel"), "yolo11n": ("yolo11n.yaml", "DetectionModel")}
NUM_CLASSES = 80


def build(name: str) -> nn.Module:
    """A freshly initialised model from its YAML, set up as Ultralytics' trainer does (nc, args)."""
    try:
        from ultralytics.cfg import get_cfg
        from ultralytics.nn import tasks
        from ultralytics.utils import LOGGER
    except ImportError as e:
        raise Unavailable(f"ultralytics not installed ({e})") from e
    cfg, cls = MODEL_CONFIGS[name]
    level = LOGGER.level
    LOGGER.setLevel(logging.ERROR)  # 'no model scale passed' and the layer table
    try:
        model = getattr(tasks, cls)(cfg, nc=NUM_CLASSES, verbose=False)
    finally:
        LOGGER.setLevel(level)
    model.nc, model.args = NUM_CLASSES, get_cfg()
    return model


def replacer() -> Callable:
    try:
        from rtdetr_fused.integrations.ultralytics import replace_activations
    except ImportError as e:
        raise Unavailable(f"rtdetr_fused.integrations.ultralytics.replace_activations not importable ({e})") from e
    return replace_activations


def to_torch_nn(model: nn.Module) -> nn.Module:
    """The integration's ``to_torch_nn``: each of our activations back to its torch.nn class, in
    place, same settings and weights: the fair eager baseline for a swapped model."""
    from rtdetr_fused.integrations.ultralytics import to_torch_nn

    return to_torch_nn(model)


def count_ours(model: nn.Module) -> int:
    """Activation call sites running our modules (a shared module counts at each site)."""
    return sum(type(m) in TORCH_NN for _, m in model.named_modules(remove_duplicate=False))


Variant = tuple[str, str | None, nn.Module | Exception, int | None]
FUSE_BN = f"{OURS}+fuse_bn"
"""Ours with ``replace_activations(..., fuse_bn=True)``: BatchNorm fused into each Conv block's
activation, and HGBlocks' concatenations not saved."""
RECOMPUTE = f"{OURS}+recompute"
"""Ours with ``fuse_bn="recompute"``: that, with each block's output recomputed in backward by
the convs reading it instead of kept."""


def _replaced(base: nn.Module, replace: Callable, activation: str, **kwargs) -> nn.Module | Exception:
    """A copy of ``base`` with ``activation`` everywhere, or the exception that prevented it:
    the integration's failure is a result, not a crash."""
    try:
        model = copy.deepcopy(base)
        replace(model, activation, targets="all", **kwargs)
    except Exception as e:
        return e
    return model


def variants(base: nn.Module, activations: tuple[str, ...]) -> Iterator[Variant]:
    """(provider, activation, model or the exception that prevented it, call sites swapped):
    the stock model, then per activation ours (``targets="all"``), ours with ``fuse_bn=True`` and
    with ``fuse_bn="recompute"``, and the torch.nn twin of ours. Each model is a fresh copy of
    ``base``, built on the host before it is handed out."""
    yield "stock", None, copy.deepcopy(base), None
    for activation in activations:
        try:
            replace = replacer()
        except Unavailable as e:
            ours = e
        else:
            ours = _replaced(base, replace, activation)
        if isinstance(ours, Exception):
            for provider in (OURS, FUSE_BN, RECOMPUTE, "eager"):
                yield provider, activation, ours, None
            continue
        swapped = count_ours(ours)
        eager = to_torch_nn(copy.deepcopy(ours))
        yield OURS, activation, ours, swapped
        del ours
        yield FUSE_BN, activation, _replaced(base, replace, activation, fuse_bn=True), swapped
        yield RECOMPUTE, activation, _replaced(base, replace, activation, fuse_bn="recompute"), swapped
        yield "eager", activation, eager, swapped


def synthetic_batch(batch: int, imgsz: int, device: torch.device, seed: int, boxes: int = 8) -> dict:
    """Random images and ``boxes`` random labelled boxes per image, in Ultralytics' batch format
    (normalised xywh)."""
    gen = torch.Generator().manual_seed(seed)
    n = batch * boxes
    centre = 0.2 + 0.6 * torch.rand(n, 2, generator=gen)
    size = 0.05 + 0.3 * torch.rand(n, 2, generator=gen)
    return {
        "img": torch.rand(batch, 3, imgsz, imgsz, generator=gen).to(device),
        "cls": torch.randint(0, NUM_CLASSES, (n, 1), generator=gen).float().to(device),
        "bboxes": torch.cat([centre, size], 1).to(device),
        "batch_idx": torch.arange(batch).repeat_interleave(boxes).float().to(device),
    }
