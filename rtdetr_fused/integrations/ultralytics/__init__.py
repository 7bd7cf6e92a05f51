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

This package is the public module; each concern lives in its own file: ``sites`` (finding and counting
sites), ``swap`` (replacing them in a built model), ``patch`` (patching Ultralytics and its global
state), ``training`` (the trainer, its callback, ``train``) and ``checkpoints`` (``convert``).
"""

from .checkpoints import convert
from .patch import UltralyticsPatch, patch_ultralytics, unpatch_ultralytics
from .sites import FUSED, FUSED_OF, TORCH_OF, Counts, activation_sites, default_act_classes, fused_blocks, site_report
from .swap import FuseBN, replace_activations, to_torch_nn
from .training import FusedActivations, fused_trainer, fused_trainer_named, load_model, runs_dir, swap_summary, train

__all__ = [
    "FUSED",
    "FUSED_OF",
    "TORCH_OF",
    "Counts",
    "FuseBN",
    "FusedActivations",
    "UltralyticsPatch",
    "activation_sites",
    "convert",
    "default_act_classes",
    "fused_blocks",
    "fused_trainer",
    "load_model",
    "patch_ultralytics",
    "replace_activations",
    "runs_dir",
    "site_report",
    "swap_summary",
    "to_torch_nn",
    "train",
    "unpatch_ultralytics",
]


def __getattr__(name: str) -> type:
    """``Fused<Trainer>`` classes, made on first use: how a fresh process (a DDP worker) unpickles them."""
    trainer = fused_trainer_named(name)
    if trainer is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return trainer
