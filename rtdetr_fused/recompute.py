"""Outputs of the fused BatchNorm+activation that the ops reading them recompute in backward
instead of keeping (``fuse_bn="recompute"``).

``batch_norm_act(..., recompute=True)`` tags its output with a ``Recipe``: its own inputs, which
its backward keeps anyway (the conv output ``y``, per-channel mean and inverse std, the BN and
PReLU parameters). An op of ours that saves an input for backward (``cat_conv.conv2d``,
``cat_conv2d``, ``max_pool2d``, the elementwise activations) saves a tagged input's recipe
instead, and in backward runs the same BatchNorm+activation forward again: the same kernel on the
same tensors, so the same bits. A chain of Conv blocks then keeps one full tensor per block
(``y``) instead of two, for one more pass over each block's output in backward (two where two
ops read it, as in HGBlock). A recipe's tensors may be tagged themselves: RepConv's sum of two
fused BatchNorm outputs, and its activation of that sum (``integrations.fuse_bn``). Views of a
tagged tensor (``chunk``) are recomputed whole and viewed again; a tensor changed in place after
its tag is kept as usual.

Tags are made in eager training only (not under torch.compile or export); any other op reading a
tagged tensor saves it as usual, which costs nothing over not tagging.
"""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

_ATTR = "_rtdetr_fused_recipe"


class Kept(NamedTuple):
    """How ``keep`` laid out one tensor: one saved tensor when ``function`` is None, else
    ``function(*parts, *args)`` (each part kept the same way, recipes within recipes) viewed as
    ``view`` (size, stride, offset) when not None."""

    function: Callable[..., torch.Tensor] | None = None
    args: tuple = ()
    view: tuple | None = None
    parts: tuple["Kept", ...] = ()


class Recipe(NamedTuple):
    """How to compute a tagged tensor again: ``function`` of its inputs as ``keep`` laid them out
    (``tensors``, ``parts``), and ``args``; valid while the tensor is at ``version`` (an in-place
    change since the tag voids it)."""

    function: Callable[..., torch.Tensor]
    tensors: tuple[torch.Tensor | None, ...]
    parts: tuple[Kept, ...]
    args: tuple
    version: int


def tag(output: torch.Tensor, function: Callable[..., torch.Tensor], inputs: Sequence, args: Sequence) -> None:
    """Let recompute-aware ops keep ``function``'s inputs instead of ``output``, which it
    computed from them (and computes again, bit for bit). Tagged inputs are taken apart here,
    so the recipe holds only tensors kept anyway, not those inputs."""
    tensors, parts = keep(inputs)
    setattr(output, _ATTR, Recipe(function, tuple(tensors), tuple(parts), tuple(args), output._version))


def recipe_of(t: torch.Tensor) -> Recipe | None:
    """The recipe of ``t`` or of the tensor ``t`` is a view of, unless changed in place since."""
    recipe = getattr(t if t._base is None else t._base, _ATTR, None)
    return recipe if recipe is not None and recipe.version == t._version else None


def keep(tensors: Sequence[torch.Tensor | None]) -> tuple[list[torch.Tensor | None], list[Kept]]:
    """What an autograd Function passes to ``save_for_backward`` for ``tensors`` (a tagged
    tensor's recipe in its place), and how ``restore`` gets them back."""
    flat: list[torch.Tensor | None] = []
    plans = []
    for t in tensors:
        recipe = recipe_of(t) if t is not None else None
        if recipe is None:
            flat.append(t)
            plans.append(Kept())
        else:
            flat.extend(recipe.tensors)
            view = (t.size(), t.stride(), t.storage_offset()) if t._base is not None else None
            plans.append(Kept(recipe.function, recipe.args, view, recipe.parts))
    return flat, plans


def restore(flat: Sequence[torch.Tensor | None], plans: Sequence[Kept]) -> list[torch.Tensor | None]:
    """The tensors ``keep`` was given, recomputing tagged ones."""
    saved = iter(flat)

    def rebuild(plan: Kept) -> torch.Tensor | None:
        if plan.function is None:
            return next(saved)
        x = plan.function(*(rebuild(part) for part in plan.parts), *plan.args)
        return x if plan.view is None else x.as_strided(*plan.view)

    return [rebuild(plan) for plan in plans]


def save_for_backward(ctx, *tensors: torch.Tensor | None) -> None:
    """``ctx.save_for_backward(*tensors)`` for an op of ours, a tagged tensor's recipe in its place."""
    kept, ctx.plans = keep(tensors)
    ctx.save_for_backward(*kept)


def saved_tensors(ctx) -> list[torch.Tensor | None]:
    """The tensors ``save_for_backward`` was given, tagged ones recomputed."""
    return restore(ctx.saved_tensors, ctx.plans)
