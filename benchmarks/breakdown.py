"""Which modules hold the bytes a training forward saves for backward.

``SavedByModule`` is ``SavedTensors`` that also records, for each storage, the modules that
were running when it was first saved (forward pre/post hooks keep the stack), so the total
splits by model layer or module. ``python -m benchmarks.breakdown`` prints the split for
RT-DETR-l, eager against ``fuse_bn`` (its Conv blocks alone, all of it, and with
``fuse_bn="recompute"``), as docs/memory.md quotes it.
"""

import argparse
import copy
import os
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .measure import SavedTensors

Stack = tuple[tuple[str, nn.Module], ...]
"""The (qualified name, module) pairs running when a storage was first saved, the model first."""


class SavedByModule(SavedTensors):
    """Unique saved storages of a forward through ``model`` (parameters and buffers
    excluded), each attributed to the module stack that saved it first: a tensor saved
    again later (a block's output, saved by the next block's conv) stays with its first saver."""

    def __init__(self, model: nn.Module, exclude: Sequence[torch.Tensor] = ()):
        super().__init__(exclude=[*model.parameters(), *model.buffers(), *exclude])
        self.model = model
        self._names = {m: name for name, m in model.named_modules()}
        self._stack: list[tuple[str, nn.Module]] = []
        self._handles: list[RemovableHandle] = []

    def _tag(self) -> Stack:
        return tuple(self._stack)

    def _enter(self, module: nn.Module, args: tuple) -> None:
        self._stack.append((self._names[module], module))

    def _leave(self, module: nn.Module, args: tuple, output: object) -> None:
        self._stack.pop()

    def __enter__(self) -> "SavedByModule":
        for m in self.model.modules():
            self._handles.append(m.register_forward_pre_hook(self._enter))
            self._handles.append(m.register_forward_hook(self._leave, always_call=True))
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def split(self, key: Callable[[Stack], str]) -> Counter[str]:
        """Bytes by ``key(stack)``."""
        out: Counter[str] = Counter()
        for ptr, nbytes in self.storages.items():
            out[key(self.tags[ptr])] += nbytes
        return out


def _is_block(m: nn.Module) -> bool:
    """A module of the model's own library with children (Ultralytics' Conv, HGBlock, ...),
    not a torch.nn container or layer, nor one of our activations."""
    return bool(m._modules) and not type(m).__module__.startswith("torch.")


def layer_type(stack: Stack) -> str:
    """The class of the top-level layer: an Ultralytics model calls each ``model.model[i]``
    from its own forward, so the layer is the second module of the stack."""
    return type(stack[1][1]).__name__ if len(stack) > 1 else "(model)"


def module_path(stack: Stack) -> str:
    """``HGBlock.sc / Conv2d``: the innermost block as a path below its layer (list indices
    dropped, the layer named by its class) and the torch.nn module that saved the tensor, or
    ``(body)`` for the block's own ops (a fused BatchNorm+activation, MSDeformAttn's sampling).
    The conv after HGBlock's cat saves the cat: ``HGBlock.sc / Conv2d``."""
    if len(stack) < 2:
        return "(model)"
    layer_name, layer = stack[1]
    block = next((name for name, m in reversed(stack) if _is_block(m)), layer_name)
    path = ".".join([type(layer).__name__, *(p for p in block[len(layer_name) :].split(".") if p and not p.isdigit())])
    leaf = stack[-1][1]
    return f"{path} / {'(body)' if _is_block(leaf) else type(leaf).__name__}"


def _variants(activation: str) -> dict[str, nn.Module]:
    """Eager (torch.nn activations everywhere), ours with the Conv blocks' BatchNorm+activation
    fused, ours with ``fuse_bn=True`` (HGBlocks too) and with ``fuse_bn="recompute"``."""
    from rtdetr_fused.integrations.fuse_bn import FusedHGBlockForward
    from rtdetr_fused.integrations.ultralytics import replace_activations

    from .models import build, to_torch_nn

    base = build("rtdetr-l")
    eager, convs, fused, recompute = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base), base
    replace_activations(eager, activation, targets="all")
    for model in (convs, fused):
        replace_activations(model, activation, targets="all", fuse_bn=True)
    replace_activations(recompute, activation, targets="all", fuse_bn="recompute")
    for m in convs.modules():
        if isinstance(vars(m).get("forward"), FusedHGBlockForward):
            del m.forward
    return {"eager": to_torch_nn(eager), "Conv blocks fused": convs, "fuse_bn": fused, "recompute": recompute}


def measure(models: dict[str, nn.Module], shape: tuple[int, ...]) -> dict[str, SavedByModule]:
    """Each model's training forward on the same random image of ``shape``."""
    img = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, model in models.items():
        with SavedByModule(model.train()) as saved:
            y = model(img)  # held until the count: what it needs is what backward will need
        del y
        out[name] = saved
    return out


def table(saved: dict[str, SavedByModule], key: Callable[[Stack], str], top: int) -> list[list[str]]:
    """Rows ``key | MiB per variant | each later variant's bytes as a share of the first's total |
    last - first``: the ``top`` largest (in any variant), the rest as ``other``, the total."""
    splits = [s.split(key) for s in saved.values()]
    total = sum(splits[0].values()) / 2**20
    keys = sorted(set().union(*splits), key=lambda k: -max(split[k] for split in splits))
    groups = [(k, [k]) for k in keys[:top]] + ([("other", keys[top:])] if keys[top:] else []) + [("total", keys)]
    rows = []
    for label, members in groups:
        mib = [sum(split[k] for k in members) / 2**20 for split in splits]
        shares = (f"{100 * m / total:.1f}%" for m in mib[1:])
        rows.append([label, *(f"{m:.1f}" for m in mib), *shares, f"{mib[-1] - mib[0]:+.1f}"])
    return rows


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = [headers, ["---"] * len(headers), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.breakdown", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", default="1x3x640x640,2x3x128x128", help="NxCxHxW,... (default: %(default)s)")
    parser.add_argument("--activation", default="silu")
    parser.add_argument("--top", type=int, default=16, help="rows before 'other' (default: %(default)s)")
    args = parser.parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "0"  # the ops' PyTorch path on the CPU: the bytes are the same
    models = _variants(args.activation)
    names = list(models)
    headers = [*(f"{n} MiB" for n in names), *(f"{n} / {names[0]} total" for n in names[1:]), "change MiB"]
    totals = []
    for spec in args.inputs.split(","):
        saved = measure(models, tuple(int(d) for d in spec.split("x")))
        print(f"RT-DETR-l training forward, {spec}, {args.activation}, CPU: MiB saved for backward\n")
        print(markdown(["layer type", *headers], table(saved, layer_type, args.top)) + "\n")
        print(markdown(["module", *headers], table(saved, module_path, args.top)) + "\n")
        totals.append([spec, *table(saved, layer_type, 0)[-1][1:]])  # the total row
    print(markdown(["input", *headers], totals))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
