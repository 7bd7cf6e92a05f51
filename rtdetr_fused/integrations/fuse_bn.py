"""Run Ultralytics ``Conv`` blocks as conv -> fused BatchNorm+activation, and HGBlocks without
saving their concatenation, in place.

A block keeps its modules (``conv``, ``bn``, ``act``), so its state_dict keys, checkpoints in
both directions and ``model.fuse()`` (which folds ``bn`` into ``conv`` and sets
``forward = forward_fuse``) are unchanged; only the block's ``forward`` is replaced by a
``FusedConvForward`` (``FusedHGBlockForward``) instance attribute, which pickles with the model.
Ultralytics is never imported:

- a Conv block qualifies when its class uses Ultralytics' ``Conv.forward`` (``Conv``, ``DWConv``
  and other subclasses that keep it; ``Conv2`` adds a branch and is left alone), its ``bn`` is a
  ``BatchNorm2d`` and its ``act`` one that ``activation_spec`` supports (``nn.Identity`` only
  with ``recompute``);
- an HGBlock (PP-HGNetV2, RT-DETR's backbone) qualifies when its class uses Ultralytics'
  ``HGBlock.forward`` and its squeeze conv ``sc`` is a Conv block with a ``BatchNorm2d``. Its
  ``sc`` then convolves the concatenation of the block's input and its ``m`` outputs through
  ``cat_conv2d``, which keeps those tensors (saved already by the convs that read them) instead
  of the concatenation, and runs ``sc``'s BatchNorm+activation fused when ``act`` is supported;
- a stride-1 ``nn.MaxPool2d`` (HGStem's, SPPF's) saves its input instead of int64 indices;
- with ``recompute``, a ``RepConv`` (RT-DETR's RepC3) keeps neither its branches' sum nor its
  output: its activation and the next RepConv's convs recompute them; an ``HGStem`` keeps
  neither its padded maps nor its concatenation; and RT-DETR's decoder MLP heads and
  feed-forward layers (``forward_ffn``) recompute their activations' outputs in backward.

Each fused forward names the upstream method it re-implements (``upstream``: the method whose
``is`` check above decides where it applies), the releases that method was checked against and a
fingerprint of its source; ``tests/test_upstream.py`` fails when the installed source differs.

Recomputing is ``rtdetr_fused.recompute``: a fused output is tagged with its recipe, and each op
reading one runs through ``recompute.consume``, whose saved-tensor hooks keep the recipe instead.
The hooks are entered around that op alone (PyTorch's own ``nn.Conv2d``, ``nn.Linear``, our max
pool and activations), so only what it saves goes through them.
"""

import ast
import hashlib
import sys
import textwrap
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..activations import TABLE
from ..bn_act import activation_spec, batch_norm_act_module
from ..cat_conv import cat_conv2d
from ..max_pool import max_pool2d
from ..modules import TORCH_NN
from ..ops.common import exporting
from ..recompute import consume, eager_autograd, tag

ULTRALYTICS = "ultralytics>=8.4.190,<8.5"
"""The Ultralytics releases the copied methods below were checked against, as setup.py's ``extras_require``
says: the test suite passes on 8.4.190 (not on 8.4.0: site counts, ``runs_dir``); the fingerprints hold from
8.3.237, when ``MLP.forward`` took its current form, to 8.4.190."""
TORCH = "torch==2.14.1"
"""The torch release ``nn.MaxPool2d.forward`` was checked against."""


class Upstream(NamedTuple):
    """The method a fused forward re-implements: ``<module>.<cls>.<method>`` (``method`` the forward's),
    checked against the releases ``checked`` (a requirement), whose source has ``fingerprint``."""

    module: str
    cls: str
    checked: str
    fingerprint: str


def source_fingerprint(source: str) -> str:
    """A hash of a function's source as Python reads it: formatting, comments, its docstring and its type
    annotations left out (``ast.unparse`` of the rest), so that only a change of what it does changes it."""
    node = ast.parse(textwrap.dedent(source)).body[0]
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        node.body = node.body[1:] or [ast.Pass()]
    node.returns = None
    for arg in ast.walk(node.args):
        if isinstance(arg, ast.arg):
            arg.annotation = None
    return hashlib.sha256(ast.unparse(node).encode()).hexdigest()[:16]


class _FusedForward:
    """A block's replacement ``forward``, reading the block's modules at each call (a later
    ``block.act = ...`` is seen). A class, not a closure, so it pickles. With ``recompute``, the
    block's fused BatchNorm+activation outputs are recomputed in backward by the ops that read
    them through ``recompute.consume``, instead of kept (``rtdetr_fused.recompute``).
    ``method`` is the block's method it replaces, as an instance attribute."""

    recompute = False  # what forwards pickled before the option unpickle with
    method = "forward"
    upstream: Upstream  # the method this re-implements, next to each copy

    @classmethod
    def upstream_method(cls):
        """The upstream ``method``, if its module is loaded (a model of it exists only then)."""
        up = cls.upstream
        return getattr(getattr(sys.modules.get(up.module), up.cls, None), cls.method, None)

    @classmethod
    def runs_upstream(cls, module: nn.Module) -> bool:
        """Whether ``module``'s class runs the upstream method (not an override of it)."""
        method = cls.upstream_method()
        return method is not None and getattr(type(module), cls.method, None) is method

    def __init__(self, block: nn.Module, recompute: bool = False) -> None:
        self.block = block
        self.recompute = recompute

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.block).__name__}{', recompute' if self.recompute else ''})"

    def original(self, *args: torch.Tensor) -> torch.Tensor:
        """The block's class's own ``method``."""
        return getattr(type(self.block), self.method)(self.block, *args)

    def recomputing(self) -> bool:
        """Whether outputs get tagged now: with ``recompute``, in eager autograd only."""
        return self.recompute and eager_autograd()


class FusedConvForward(_FusedForward):
    """``act(bn(conv(x)))`` of a Conv block with BN and activation fused. With ``recompute`` the
    conv keeps a tagged input's recipe (``recompute.consume``), and blocks without an
    activation (``nn.Identity``) get this forward too: their fused BatchNorm's output is
    recomputed like the others (without recompute, fusing it would save nothing)."""

    upstream = Upstream("ultralytics.nn.modules.conv", "Conv", ULTRALYTICS, "228765c0e764a2f4")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        y = consume(block.conv, x) if self.recompute else block.conv(x)
        if _fuses(block.act, self.recompute):
            return batch_norm_act_module(block.bn, block.act, y, self.recompute)
        return block.act(block.bn(y))


class FusedHGBlockForward(_FusedForward):
    """``HGBlock.forward`` with ``sc(torch.cat(y, 1))`` run by ``cat_conv2d`` and ``sc``'s
    BatchNorm+activation fused (eager when ``act`` is unsupported). Without autograd, under
    export, or once ``model.fuse()`` has folded ``sc.bn``, the class's own forward runs: there
    is nothing to save."""

    upstream = Upstream("ultralytics.nn.modules.block", "HGBlock", ULTRALYTICS, "19a4c5b0c14c8544")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        sc = block.sc
        if not torch.is_grad_enabled() or exporting() or not _conv_block(sc):
            return self.original(x)
        y = [x]
        y.extend(m(y[-1]) for m in block.m)
        z = block.ec(_conv_block_over(sc, y, self.recompute))
        return z + x if block.add else z


class FusedRepConvForward(_FusedForward):
    """``RepConv.forward``, ``act(conv1(x) + conv2(x) [+ bn(x)])``, for ``recompute`` only: the
    sum is tagged with its recipe (the branches' fused BatchNorm outputs, recipes themselves), so
    the activation keeps the branches' conv outputs instead of the sum, and the output is tagged
    too, so the convs reading it (the next RepConv's) recompute it. Otherwise, and without
    autograd, under export or compile, the class's own forward."""

    upstream = Upstream("ultralytics.nn.modules.conv", "RepConv", ULTRALYTICS, "a4e47b6245d4a805")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        if not self.recomputing():
            return self.original(x)
        branches = [block.conv1(x), block.conv2(x)]
        if block.bn is not None:
            branches.append(block.bn(x))
        total = _sum(*branches)
        tag(total, _sum, branches, ())
        out = consume(block.act, total)
        if out.untyped_storage().data_ptr() != total.untyped_storage().data_ptr():  # not in place
            tag(out, block.act, (total,), ())
        return out


def _sum(*tensors: torch.Tensor) -> torch.Tensor:
    """Left to right, as RepConv adds its branches: the same bits when recomputed."""
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


class FusedHGStemForward(_FusedForward):
    """``HGStem.forward`` for ``recompute`` only: its two zero paddings are tagged (``F.pad`` of
    a fused output) and ``stem3`` convolves ``[pool, stem2b]`` through ``cat_conv2d``, so the
    convs keep the fused outputs' recipes instead of the padded maps and their concatenation.
    Otherwise, and without autograd, under export or compile, or once ``model.fuse()`` has folded
    ``stem3.bn``, the class's own forward."""

    upstream = Upstream("ultralytics.nn.modules.block", "HGStem", ULTRALYTICS, "2eff762bb974ca3c")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        if not self.recomputing() or not _conv_block(block.stem3):
            return self.original(x)
        x = _padded(block.stem1(x))
        x2 = block.stem2b(_padded(block.stem2a(x)))
        return block.stem4(_conv_block_over(block.stem3, [block.pool(x), x2], True))


def _conv_block_over(block: nn.Module, pieces: list[torch.Tensor], recompute: bool) -> torch.Tensor:
    """Conv block ``block`` on the concatenation of ``pieces`` (``cat_conv2d``: the pieces are
    kept, not their concatenation), its BatchNorm+activation fused where ``_fuses`` says."""
    z = cat_conv2d(pieces, block.conv)
    if _fuses(block.act, recompute):
        return batch_norm_act_module(block.bn, block.act, z, recompute)
    return block.act(block.bn(z))


_STEM_PAD = (0, 1, 0, 1)


def _padded(x: torch.Tensor) -> torch.Tensor:
    """HGStem's ``F.pad(x, [0, 1, 0, 1])``, tagged: a conv reading it keeps ``x``'s recipe."""
    out = F.pad(x, _STEM_PAD)
    tag(out, F.pad, (x,), (_STEM_PAD,))
    return out


class FusedMLPForward(_FusedForward):
    """``MLP.forward`` (RT-DETR's query and box heads) for ``recompute`` only: each hidden
    activation's output is tagged (``_tagged_act``) and read by the next ``nn.Linear`` through
    ``recompute.consume``, which keeps the activation's input instead. Otherwise the class's own
    forward."""

    upstream = Upstream("ultralytics.nn.modules.transformer", "MLP", ULTRALYTICS, "67bdb9cdef6f18c0")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.block
        if not self.recomputing():
            return self.original(x)
        orig_x = x
        for i, layer in enumerate(mlp.layers):
            x = consume(layer, x)
            if i < mlp.num_layers - 1:
                x = _tagged_act(mlp.act, x)
        if getattr(mlp, "residual", False):
            x = x + orig_x
        x = getattr(mlp, "out_norm", nn.Identity())(x)
        return x.sigmoid() if getattr(mlp, "sigmoid", False) else x


class FusedFFNForward(_FusedForward):
    """``DeformableTransformerDecoderLayer.forward_ffn`` (RT-DETR's decoder) for ``recompute``
    only: the activation's output is tagged and ``linear2`` keeps its input instead. Otherwise
    the class's own."""

    method = "forward_ffn"
    upstream = Upstream(
        "ultralytics.nn.modules.transformer", "DeformableTransformerDecoderLayer", ULTRALYTICS, "d1a3c52be67d2598"
    )

    def __call__(self, tgt: torch.Tensor) -> torch.Tensor:
        layer = self.block
        if not self.recomputing():
            return self.original(tgt)
        tgt2 = consume(layer.linear2, layer.dropout3(_tagged_act(layer.act, layer.linear1(tgt))))
        return layer.norm3(tgt + layer.dropout4(tgt2))


def _tagged_act(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, tagged when ``act`` is one of ours whose backward keeps its input: the output
    is then free to drop. (One keeping its output or a bit mask would have the reader keep the
    input on top.)"""
    out = act(x)
    spec = activation_spec(act)
    keeps_input = (
        type(act) in TORCH_NN
        and spec is not None
        and not getattr(act, "inplace", False)
        and not getattr(act, "bitmask", False)
        and not TABLE[spec[0]].saves_output(spec[1])
    )
    if keeps_input and out.requires_grad:
        tag(out, act, (x,), ())
    return out


class MaxPoolForward(_FusedForward):
    """A stride-1 ``nn.MaxPool2d`` whose backward keeps its input rather than int64 argmax
    indices (``rtdetr_fused.max_pool``): a quarter of the bytes in bfloat16, none where the
    input is saved anyway. With ``recompute`` a tagged input is kept as its recipe
    (``recompute.consume``) and its output is tagged (``F.max_pool2d`` of its input). Without
    autograd or under export, the class's own forward."""

    upstream = Upstream("torch.nn.modules.pooling", "MaxPool2d", TORCH, "632a9cea0b689d5e")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        pool = self.block
        if not (torch.is_grad_enabled() and x.requires_grad) or exporting():
            return self.original(x)
        args = (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
        out = consume(max_pool2d, x, *args) if self.recompute else max_pool2d(x, *args)
        if self.recomputing():
            tag(out, F.max_pool2d, (x,), args)
        return out


def _fuses(act: nn.Module, recompute: bool) -> bool:
    """Whether a Conv block with ``act`` runs the fused BatchNorm+activation."""
    spec = activation_spec(act)
    return spec is not None and (recompute or spec[0] != "identity")


def _rep_conv(module: nn.Module) -> bool:
    """A RepConv in its training form: two Conv blocks (``model.fuse()`` removes them)."""
    return FusedRepConvForward.runs_upstream(module) and all(
        _conv_block(getattr(module, name, None)) for name in ("conv1", "conv2")
    )


def _over_cat(module: nn.Module, forward: type[_FusedForward], child: str) -> bool:
    """A block of ``forward``'s upstream class whose Conv block ``child`` (HGBlock's ``sc``,
    HGStem's ``stem3``) reads a concatenation."""
    return forward.runs_upstream(module) and _conv_block(getattr(module, child, None))


def _mlp(module: nn.Module) -> bool:
    return FusedMLPForward.runs_upstream(module) and isinstance(getattr(module, "act", None), nn.Module)


def _decoder_layer(module: nn.Module) -> bool:
    return FusedFFNForward.runs_upstream(module)


def _stride_one_max_pool(module: nn.Module) -> bool:
    return MaxPoolForward.runs_upstream(module) and not module.return_indices and tuple(_pair(module.stride)) == (1, 1)


def _fused(module: nn.Module) -> _FusedForward | None:
    """The fused forward ``module`` runs, if any."""
    return next((v for v in vars(module).values() if isinstance(v, _FusedForward)), None)


def _conv_block(module: nn.Module | None) -> bool:
    """A Conv-style block in its training form (``bn`` not folded by ``model.fuse()``)."""
    return (
        isinstance(module, nn.Module)
        and FusedConvForward.runs_upstream(module)
        and ("forward" not in vars(module) or _fused(module))
        and isinstance(getattr(module, "conv", None), nn.Module)
        and isinstance(getattr(module, "bn", None), nn.BatchNorm2d)
        and isinstance(getattr(module, "act", None), nn.Module)
    )


FORWARDS = {
    FusedConvForward: lambda m, recompute: _conv_block(m) and _fuses(m.act, recompute),
    FusedHGBlockForward: lambda m, recompute: _over_cat(m, FusedHGBlockForward, "sc"),
    MaxPoolForward: lambda m, recompute: _stride_one_max_pool(m),
    FusedRepConvForward: lambda m, recompute: recompute and _rep_conv(m),
    FusedHGStemForward: lambda m, recompute: recompute and _over_cat(m, FusedHGStemForward, "stem3"),
    FusedMLPForward: lambda m, recompute: recompute and _mlp(m),
    FusedFFNForward: lambda m, recompute: recompute and _decoder_layer(m),
}
"""Each fused forward and the blocks it applies to, without and with ``recompute``."""


def fusable(module: nn.Module, recompute: bool = False) -> type[_FusedForward] | None:
    """The fused forward ``fuse_bn_act`` would give ``module``, or None (not a qualifying block,
    already fused, or folded by ``model.fuse()``)."""
    if "forward" in vars(module) or _fused(module):
        return None
    return next((forward for forward, applies in FORWARDS.items() if applies(module, recompute)), None)


def fuse_bn_act(module: nn.Module, recompute: bool = False) -> int:
    """Make every qualifying block in ``module`` run conv -> fused BN+activation, every
    qualifying HGBlock save its pieces instead of their concatenation and every stride-1 max
    pool its input instead of indices; returns how many modules changed.
    Conv blocks whose ``act`` is unsupported keep eager BN, as do those without one
    (``nn.Identity``) unless ``recompute``.

    ``recompute=True`` also has the convs, HGBlock concatenations and max pools recompute
    the fused BatchNorm+activation outputs they read in backward instead of keeping them (one
    full tensor per Conv block instead of two, for one more pass over each in backward); Conv
    blocks without an activation then fuse their BatchNorm too. Blocks already fused switch to
    ``recompute`` (and count as changed when they do)."""
    switched = [f for m in module.modules() if (f := _fused(m)) and f.recompute != recompute]
    for forward in switched:
        forward.recompute = recompute
    blocks = [(m, forward) for m in module.modules() if (forward := fusable(m, recompute))]
    for block, forward in blocks:
        setattr(block, forward.method, forward(block, recompute))
    return len(switched) + len(blocks)


def unfuse_bn_act(module: nn.Module) -> int:
    """Undo ``fuse_bn_act`` in ``module``; returns how many blocks went back to their class's forward."""
    forwards = [f for m in module.modules() if (f := _fused(m))]
    for forward in forwards:
        delattr(forward.block, forward.method)
    return len(forwards)
