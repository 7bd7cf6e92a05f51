"""Outputs of the fused BatchNorm+activation that the ops reading them recompute in backward
instead of keeping (``fuse_bn="recompute"``).

``batch_norm_act(..., recompute=True)`` tags its output with a ``Recipe``: its own inputs, which
its backward keeps anyway (the conv output ``y``, per-channel mean and inverse std, the BN and
PReLU parameters). ``consume(fn, x)`` runs ``fn(x)`` under a pair of ``saved_tensors_hooks``
whose pack hook keeps a tagged tensor's recipe instead of the tensor, and whose unpack hook runs
the same BatchNorm+activation forward again in backward: the same kernel on the same tensors,
so the same bits. ``fn`` is any op, PyTorch's own included (a Conv block's ``nn.Conv2d``, the
decoder's ``nn.Linear``), so it keeps its native autograd. A chain of Conv blocks then keeps one
full tensor per block (``y``) instead of two, for one more pass over each block's output in
backward (two where two ops read it, as in HGBlock). A recipe's tensors may be tagged
themselves: RepConv's sum of two fused BatchNorm outputs, and its activation of that sum, and
the concatenation ``cat_conv2d`` convolves (``integrations.fuse_bn``). Views of a tagged tensor
(``chunk``) are recomputed whole and viewed again; a tensor changed in place after its tag is
kept as usual.

The hooks pass untagged tensors, and each tensor of a recipe, through the pair that was active
when they were entered (only the innermost pair applies), so an outer pair (a memory probe, a
user's offloading) still sees every tensor kept. Tags are made in eager training only (not under
torch.compile or export); any op outside ``consume`` reading a tagged tensor saves it as usual,
which costs nothing over not tagging.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import torch

from .ops.common import compiling, exporting

_ATTR = "_rtdetr_fused_recipe"
T = TypeVar("T")


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
    """Let ``consume`` keep ``function``'s inputs instead of ``output``, which it computed from
    them (and computes again, bit for bit). Tagged inputs are taken apart here, so the recipe
    holds only tensors kept anyway, not those inputs."""
    tensors, parts = keep(inputs)
    setattr(output, _ATTR, Recipe(function, tuple(tensors), tuple(parts), tuple(args), output._version))


def recipe_of(t: torch.Tensor) -> Recipe | None:
    """The recipe of ``t`` or of the tensor ``t`` is a view of, unless changed in place since."""
    recipe = getattr(t if t._base is None else t._base, _ATTR, None)
    return recipe if recipe is not None and recipe.version == t._version else None


_TENSOR = Kept()
"""A tensor kept as itself."""


def _kept(t: torch.Tensor, recipe: Recipe) -> Kept:
    view = (t.size(), t.stride(), t.storage_offset()) if t._base is not None else None
    return Kept(recipe.function, recipe.args, view, recipe.parts)


def keep(tensors: Sequence[torch.Tensor | None]) -> tuple[list[torch.Tensor | None], list[Kept]]:
    """The tensors to keep for ``tensors`` (a tagged tensor's recipe in its place), and how
    ``restore`` gets them back."""
    flat: list[torch.Tensor | None] = []
    plans = []
    for t in tensors:
        recipe = recipe_of(t) if t is not None else None
        if recipe is None:
            flat.append(t)
            plans.append(_TENSOR)
        else:
            flat.extend(recipe.tensors)
            plans.append(_kept(t, recipe))
    return flat, plans


def restore(flat: Sequence[torch.Tensor | None], plans: Sequence[Kept]) -> list[torch.Tensor | None]:
    """The tensors ``keep`` was given, recomputing tagged ones."""
    saved = iter(flat)
    return [_rebuild(plan, saved) for plan in plans]


def _rebuild(plan: Kept, saved: Iterator[torch.Tensor | None]) -> torch.Tensor | None:
    if plan.function is None:
        return next(saved)
    x = plan.function(*[next(saved) if p is _TENSOR else _rebuild(p, saved) for p in plan.parts], *plan.args)
    return x if plan.view is None else x.as_strided(*plan.view)


class _Packed(NamedTuple):
    """What the pack hook keeps for a tagged tensor: its recipe's tensors, each packed by the
    outer hooks if any, and how to recompute it from them."""

    tensors: tuple
    plan: Kept


class _Hooks:
    """The pack/unpack pair of ``consume``, over ``outer``: the pair active when it was entered,
    which packs what this one keeps. Without one, an untagged tensor is kept detached unless a
    leaf (one its own node saves would hold that node: a cycle), and a recipe's tensors as they
    are (the tag holds them already). Autograd gives each unpacked tensor its node back."""

    def __init__(self, outer: tuple[Callable[[torch.Tensor], Any], Callable[[Any], torch.Tensor]] | None) -> None:
        self.outer = outer

    def pack(self, t: torch.Tensor) -> Any:
        recipe = recipe_of(t)
        outer = self.outer
        if recipe is None:
            if outer is not None:
                return outer[0](t)
            return t if t.is_leaf else t.detach()  # a leaf has no node to hold
        tensors = recipe.tensors if outer is None else tuple(x if x is None else outer[0](x) for x in recipe.tensors)
        return _Packed(tensors, _kept(t, recipe))

    def unpack(self, packed: Any) -> torch.Tensor:
        outer = self.outer
        if type(packed) is not _Packed:
            return packed if outer is None else outer[1](packed)
        tensors = packed.tensors if outer is None else [x if x is None else outer[1](x) for x in packed.tensors]
        return _rebuild(packed.plan, iter(tensors))


_PLAIN = _Hooks(None)


def eager_autograd() -> bool:
    """Whether tags and hooks apply: autograd on, not under torch.compile, jit.trace or export
    (a compiled graph decides what it keeps)."""
    return torch.is_grad_enabled() and not exporting() and not compiling()


def consume(fn: Callable[..., T], x: torch.Tensor, *args: Any) -> T:
    """``fn(x, *args)``, where whatever ``fn`` saves for backward that is tagged (``x``, a view of
    it) is kept as its recipe and recomputed in backward. Plain ``fn(x, *args)`` when ``x`` is
    not tagged, outside eager autograd, or where saved-tensor hooks are disabled."""
    if recipe_of(x) is None or not eager_autograd() or not torch._C._autograd._saved_tensors_hooks_is_enabled():
        return fn(x, *args)
    outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
    hooks = _PLAIN if outer is None else _Hooks(outer)
    torch._C._autograd._push_saved_tensors_default_hooks(hooks.pack, hooks.unpack)
    try:
        return fn(x, *args)
    finally:
        torch._C._autograd._pop_saved_tensors_default_hooks()
