"""Finding and counting the activation sites of a model, and the Ultralytics classes with a ``default_act``.

A site is a module slot (parent, attribute): a module held by several slots counts once per slot.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator

from torch import nn

from ...modules import ACTIVATIONS, TORCH_NN

FUSED: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in ACTIVATIONS.values()}
"""The ``targets`` vocabulary: activation type names to our modules."""
TORCH_OF = TORCH_NN
FUSED_OF: dict[type[nn.Module], type[nn.Module]] = {torch_cls: cls for cls, torch_cls in TORCH_OF.items()}

Counts = dict[tuple[str, str], int]
"""Sites replaced, by (old type, new type), e.g. ``{("nn.SiLU", "rtdetr_fused.Mish"): 24}``."""


def _type_name(module: nn.Module) -> str:
    """``nn.SiLU`` for torch's class, ``rtdetr_fused.SiLU`` for ours: they share ``__name__``."""
    t = type(module)
    return f"rtdetr_fused.{t.__name__}" if t in TORCH_OF else f"nn.{t.__name__}" if t in FUSED_OF else t.__name__


def _sites(root: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """Every (parent, attribute, module) slot under ``root``, a shared module once per slot."""
    for parent in list(root.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None:
                yield parent, name, child


def fused_blocks(model: nn.Module) -> dict[str, int]:
    """Blocks of ``model`` that run a fused forward (``fuse_bn``), by class name, most first."""
    from ..fuse_bn import _fused

    return dict(Counter(type(m).__name__ for m in model.modules() if _fused(m)).most_common())


def activation_sites(model: nn.Module) -> dict[str, int]:
    """Activation sites of ``model`` by type (``nn.ReLU``, ``rtdetr_fused.Mish``), for reports and tests."""
    counts = Counter(_type_name(m) for _, _, m in _sites(model) if type(m) in TORCH_OF or type(m) in FUSED_OF)
    return dict(counts.most_common())


def default_act_classes() -> list[type[nn.Module]]:
    """The classes of ``ultralytics.nn.modules`` that define a ``default_act`` (Conv, ConvTranspose, RepConv)."""
    import ultralytics.nn.tasks  # noqa: F401  (imports every module of ultralytics.nn.modules)

    found = {
        obj
        for name, mod in list(sys.modules.items())
        if mod is not None and (name == "ultralytics.nn.modules" or name.startswith("ultralytics.nn.modules."))
        for obj in vars(mod).values()
        if isinstance(obj, type) and issubclass(obj, nn.Module) and "default_act" in vars(obj)
    }
    return sorted(found, key=lambda c: c.__qualname__)


def site_report(model: nn.Module) -> list[tuple[str, int, int, int, int]]:
    """Rows (type, sites, distinct modules, sites reached by setting ``Conv.default_act`` by hand, sites
    reached by ``patch_ultralytics``) for the activations of ``model``: what ``rtdetr-fused info`` prints."""
    from ultralytics.nn.modules import Conv

    defaults = [cls.default_act for cls in default_act_classes()]
    rows: dict[str, list] = {}
    for _, _, m in _sites(model):
        if type(m) in TORCH_OF or type(m) in FUSED_OF:
            row = rows.setdefault(_type_name(m), [0, set(), 0, 0])
            row[0] += 1
            row[1].add(id(m))
            row[2] += m is Conv.default_act
            row[3] += any(m is d for d in defaults)
    return sorted(((t, n, len(ids), conv, patch) for t, (n, ids, conv, patch) in rows.items()), key=lambda r: -r[1])
