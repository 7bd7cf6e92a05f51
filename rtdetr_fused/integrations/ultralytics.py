"""Swap the fused activations into Ultralytics models, at every site asked for and durably.

Setting ``Conv.default_act`` by hand reaches 12 of the 92 activation sites of ``rtdetr-l.yaml``
(ultralytics 8.4): ``RepConv`` and ``ConvTranspose`` have their own ``default_act``, the HGNetv2
backbone passes ``nn.ReLU()`` explicitly and AIFI uses GELU. ``default_act`` is also one instance
shared by every layer (a PReLU there has one weight for the whole model), and ``Model.train()``
rebuilds the model from its YAML, dropping swaps made on a built model. Here:

- ``patch_ultralytics``: every layer Ultralytics builds from a ``default_act`` gets its own module.
- ``replace_activations``: swaps the chosen activation types of a built model.
- ``train`` (``FusedActivations`` + ``fused_trainer``): the model the trainer builds, from a YAML,
  pretrained weights, a resumed checkpoint or in a DDP worker, has the activations before its
  weights load.
- ``to_torch_nn`` / ``convert``: back to torch.nn, so a checkpoint loads without this package.

A site is a module slot (parent, attribute): a module held by several slots (``Conv.default_act``,
the one ``nn.ReLU`` of an HGBlock) counts once per slot and is replaced by one module per slot.
Ultralytics is imported only when a function here needs it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..modules import ACTIVATIONS, TORCH_NN, get_activation

FUSED: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in ACTIVATIONS.values()}
"""The ``targets`` vocabulary: activation type names to our modules."""
TORCH_OF = TORCH_NN
FUSED_OF: dict[type[nn.Module], type[nn.Module]] = {torch_cls: cls for cls, torch_cls in TORCH_OF.items()}

Counts = dict[tuple[str, str], int]
"""Sites replaced, by (old type, new type), e.g. ``{("nn.SiLU", "rtdetr_fused.Mish"): 24}``."""

_FEATURES_LAST = (nn.Linear, nn.LayerNorm, nn.MultiheadAttention)


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
    from .fuse_bn import fuse_bn_act  # fused BatchNorm + activation: a separate integration

    return fuse_bn_act(model, recompute=fuse_bn == "recompute")


def fused_blocks(model: nn.Module) -> dict[str, int]:
    """Blocks of ``model`` that run a fused forward (``fuse_bn``), by class name, most first."""
    from .fuse_bn import _fused

    return dict(Counter(type(m).__name__ for m in model.modules() if _fused(m)).most_common())


def activation_sites(model: nn.Module) -> dict[str, int]:
    """Activation sites of ``model`` by type (``nn.ReLU``, ``rtdetr_fused.Mish``), for reports and tests."""
    counts = Counter(_type_name(m) for _, _, m in _sites(model) if type(m) in TORCH_OF or type(m) in FUSED_OF)
    return dict(counts.most_common())


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
        from .fuse_bn import unfuse_bn_act
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


# --- patching Ultralytics ---------------------------------------------------------------------------

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


# --- training ---------------------------------------------------------------------------------------


def _listed(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda item: -item[1]))


def swap_summary(
    act: str,
    targets: str | tuple[str, ...],
    fuse_bn: FuseBN,
    swapped: Counts,
    kept: dict[str, int],
    fused: dict[str, int],
) -> str:
    """The line a run logs: what ``act`` replaced (by type), what stayed and how to reach it, what ``fuse_bn``
    fused. ``kept``: activation sites left as they were, by type; ``fused``: ``fused_blocks`` after fusing."""
    names = targets if isinstance(targets, str) else ",".join(targets)
    pairs = {f"{old} -> {new}": n for (old, new), n in swapped.items()}
    line = f"rtdetr-fused: act={act} targets={names}: swapped {sum(swapped.values())} sites"
    line += f" ({_listed(pairs)})" if pairs else ""
    if kept:
        line += f"; kept {_listed(kept)}" + ("" if names == "all" else " (targets=all swaps them too)")
    if not fuse_bn:
        return line + "; fuse_bn off (fuse_bn=True fuses each Conv block's BatchNorm with its activation)"
    line += f"; fuse_bn={fuse_bn}: {sum(fused.values())} blocks fused ({_listed(fused) or 'none qualify'})"
    return line + (", their outputs recomputed in backward" if fuse_bn == "recompute" else "")


@dataclass(frozen=True)
class FusedActivations:
    """What to swap into the model an Ultralytics trainer builds, carried as one of its callbacks.

    Callbacks travel with the trainer into DDP workers, which rebuild it from its class and callbacks: a
    ``fused_trainer`` class reads this there. Run as the ``on_pretrain_routine_end`` callback, it logs the
    ``swap_summary`` of the model about to train (once, on rank 0).
    """

    act: str = "silu"
    targets: str | tuple[str, ...] = ("SiLU",)
    fuse_bn: FuseBN = False
    act_kwargs: dict[str, Any] = field(default_factory=dict)
    summaries: list[str] = field(default_factory=list, init=False, compare=False, repr=False)
    """``apply``'s summaries in this process, the last one the model's that trains."""

    def __post_init__(self) -> None:
        _Act.named(self.act, self.act_kwargs)  # bad names fail here, before any training starts
        _target_types(self.targets)
        _check_fuse_bn(self.fuse_bn)

    def apply(self, model: nn.Module) -> str:
        """Swaps and fuses ``model`` in place as configured; returns (and keeps) its ``swap_summary``."""
        before = Counter(activation_sites(model))
        swapped = replace_activations(model, self.act, self.targets, **self.act_kwargs)
        before.subtract(Counter({old: n for (old, _), n in swapped.items()}))
        kept = {name: n for name, n in before.items() if n > 0}
        fused = {}
        if self.fuse_bn:
            _fuse_bn(model, self.fuse_bn)
            fused = fused_blocks(model)
        line = swap_summary(self.act, self.targets, self.fuse_bn, swapped, kept, fused)
        self.summaries.append(line)
        return line

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Models Ultralytics builds inside the block get the activations before their weights load."""

        def hook(layers: nn.Module, yaml: dict) -> None:
            self.apply(layers)

        with _on_build(hook):
            yield

    def __call__(self, trainer: Any) -> None:
        from ultralytics.utils import LOGGER, RANK

        if RANK in {-1, 0} and self.summaries:
            LOGGER.info(self.summaries[-1])


class _FusedTrainer:
    """Mixed into an Ultralytics trainer by ``fused_trainer``: ``get_model`` builds under its callbacks'
    ``FusedActivations``, which covers YAML, pretrained and resumed starts alike."""

    def get_model(self, cfg=None, weights=None, verbose=True):
        found = [cb for cbs in self.callbacks.values() for cb in cbs if isinstance(cb, FusedActivations)]
        if not found:
            raise RuntimeError(
                f"{type(self).__name__} builds with the FusedActivations among its callbacks and has none: "
                "model.add_callback('on_pretrain_routine_end', FusedActivations(...))"
            )
        with found[0].building():
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)


def fused_trainer(base: type) -> type:
    """The subclass of Ultralytics trainer ``base`` that builds its model with its ``FusedActivations``
    callback. Importable as ``rtdetr_fused.integrations.ultralytics.Fused<Base>`` so that pickle finds it by
    name in Ultralytics' DDP workers."""
    name = f"Fused{base.__name__}"
    cls = globals().get(name)
    if cls is None:
        cls = type(name, (_FusedTrainer, base), {"__module__": __name__, "__qualname__": name})
        globals()[name] = cls
    elif base not in cls.__bases__:
        raise ValueError(f"{name} already subclasses {cls.__bases__[1].__module__}.{name[5:]}, not {base}")
    return cls


def _ultralytics_trainers() -> dict[str, type]:
    import ultralytics.models  # noqa: F401  (imports every task's trainer)
    from ultralytics.engine.trainer import BaseTrainer

    found, todo = {}, [BaseTrainer]
    while todo:
        for sub in todo.pop().__subclasses__():
            if not issubclass(sub, _FusedTrainer):
                found.setdefault(sub.__name__, sub)
                todo.append(sub)
    return found


def __getattr__(name: str) -> type:
    """``Fused<Trainer>`` classes, made on first use: how a fresh process (a DDP worker) unpickles them."""
    if name.startswith("Fused") and name.endswith("Trainer"):
        base = _ultralytics_trainers().get(name[len("Fused") :])
        if base is not None:
            return fused_trainer(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_model(source: str | Path) -> Any:
    """The Ultralytics model for a YAML or checkpoint: RTDETR when its name says so (as the ``yolo`` CLI
    decides) or its head is an RTDETRDecoder, else YOLO."""
    from ultralytics import RTDETR, YOLO
    from ultralytics.nn.modules import RTDETRDecoder

    if "rtdetr" in Path(str(source)).stem.lower():
        return RTDETR(source)
    model = YOLO(source)
    return RTDETR(source) if isinstance(model.model.model[-1], RTDETRDecoder) else model


def runs_dir() -> Path | None:
    """``./runs`` where Ultralytics' ``runs_dir`` setting is the default it derived from a git repository that
    merely holds its install (a ``.venv`` inside a checkout: Ultralytics takes the checkout for its own and
    would write every run there), else None: the setting (or a pip install's ``./runs``) holds."""
    from ultralytics.utils import GIT, ROOT, SETTINGS

    borrowed = GIT.root is not None and GIT.root != ROOT.parent
    return Path.cwd() / "runs" if borrowed and SETTINGS["runs_dir"] == SETTINGS.defaults["runs_dir"] else None


def train(
    model: str | Path | Any,
    act: str = "silu",
    targets: str | Iterable[str] = ("SiLU",),
    fuse_bn: FuseBN = False,
    act_kwargs: dict[str, Any] | None = None,
    **train_args: Any,
) -> Any:
    """Trains ``model`` (a YAML, a checkpoint or an Ultralytics ``Model``) with ``act`` at the ``targets``
    sites; ``train_args`` are Ultralytics' (``data``, ``epochs``, ``resume``, ``device``...). Runs go where
    Ultralytics puts them, under ``./runs`` where ``runs_dir()`` says so; ``project`` and ``name`` win. Returns
    the ``Model`` (``.trainer``, ``.metrics``). Resume with the run's ``act`` and ``targets``: they shaped its
    checkpoint."""
    targets = targets if isinstance(targets, str) else tuple(targets)
    config = FusedActivations(act, targets, fuse_bn, dict(act_kwargs or {}))
    model = load_model(model) if isinstance(model, (str, Path)) else model
    project, runs = train_args.get("project") or "", runs_dir()
    if runs is not None and not train_args.get("resume") and not Path(project).is_absolute():
        train_args["project"] = str(runs / train_args.get("task", model.task) / project)  # as get_save_dir lays out
    model.add_callback("on_pretrain_routine_end", config)
    try:
        model.train(trainer=fused_trainer(model._smart_load("trainer")), **train_args)
    finally:
        model.callbacks["on_pretrain_routine_end"].remove(config)
    return model


# --- checkpoints ------------------------------------------------------------------------------------


def _load_checkpoint(src: Path) -> dict:
    from ultralytics.nn.tasks import BaseModel

    try:
        ckpt = torch.load(src, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{src} is not an Ultralytics checkpoint: torch.load failed ({type(e).__name__}: {e})") from e
    if not (isinstance(ckpt, dict) and any(isinstance(ckpt.get(k), BaseModel) for k in ("model", "ema"))):
        found = f"keys {list(ckpt)[:8]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{src} is not an Ultralytics checkpoint: no Ultralytics model under 'model' or 'ema' ({found})"
        )
    return ckpt


def _save_atomic(obj: Any, dst: Path, forbidden: str | None) -> None:
    """Writes a temporary file next to ``dst``, checks that no global of module ``forbidden`` is needed to load
    it, then renames it: ``dst`` is never left half-written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        if forbidden:
            left = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(tmp) if g.startswith(forbidden)]
            if left:
                raise RuntimeError(f"{dst} would still need {left} to load")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def convert(src: str | Path, dst: str | Path, to: str = "torch") -> dict[str, Counts]:
    """Rewrites Ultralytics checkpoint ``src`` (model and EMA) to ``dst`` with torch.nn activations
    (``to="torch"``: loads with plain Ultralytics, ``ULTRALYTICS_SAFE_LOAD=1`` included) or fused ones
    (``to="fused"``). ``src`` is only read. Returns the counts by checkpoint key."""
    if to not in ("torch", "fused"):
        raise ValueError(f"to must be 'torch' or 'fused', got {to!r}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint {src} not found")
    if dst.resolve() == src.resolve():
        raise ValueError(f"out {dst} is the input: convert writes a new file and never modifies its input")
    ckpt = _load_checkpoint(src)
    counts = {key: _convert(ckpt[key], to) for key in ("model", "ema") if isinstance(ckpt.get(key), nn.Module)}
    _save_atomic(ckpt, dst, "rtdetr_fused" if to == "torch" else None)
    return counts


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
