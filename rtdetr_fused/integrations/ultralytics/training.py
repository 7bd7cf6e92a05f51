"""Training with the fused activations: the ``FusedActivations`` callback, the ``Fused<Base>`` trainer classes
(made by ``fused_trainer``, found by name through the package's ``__getattr__``) and ``train``, which the CLI
runs."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .patch import _on_build
from .sites import Counts, activation_sites, fused_blocks
from .swap import FuseBN, _Act, _check_fuse_bn, _fuse_bn, _target_types, replace_activations

PUBLIC_MODULE = __name__.rpartition(".")[0]
"""Where the ``Fused<Base>`` trainer classes live for pickle (and Ultralytics' DDP file): the package."""


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
        cls = type(name, (_FusedTrainer, base), {"__module__": PUBLIC_MODULE, "__qualname__": name})
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


def fused_trainer_named(name: str) -> type | None:
    """``Fused<Trainer>`` for the Ultralytics trainer class ``<Trainer>``, made on first use, else None: what
    the package's ``__getattr__`` gives a fresh process (a DDP worker) that unpickles one."""
    if name.startswith("Fused") and name.endswith("Trainer"):
        base = _ultralytics_trainers().get(name[len("Fused") :])
        if base is not None:
            return fused_trainer(base)
    return None


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
