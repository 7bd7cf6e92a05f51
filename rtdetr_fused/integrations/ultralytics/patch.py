"""Patching Ultralytics, and the patch's global state: ``patch_ultralytics`` gives every layer built from a
``default_act`` its own module; ``_on_build`` runs hooks on each model ``parse_model`` builds."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from .sites import default_act_classes
from .swap import FuseBN, _Act, _check_fuse_bn, _fuse_bn, _swap

_MISSING = object()
_saved: dict[tuple[Any, str], Any] = {}  # (owner, attribute) -> the original, restored exactly
_build_hooks: list[Callable[[nn.Module, dict], None]] = []  # run on each model that parse_model builds


def _set(owner: Any, attr: str, value: Any) -> None:
    _saved.setdefault((owner, attr), vars(owner).get(attr, _MISSING))
    setattr(owner, attr, value)


def _restore(owner: Any, attr: str) -> None:
    original = _saved.pop((owner, attr))
    if original is _MISSING:
        delattr(owner, attr)
    else:
        setattr(owner, attr, original)


def _run_build_hooks(parse_model: Callable) -> Callable:
    @functools.wraps(parse_model)
    def wrapper(d: dict, ch: int, verbose: bool = True):
        layers, save = parse_model(d, ch, verbose)
        for hook in list(_build_hooks):
            hook(layers, d)
        return layers, save

    return wrapper


@contextlib.contextmanager
def _on_build(hook: Callable[[nn.Module, dict], None]) -> Iterator[None]:
    """Inside the block, ``hook(layers, yaml)`` runs on every model Ultralytics builds, after its layers exist
    and before any weights load into them: every model class builds its layers with ``parse_model``."""
    from ultralytics.nn import tasks

    if not _build_hooks:
        _set(tasks, "parse_model", _run_build_hooks(tasks.parse_model))
    _build_hooks.append(hook)
    try:
        yield
    finally:
        _build_hooks.remove(hook)
        if not _build_hooks:
            _restore(tasks, "parse_model")


def _own_act_init(init: Callable, select: Callable[[nn.Module], _Act | None]) -> Callable:
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _swap(self, select)

    return __init__


class UltralyticsPatch:
    """What ``patch_ultralytics`` returns: ``unpatch()`` it, or use it as a context manager."""

    def __init__(self, act: _Act, fuse_bn: FuseBN):
        self.act, self.fuse_bn = act, fuse_bn
        classes = default_act_classes()
        # The default_act instances, by identity: slots holding one were built from a default. A YAML's
        # `activation:` swaps Conv.default_act for its own instance during its build, so it still wins there.
        self._defaults = tuple(cls.default_act for cls in classes)
        self._stack = contextlib.ExitStack()
        for cls in classes:
            _set(cls, "__init__", _own_act_init(cls.__init__, self._select))
            self._stack.callback(_restore, cls, "__init__")
        self._stack.enter_context(_on_build(self._built))

    def _select(self, module: nn.Module) -> _Act | None:
        return self.act if any(module is d for d in self._defaults) else None

    def _built(self, layers: nn.Module, yaml: dict) -> None:
        if yaml.get("activation"):
            warnings.warn(
                f"the model YAML's activation: {yaml['activation']} wins inside that model, as in Ultralytics: "
                f"its layers built from Conv.default_act keep it instead of {self.act.cls.__name__}",
                stacklevel=2,
            )
        _swap(layers, self._select)  # slots set after __init__, e.g. parse_model's SPPF cv1.act = Conv.default_act
        if self.fuse_bn:
            _fuse_bn(layers, self.fuse_bn)

    @property
    def active(self) -> bool:
        return _active is self

    def unpatch(self) -> None:
        """Restores Ultralytics' original ``__init__`` and ``parse_model`` functions."""
        global _active
        if _active is self:
            self._stack.close()
            _active = None

    def __enter__(self) -> UltralyticsPatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unpatch()


_active: UltralyticsPatch | None = None


def patch_ultralytics(act: str = "silu", fuse_bn: FuseBN = False, **act_kwargs: Any) -> UltralyticsPatch:
    """From now on every Ultralytics layer built with a ``default_act`` (Conv, RepConv, ConvTranspose and any
    other in ``ultralytics.nn.modules``) gets its own ``act`` module (PReLU: one weight per output channel
    unless ``num_parameters=1``); with ``fuse_bn`` (``FuseBN``), every model built is also passed to
    ``fuse_bn_act``. A model YAML's ``activation:`` still wins inside that model (with a warning). Replaces an
    earlier patch."""
    global _active
    spec = _Act.named(act, act_kwargs)
    _check_fuse_bn(fuse_bn)
    unpatch_ultralytics()
    _active = UltralyticsPatch(spec, fuse_bn)
    return _active


def unpatch_ultralytics() -> None:
    """Undoes ``patch_ultralytics`` exactly (no-op when not patched); models already built keep their modules."""
    if _active is not None:
        _active.unpatch()
