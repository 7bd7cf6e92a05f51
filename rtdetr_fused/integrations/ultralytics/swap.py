"""Swapping activations in a built model, one module per site: ``replace_activations``, ``to_torch_nn``."""

from __future__ import annotations

import inspect
import itertools
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from ...modules import get_activation
from .sites import FUSED, FUSED_OF, TORCH_OF, Counts, _sites, _type_name

_FEATURES_LAST = (nn.Linear, nn.LayerNorm, nn.MultiheadAttention)


def _channels(parent: nn.Module, name: str) -> int:
    """PReLU size for slot ``parent.<name>``: the channels of the layer it follows, the last BatchNorm or
    convolution registered before it in ``parent``, else anywhere in ``parent`` (RepConv registers its act
    first). One weight after a Linear or LayerNorm: PReLU weighs dim 1 and those keep features last."""
    keys = list(parent._modules)
    earlier = [m for k in keys[: keys.index(name)] if (m := parent._modules[k]) is not None]
    for scope in (earlier, [parent]):
        for m in reversed([m for s in scope for m in s.modules()]):
            if isinstance(m, _FEATURES_LAST):
                return 1
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                return m.num_features
            if isinstance(m, nn.modules.conv._ConvNd):
                return m.out_channels
    return 1


@dataclass(frozen=True)
class _Act:
    """A requested activation: its module class and the constructor arguments the user gave."""

    cls: type[nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def named(cls, act: str, kwargs: dict[str, Any]) -> _Act:
        """Checks ``act`` and its arguments now (ValueError, TypeError), not at the first layer built."""
        return cls(type(get_activation(act, **kwargs)), dict(kwargs))

    def build(self, parent: nn.Module, name: str, old: nn.Module) -> nn.Module:
        """The module for slot ``parent.<name>``, on ``old``'s device and dtype, in ``parent``'s training mode
        (``old`` may be a ``default_act`` shared by every model). Same kind as ``old`` (torch.nn <-> ours) and
        no arguments given: ``old``'s settings and weights."""
        params = inspect.signature(self.cls).parameters
        if TORCH_OF.get(self.cls, self.cls) is TORCH_OF.get(type(old), type(old)) and not self.kwargs:
            new = self.cls(**{k: getattr(old, k) for k in params if hasattr(old, k)})
            new.load_state_dict(old.state_dict())
            for p, q in zip(new.parameters(), old.parameters()):
                p.requires_grad_(q.requires_grad)
        else:
            kwargs = {"inplace": old.inplace} if "inplace" in params and hasattr(old, "inplace") else {}
            kwargs.update(self.kwargs)
            if self.cls is FUSED["PReLU"]:
                kwargs.setdefault("num_parameters", _channels(parent, name))
            new = self.cls(**kwargs)
        tensors = itertools.chain(old.parameters(), parent.parameters(), parent.buffers())
        ref = next((t for t in tensors if t.is_floating_point()), None)
        if ref is not None:
            new.to(device=ref.device, dtype=ref.dtype)
        return new.train(parent.training)


def _swap(root: nn.Module, select: Callable[[nn.Module], _Act | None]) -> Counts:
    """Replaces, slot by slot, each module for which ``select`` gives an activation."""
    counts: Counter[tuple[str, str]] = Counter()
    for parent, name, old in list(_sites(root)):
        act = select(old)
        if act is not None:
            new = act.build(parent, name, old)
            setattr(parent, name, new)
            counts[_type_name(old), _type_name(new)] += 1
    return dict(counts)


def _target_types(targets: str | Iterable[str]) -> set[type[nn.Module]]:
    """torch.nn and fused classes named by ``targets``: type names (any case, ``leaky_relu`` too) or ``"all"``."""
    names = [targets] if isinstance(targets, str) else list(targets)
    names = list(FUSED) if names == ["all"] else names
    lookup = {n.lower(): n for n in FUSED}
    resolved = [lookup.get(str(n).lower().replace("_", "")) for n in names]
    bad = [n for n, r in zip(names, resolved) if r is None]
    if bad or not names:
        raise ValueError(f"targets {bad or targets!r} name no activation type; use 'all' or names from {list(FUSED)}")
    return {c for r in resolved for c in (FUSED[r], TORCH_OF[FUSED[r]])}


FuseBN = bool | Literal["recompute"]
"""``fuse_bn``: False; True (conv -> fused BatchNorm+activation, ``fuse_bn_act``); ``"recompute"``
(that, with the block outputs recomputed in backward instead of kept: ``fuse_bn_act(model,
recompute=True)``)."""


def _check_fuse_bn(fuse_bn: FuseBN) -> None:
    if not (isinstance(fuse_bn, bool) or fuse_bn == "recompute"):
        raise ValueError(f"fuse_bn must be True, False or 'recompute', got {fuse_bn!r}")


def _fuse_bn(model: nn.Module, fuse_bn: FuseBN) -> int:
    from ..fuse_bn import fuse_bn_act  # fused BatchNorm + activation: a separate integration

    return fuse_bn_act(model, recompute=fuse_bn == "recompute")


def replace_activations(
    model: nn.Module,
    act: str = "silu",
    targets: str | Iterable[str] = ("SiLU",),
    fuse_bn: FuseBN = False,
    **act_kwargs: Any,
) -> Counts:
    """Replaces in place every activation of ``model`` (an Ultralytics ``Model`` or any module) whose type is in
    ``targets`` with ``act`` (``ACTIVATIONS`` names; ``act_kwargs`` go to its constructor), one module per
    site. PReLU gets one weight per channel of the layer it follows unless ``num_parameters`` is given.
    ``fuse_bn`` (True or ``"recompute"``, see ``FuseBN``) then fuses the Conv blocks' BatchNorm. Returns the
    counts by (old type, new type); warns and returns ``{}`` when nothing matches."""
    spec = _Act.named(act, act_kwargs)
    types = _target_types(targets)
    _check_fuse_bn(fuse_bn)
    counts = _swap(model, lambda m: spec if type(m) in types and (type(m) is not spec.cls or spec.kwargs) else None)
    if not counts:
        names = sorted({t.__name__ for t in types})
        warnings.warn(
            f"{type(model).__name__} has no activation of types {names} to replace with {act!r}", stacklevel=2
        )
    if fuse_bn:
        _fuse_bn(model, fuse_bn)
    return counts


def _convert(model: nn.Module, to: str) -> Counts:
    if to == "fused":
        return _swap(model, lambda m: _Act(FUSED_OF[type(m)]) if type(m) in FUSED_OF else None)
    try:
        from ..fuse_bn import unfuse_bn_act
    except ImportError:
        pass
    else:
        unfuse_bn_act(model)
    return _swap(model, lambda m: _Act(TORCH_OF[type(m)]) if type(m) in TORCH_OF else None)


def to_torch_nn(model: nn.Module) -> nn.Module:
    """Our activations back to their torch.nn classes, in place, with their settings and weights (and fused
    BatchNorm+activation unfused), so the model pickles and loads where this package is not installed."""
    _convert(model, "torch")
    return model
