"""Drop-in ``torch.nn`` activation modules backed by the fused kernels, one per torch.nn class of
``activations.TABLE``.

Each subclasses its ``torch.nn`` counterpart and has its name, so constructor signature,
defaults, ``extra_repr``, state_dict keys, pickles and ``isinstance`` checks are torch's; only
``forward`` changes, plus ``bitmask=False`` where a bit holds the derivative. A state_dict moves
between ``torch.nn.PReLU`` and ``PReLU`` both ways. The classes are built from the table (so
adding an activation is one row there): ``SiLU``, ``Mish``, ``Hardswish``, ``LeakyReLU``,
``ReLU6``, ``PReLU``, ``ReLU``, ``GELU``.
"""

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .activations import TABLE, Activation
from .ops import activation as _act
from .ops import prelu as _prelu


def selector(rows: Sequence[Activation]) -> Callable[[object], Activation | None]:
    """module -> the row of ``rows`` (one torch.nn class's) whose ``when`` its attributes match,
    or None for values no row has (torch.nn's forward then says what is wrong). A dict lookup."""
    if len(rows) == 1:
        return lambda module, row=rows[0]: row
    keys = tuple(rows[0].when)  # plain getattr, not operator.attrgetter: torch.compile traces it
    by_values = {tuple(row.when[k] for k in keys): row for row in rows}
    if len(keys) == 1:  # GELU's approximate: no generator per call
        return lambda module, key=keys[0]: by_values.get((getattr(module, key),))
    return lambda module: by_values.get(tuple(getattr(module, k) for k in keys))


def _saves(rows: Sequence[Activation]) -> str:
    """What backward keeps, in words, for the docstrings."""
    row = rows[0]
    if row.per_channel:
        return "the input and the weight (grad_weight is computed in the kernel, deterministically)"
    kept = {"the output" if r.saves_output(0.0) else "the input" for r in rows}
    text = " or ".join(sorted(kept))
    if row.saves_output(0.0) and not row.saves_output(-1.0):
        text += f" (the input where {row.alpha} < 0)"
    if row.bitmask:
        text += ", or with ``bitmask=True`` one bit per element (where the derivative is 1)"
    return text


def _forward(rows: Sequence[Activation], select: Callable[[object], Activation | None]):
    """``forward``: the fused op of the module's row (``select``), with its parameter and options."""
    if rows[0].per_channel:
        weight = rows[0].alpha

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            # The parameter dict read directly (nn.Module.__getattr__ is a Python call); a
            # parametrized weight is not in it.
            w = self._parameters.get(weight)
            return _prelu.apply(input, w if w is not None else getattr(self, weight))

        return forward

    # Which options the class has, decided once: a missing attribute costs nn.Module's
    # __getattr__ an exception per call.
    base = rows[0].torch_nn
    has_inplace, has_bitmask = "inplace" in inspect.signature(base).parameters, rows[0].bitmask

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        row = select(self)
        if row is None:
            return base.forward(self, input)
        alpha = float(getattr(self, row.alpha)) if row.alpha else 0.0
        inplace = self.inplace if has_inplace else False
        return _act.apply(input, row.name, alpha, inplace, self.bitmask if has_bitmask else False)

    return forward


def _with_bitmask(base: type[nn.Module]) -> dict:
    """``__init__`` with torch's signature plus ``bitmask=False``, and its ``extra_repr``."""
    signature = inspect.signature(base.__init__)
    bitmask = inspect.Parameter("bitmask", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=False, annotation=bool)
    signature = signature.replace(parameters=[*signature.parameters.values(), bitmask])

    def __init__(self, *args, **kwargs) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bitmask = bound.arguments.pop("bitmask", False)
        base.__init__(*bound.args, **bound.kwargs)
        self.bitmask = bitmask

    __init__.__signature__ = signature

    def extra_repr(self) -> str:
        return ", ".join(part for part in (base.extra_repr(self), "bitmask=True" if self.bitmask else "") if part)

    # ``bitmask = False``: modules pickled before the option load without it.
    return {"__init__": __init__, "extra_repr": extra_repr, "bitmask": False}


def _module(rows: Sequence[Activation], select: Callable[[object], Activation | None]) -> type[nn.Module]:
    base = rows[0].torch_nn
    formulas = "; ".join(f"{r.formula} ({', '.join(f'{k}={v!r}' for k, v in r.when.items())})" for r in rows)
    doc = (
        f"{base.__name__}(x) = {formulas if len(rows) > 1 else rows[0].formula}, fused: backward saves "
        f"{_saves(rows)}. Otherwise ``torch.nn.{base.__name__}``:\n\n{inspect.cleandoc(base.__doc__ or '')}"
    )
    namespace = {"__module__": __name__, "__qualname__": base.__name__, "__doc__": doc}
    namespace["forward"] = _forward(rows, select)
    if rows[0].bitmask:
        namespace.update(_with_bitmask(base))
    return type(base.__name__, (base,), namespace)


ROWS: dict[type[nn.Module], tuple[Activation, ...]] = {
    base: tuple(row for row in TABLE.values() if row.torch_nn is base)
    for base in dict.fromkeys(row.torch_nn for row in TABLE.values())
}
"""torch.nn class -> its rows, in the table's order."""

SELECTORS = {base: selector(rows) for base, rows in ROWS.items()}
"""torch.nn class -> the function that picks a module's row (``selector``)."""

ACTIVATIONS: dict[str, type[nn.Module]] = {rows[0].name: _module(rows, SELECTORS[base]) for base, rows in ROWS.items()}
"""Name -> our module class, one per torch.nn class (its first row's name)."""

TORCH_NN: dict[type[nn.Module], type[nn.Module]] = {cls: cls.__bases__[0] for cls in ACTIVATIONS.values()}
"""Each of our classes -> the torch.nn class it subclasses (ours change only ``forward``)."""

globals().update({cls.__name__: cls for cls in ACTIVATIONS.values()})  # SiLU, Mish, ..., for pickle and imports

NAMES = {key: row for row in TABLE.values() for key in (row.name, *row.aliases)} | {
    base.__name__.lower(): rows[0] for base, rows in ROWS.items()
}
"""Every name ``get_activation`` accepts -> its row: names, aliases, torch.nn class names."""


def get_activation(name: str, **kwargs) -> nn.Module:
    """Build an activation module by name or alias, e.g. ``get_activation("leaky_relu",
    negative_slope=0.1)``, ``get_activation("swish")``, ``get_activation("gelu_tanh")``; the
    keyword arguments are the torch.nn module's (plus ``bitmask`` where it has one)."""
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key not in NAMES:
        aliases = ", ".join(key for key in NAMES if key not in TABLE)
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(TABLE)} (aliases: {aliases})")
    row = NAMES[key]
    cls = ACTIVATIONS[ROWS[row.torch_nn][0].name]
    return cls(**{**row.when, **kwargs})


__all__ = ["ACTIVATIONS", "TORCH_NN", "get_activation", *(cls.__name__ for cls in ACTIVATIONS.values())]
