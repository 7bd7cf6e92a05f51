"""Outputs of the fused BatchNorm+activation that the ops reading them recompute in backward
instead of keeping (``fuse_bn="recompute"``).

``batch_norm_act(..., recompute=True)`` tags its output with a ``Recipe``: its own inputs, which
its backward keeps anyway (the conv output ``y``, per-channel mean and inverse std, the BN and
PReLU parameters). An op of ours that saves an input for backward (``cat_conv.conv2d``,
``cat_conv2d``, ``max_pool2d``) saves a tagged input's recipe instead, and in backward runs the same
BatchNorm+activation forward again: the same kernel on the same tensors, so the same bits. A
chain of Conv blocks then keeps one full tensor per block (``y``) instead of two, for one more
pass over each block's output in backward (two where two ops read it, as in HGBlock). Views of a
tagged tensor (``chunk``) are recomputed whole and viewed again.

Tags are made in eager training only (not under torch.compile or export); any other op reading a
tagged tensor saves it as usual, which costs nothing over not tagging.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch

from .ops.bn_act import BN_ACT

_ATTR = "_rtdetr_fused_recipe"
_SLOTS = 6  # Recipe.tensors: y, mean, invstd, weight, bias, act_weight


class Recipe(NamedTuple):
    """``BN_ACT``'s arguments: ``tensors`` (``y, mean, invstd, weight, bias, act_weight``) and
    ``args`` (``training, name, alpha``)."""

    tensors: tuple[torch.Tensor | None, ...]
    args: tuple


def tag(output: torch.Tensor, recipe: Recipe) -> None:
    """Let recompute-aware ops keep ``recipe`` instead of ``output``."""
    setattr(output, _ATTR, recipe)


def recipe_of(t: torch.Tensor) -> Recipe | None:
    """The recipe of ``t`` or of the tensor ``t`` is a view of."""
    return getattr(t if t._base is None else t._base, _ATTR, None)


class Kept(NamedTuple):
    """How ``keep`` laid out one tensor among the tensors to save: ``None`` geometry for the
    tensor itself, else the recipe's ``args`` and the view's size, stride and offset."""

    args: tuple | None
    view: tuple | None


def keep(tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor | None], list[Kept]]:
    """What an autograd Function passes to ``save_for_backward`` for ``tensors`` (a tagged
    tensor's recipe in its place), and how ``restore`` gets them back."""
    flat: list[torch.Tensor | None] = []
    plans = []
    for t in tensors:
        recipe = recipe_of(t)
        if recipe is None:
            flat.append(t)
            plans.append(Kept(None, None))
        else:
            flat.extend(recipe.tensors)
            view = (t.size(), t.stride(), t.storage_offset()) if t._base is not None else None
            plans.append(Kept(recipe.args, view))
    return flat, plans


def restore(flat: Sequence[torch.Tensor | None], plans: Sequence[Kept]) -> list[torch.Tensor]:
    """The tensors ``keep`` was given, recomputing tagged ones."""
    out, i = [], 0
    for plan in plans:
        if plan.args is None:
            out.append(flat[i])
            i += 1
            continue
        x = BN_ACT.direct(*flat[i : i + _SLOTS], *plan.args)
        out.append(x if plan.view is None else x.as_strided(*plan.view))
        i += _SLOTS
    return out
