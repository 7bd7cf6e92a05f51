"""``rtdetr-fused`` (also ``python -m rtdetr_fused``): train with fused activations, convert checkpoints, and
report a model's activation sites.

    rtdetr-fused train model=rtdetr-l.yaml data=coco8.yaml act=mish [targets=all] [fuse_bn=True|recompute] [epochs=...]
    rtdetr-fused convert runs/detect/train/weights/best.pt best-torch.pt [--to torch|fused]
    rtdetr-fused info model=rtdetr-l.yaml

``train`` takes Ultralytics' ``key=value`` arguments; ``act``, ``targets``, ``fuse_bn`` and the arguments of
the activation's constructor (``num_parameters=1``, ``negative_slope=0.1``, ``approximate=tanh``,
``bitmask=True``) are ours.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from typing import Any

from .modules import get_activation


def _pairs(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """Ultralytics' ``key=value`` syntax and value parsing (numbers, booleans, None, lists)."""
    from ultralytics.cfg import parse_key_value_pair

    bad = [item for item in items if "=" not in item or item.startswith("=") or item.endswith("=")]
    if bad:
        parser.error(f"expected key=value arguments, got {bad}")
    return dict(parse_key_value_pair(item) for item in items)


def _names(value: Any) -> str | tuple[str, ...]:
    """``targets=all``, ``targets=SiLU,ReLU`` or ``targets=[SiLU,ReLU]``."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = tuple(str(n).strip(" []()'\"") for n in items)
    return names[0] if names == ("all",) else tuple(n for n in names if n)


def _fuse_bn(value: Any) -> bool | str:
    """``fuse_bn=True``, ``fuse_bn=False`` or ``fuse_bn=recompute`` (other values fail in FusedActivations)."""
    return "recompute" if str(value).lower() == "recompute" else value


def _train(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    from .integrations.ultralytics import FusedActivations, train

    args = _pairs(parser, ns.args)
    if "model" not in args:
        parser.error("train needs model=... (a model YAML such as rtdetr-l.yaml, or a .pt checkpoint)")
    act = args.pop("act", "silu")
    try:
        params = inspect.signature(type(get_activation(act))).parameters
    except ValueError as e:
        parser.error(f"act: {e}")
    config = dict(act=act, act_kwargs={k: args.pop(k) for k in list(args) if k in params})
    config.update(targets=_names(args.pop("targets", "SiLU")), fuse_bn=_fuse_bn(args.pop("fuse_bn", False)))
    try:
        FusedActivations(**config)  # names and arguments checked before any model loads
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    train(args.pop("model"), **config, **args)


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
    from .integrations.ultralytics import load_model, site_report

    args = _pairs(parser, ns.args)
    if "model" not in args:
        parser.error("info needs model=... (a model YAML or a .pt checkpoint)")
    model = load_model(args["model"])
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rtdetr-fused", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train an Ultralytics model with fused activations")
    p.add_argument("args", nargs="*", metavar="key=value", help="model=... data=... act=... and Ultralytics args")
    p.set_defaults(run=_train)
    p = sub.add_parser("convert", help="rewrite a checkpoint's activations as torch.nn (or back)")
    p.add_argument("input", help="Ultralytics checkpoint to read (never modified)")
    p.add_argument("output", help="checkpoint to write")
    p.add_argument("--to", choices=("torch", "fused"), default="torch", help="torch: loads without this package")
    p.set_defaults(run=_convert)
    p = sub.add_parser("info", help="activation sites of a model by type")
    p.add_argument("args", nargs="*", metavar="key=value", help="model=rtdetr-l.yaml")
    p.set_defaults(run=_info)
    ns = parser.parse_args(argv)
    ns.run(sub.choices[ns.command], ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
