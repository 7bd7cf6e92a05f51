"""Run Ultralytics ``Conv`` blocks as conv -> fused BatchNorm+activation, in place.

A block keeps its modules (``conv``, ``bn``, ``act``), so its state_dict keys, checkpoints in
both directions and ``model.fuse()`` (which folds ``bn`` into ``conv`` and sets
``forward = forward_fuse``) are unchanged; only the block's ``forward`` is replaced by a
``FusedConvForward`` instance attribute, which pickles with the model. Ultralytics is never
imported: a block qualifies when its class uses Ultralytics' ``Conv.forward`` (``Conv``,
``DWConv`` and other subclasses that keep it; ``Conv2`` adds a branch and is left alone), its
``bn`` is a ``BatchNorm2d`` and its ``act`` one that ``activation_spec`` supports.
"""

import sys

import torch
from torch import nn

from ..bn_act import activation_spec, batch_norm_act_module


class FusedConvForward:
    """``act(bn(conv(x)))`` of ``block`` with BN and activation fused, read from the block at
    each call (a later ``block.act = ...`` is seen). A class, not a closure, so it pickles."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        return batch_norm_act_module(block.bn, block.act, block.conv(x))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.block).__name__})"


def _conv_forward():
    """Ultralytics' ``Conv.forward`` if ultralytics is loaded (a model of it exists only then)."""
    conv = getattr(sys.modules.get("ultralytics.nn.modules.conv"), "Conv", None)
    return getattr(conv, "forward", None)


def fusable(module: nn.Module) -> bool:
    """True for a Conv-style block that ``fuse_bn_act`` would fuse."""
    conv_forward = _conv_forward()
    return (
        conv_forward is not None
        and type(module).forward is conv_forward
        and "forward" not in vars(module)  # not fused already, nor set to forward_fuse by model.fuse()
        and isinstance(getattr(module, "conv", None), nn.Module)
        and isinstance(getattr(module, "bn", None), nn.BatchNorm2d)
        and isinstance(getattr(module, "act", None), nn.Module)
        and activation_spec(module.act) is not None
    )


def fuse_bn_act(module: nn.Module) -> int:
    """Make every qualifying block in ``module`` run conv -> fused BN+activation; returns how many.
    Blocks whose ``act`` is ``nn.Identity`` or unsupported keep eager BN."""
    blocks = [m for m in module.modules() if fusable(m)]
    for block in blocks:
        block.forward = FusedConvForward(block)
    return len(blocks)


def unfuse_bn_act(module: nn.Module) -> int:
    """Undo ``fuse_bn_act`` in ``module``; returns how many blocks went back to their class's forward."""
    blocks = [m for m in module.modules() if isinstance(vars(m).get("forward"), FusedConvForward)]
    for block in blocks:
        del block.forward
    return len(blocks)
