"""The ``rtdetr-fused`` command (also ``python -m rtdetr_fused``). Its help is generated from the package's own
tables (``ACTIVATIONS``, the ``targets`` vocabulary, each activation's constructor), and a bad argument is one
line on stderr naming it and the valid choices, exit status 2, before anything loads or is written."""

from __future__ import annotations

import argparse
import difflib
import inspect
import sys
import textwrap
from typing import Any, NoReturn

from .modules import ACTIVATIONS, NAMES, TORCH_NN

DESCRIPTION = """\
Train Ultralytics models (RT-DETR, YOLO) with the fused Triton activations, convert their checkpoints
back to torch.nn, and count a model's activation sites.

examples:
  rtdetr-fused train model=rtdetr-l.yaml data=coco8.yaml act=mish epochs=100
  rtdetr-fused train model=yolo11n.yaml data=coco8.yaml act=relu targets=all fuse_bn=recompute bitmask=True
  rtdetr-fused convert runs/detect/train/weights/best.pt best-torch.pt
  rtdetr-fused info model=rtdetr-l.yaml

'rtdetr-fused COMMAND --help' describes each command."""

FUSE_BN = {
    "False": "the default: BatchNorm and activation run as two ops",
    "True": "each Conv block runs conv -> one fused BatchNorm+activation op, which keeps fewer tensors for "
    "backward (HGBlocks and stride-1 max pools too)",
    "recompute": "that, and the fused blocks' outputs are recomputed in backward instead of kept: the least "
    "memory, for one more pass over each",
}
"""``fuse_bn`` values and what each does."""

ARG_NOTES = {
    "inplace": "write the output over the input",
    "negative_slope": "the slope below 0",
    "num_parameters": "PReLU weights per site (default: one per channel of the layer it follows; 1: one per site)",
    "init": "PReLU's initial weight",
    "approximate": "'none' or 'tanh'",
    "bitmask": "True: backward keeps 1 bit per element instead of the output (pays only where nothing after "
    "the activation keeps its output)",
}
"""What each activation constructor argument does: the arguments themselves come from the constructors."""


def _params(cls: type) -> dict[str, Any]:
    """An activation's constructor arguments and defaults, less torch's ``device``/``dtype`` (a site takes its
    layer's; ``device=`` is Ultralytics')."""
    params = inspect.signature(cls).parameters.values()
    return {p.name: p.default for p in params if p.name not in ("device", "dtype")}


def _takers() -> dict[str, list[str]]:
    """Each constructor argument of an activation -> the activation names that take it."""
    takers: dict[str, list[str]] = {}
    for name, cls in ACTIVATIONS.items():
        for arg in _params(cls):
            takers.setdefault(arg, []).append(name)
    return takers


def _item(term: str, text: str, indent: int = 4, width: int = 18) -> str:
    """``term`` and its description wrapped beside it, as argparse lays out options."""
    pad, head = " " * (indent + width), " " * indent + term
    if len(term) >= width - 1:
        return head + "\n" + textwrap.fill(text, 110, initial_indent=pad, subsequent_indent=pad)
    return textwrap.fill(text, 110, initial_indent=head.ljust(len(pad)), subsequent_indent=pad)


def _train_epilog() -> str:
    from .integrations.ultralytics import FUSED

    acts = "\n".join(
        _item(name, f"{TORCH_NN[cls].__name__}({', '.join(f'{k}={v!r}' for k, v in _params(cls).items())})")
        for name, cls in ACTIVATIONS.items()
    )
    args = "\n".join(
        _item(f"{arg}=", f"{ARG_NOTES.get(arg, '')} ({', '.join(names)})") for arg, names in _takers().items()
    )
    fuse = "\n".join(_item(f"fuse_bn={value}", what) for value, what in FUSE_BN.items())
    targets = (
        "the activation types to replace: SiLU (the default: Ultralytics' default_act; rtdetr-l also has 67 ReLU "
        "and 1 GELU sites, 'rtdetr-fused info model=...' counts a model's), all, or a comma list of " + ", ".join(FUSED)
    )
    return f"""\
ours (every other key=value goes to Ultralytics' trainer, as with 'yolo train': data, epochs, imgsz, batch,
device, project, name, resume...):
{_item("act=NAME", "the activation to swap in (default silu), a module with torch.nn's signature:", 2, 16)}
{acts}
{_item("targets=TYPES", targets, 2, 16)}
{_item("ARG=VALUE", "a constructor argument of act, given to every site:", 2, 16)}
{args}
{_item("fuse_bn=MODE", "BatchNorm fused with the activation after it:", 2, 16)}
{fuse}

Each run logs one line with what it swapped (by type), what it kept and how many blocks it fused, e.g.
  rtdetr-fused: act=mish targets=SiLU: swapped 24 sites (24 nn.SiLU -> rtdetr_fused.Mish); kept 67 nn.ReLU,
  1 nn.GELU (targets=all swaps them too); fuse_bn off (fuse_bn=True fuses ...)
Runs go to ./runs/<task>/<name> (or Ultralytics' runs_dir setting where you set one); project= and name= win.

examples:
  rtdetr-fused train model=rtdetr-l.yaml data=coco8.yaml act=mish targets=all epochs=100 imgsz=640
  rtdetr-fused train model=yolo11n.yaml data=coco8.yaml act=leaky_relu negative_slope=0.1 fuse_bn=True
  rtdetr-fused train model=runs/detect/train/weights/last.pt resume=True act=mish targets=all"""


class _Parser(argparse.ArgumentParser):
    """Errors as one line (the usage is what --help is for)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _pairs(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """Ultralytics' ``key=value`` syntax and value parsing (numbers, booleans, None, lists)."""
    from ultralytics.cfg import parse_key_value_pair

    bad = [item for item in items if "=" not in item or item.startswith("=") or item.endswith("=")]
    if bad:
        parser.error(f"expected key=value arguments, got {' '.join(bad)}")
    return dict(parse_key_value_pair(item) for item in items)


def _names(value: Any) -> str | tuple[str, ...]:
    """``targets=all``, ``targets=SiLU,ReLU`` or ``targets=[SiLU,ReLU]``."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = tuple(str(n).strip(" []()'\"") for n in items)
    return names[0] if names == ("all",) else tuple(n for n in names if n)


def _fuse_bn(value: Any) -> bool | str:
    """``fuse_bn=True``, ``fuse_bn=False`` or ``fuse_bn=recompute`` (other values fail in FusedActivations)."""
    return "recompute" if str(value).lower() == "recompute" else value


def _unknown(parser: argparse.ArgumentParser, key: str, act: str, known: list[str]) -> NoReturn:
    """The error for a key that is neither ours, nor ``act``'s, nor Ultralytics'."""
    params = list(_params(ACTIVATIONS[act]))
    takers = _takers().get(key)
    if takers:
        parser.error(
            f"{key} is an argument of act={'/'.join(takers)}, not of act={act}, "
            f"which takes {', '.join(params) or 'none'}"
        )
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    parser.error(
        f"{key} is not a train argument: ours are act, targets, fuse_bn and act={act}'s "
        f"{', '.join(params) or '(none)'}, "
        f"the rest Ultralytics' train settings ('yolo cfg' lists them){hint}"
    )


def _load(parser: argparse.ArgumentParser, source: Any) -> Any:
    from .integrations.ultralytics import load_model

    try:
        return load_model(source)
    except (FileNotFoundError, ValueError) as e:
        parser.error(
            f"model={source}: {e}; give a model YAML Ultralytics ships (rtdetr-l.yaml, yolo11n.yaml...) "
            "or the path of a .yaml or .pt"
        )


def _train(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT, check_cfg

    from .integrations.ultralytics import FusedActivations, train

    args = _pairs(parser, ns.args)
    act = str(args.pop("act", "silu")).lower().replace("-", "_")
    if act in NAMES and NAMES[act].name in ACTIVATIONS:  # get_activation's aliases: swish, hard_swish...
        act = NAMES[act].name
    if act not in ACTIVATIONS:
        parser.error(f"act={act} is not an activation; choose from {', '.join(ACTIVATIONS)}")
    config = dict(act=act, targets=_names(args.pop("targets", "SiLU")), fuse_bn=_fuse_bn(args.pop("fuse_bn", False)))
    params = _params(ACTIVATIONS[act])
    config["act_kwargs"] = {k: args.pop(k) for k in list(args) if k in params}
    for key in args:
        if key not in DEFAULT_CFG_DICT:
            _unknown(parser, key, act, ["act", "targets", "fuse_bn", *params, *DEFAULT_CFG_DICT])
    if "model" not in args:
        parser.error("train needs model=... (a model YAML such as rtdetr-l.yaml, or a .pt checkpoint)")
    try:
        check_cfg({k: v for k, v in args.items() if k != "model"})  # Ultralytics' own value checks
        FusedActivations(**config)  # names and arguments checked before any model loads
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    train(_load(parser, args.pop("model")), **config, **args)


def _convert(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    from .integrations.ultralytics import convert

    try:
        counts = convert(ns.input, ns.output, to=ns.to)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    for key, swapped in counts.items():
        done = ", ".join(f"{n} {old} -> {new}" for (old, new), n in swapped.items()) or "nothing to swap"
        print(f"{key}: {done}")
    print(f"wrote {ns.output}")


def _info(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    from .integrations.ultralytics import site_report

    args = _pairs(parser, ns.args)
    if set(args) != {"model"}:
        parser.error(
            f"info takes model=... alone (a model YAML or a .pt checkpoint), got {', '.join(args) or 'nothing'}"
        )
    model = _load(parser, args["model"])
    rows = site_report(model.model)
    header = ("type", "sites", "modules", "Conv.default_act", "patch_ultralytics")
    total = ("total", *(sum(r[i] for r in rows) for i in range(1, len(header))))
    print(f"\nActivation sites of {args['model']} ({type(model.model).__name__}):")
    print(f"| {' | '.join(header)} |")
    print(f"|{'|'.join(' --- ' for _ in header)}|")
    for row in [*rows, total]:
        print(f"| {' | '.join(str(v) for v in row)} |")
    print(
        "\nsites: module slots (a module held by several layers counts once per layer); modules: distinct "
        "instances; Conv.default_act: sites reached by setting it by hand; patch_ultralytics: sites it reaches "
        "(every default_act). replace_activations(model, act, targets='all') reaches every site."
    )


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="rtdetr-fused", description=DESCRIPTION, formatter_class=raw)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "train",
        help="train an Ultralytics model with fused activations",
        description="Train an Ultralytics model (a YAML, a checkpoint, or resume=True) with fused activations.",
        epilog=_train_epilog(),
        formatter_class=raw,
    )
    p.add_argument("args", nargs="*", metavar="key=value", help="model=... data=... act=... (below)")
    p.set_defaults(run=_train, command_parser=p)
    p = sub.add_parser(
        "convert",
        help="rewrite a checkpoint's activations as torch.nn (or back)",
        description="Rewrite an Ultralytics checkpoint's activations (model and EMA) as torch.nn's, so it loads "
        "where this package is not installed (--to fused: back). The input is never modified.",
        epilog="example:\n  rtdetr-fused convert runs/detect/train/weights/best.pt best-torch.pt",
        formatter_class=raw,
    )
    p.add_argument("input", help="Ultralytics checkpoint to read (never modified)")
    p.add_argument("output", help="checkpoint to write")
    p.add_argument("--to", choices=("torch", "fused"), default="torch", help="torch: loads without this package")
    p.set_defaults(run=_convert, command_parser=p)
    p = sub.add_parser(
        "info",
        help="activation sites of a model by type",
        description="Count a model's activation sites by type, and which ones act= (targets=SiLU, the default) "
        "and setting Conv.default_act by hand would reach.",
        epilog="example:\n  rtdetr-fused info model=rtdetr-l.yaml",
        formatter_class=raw,
    )
    p.add_argument("args", nargs="*", metavar="key=value", help="model=rtdetr-l.yaml")
    p.set_defaults(run=_info, command_parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    ns.run(ns.command_parser, ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
