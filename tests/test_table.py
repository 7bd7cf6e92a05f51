"""``activations.TABLE`` is the one list of activations: every row is complete everywhere
(kernels, ops, modules, functional, BN+act, references, benchmark providers), its references
agree with PyTorch's autograd, and adding an activation touches three files (a throwaway one is
added to a copy of the package and tested there)."""

import inspect
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from reference import CASES, torch_module
from rtdetr_fused.kernels import formulas

import rtdetr_fused
import rtdetr_fused.functional as RF
from benchmarks.providers import ACTIVATION_TABLE
from rtdetr_fused.activations import TABLE
from rtdetr_fused.bn_act import activation_spec, batch_norm_act
from rtdetr_fused.modules import ACTIVATIONS, ROWS, get_activation

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", TABLE)
def test_row_is_complete_everywhere(name):
    row = TABLE[name]
    fwd, bwd = formulas.pair(name)  # the kernels' formulas, by name (PReLU's: BN+act's slope formula)
    assert fwd.fn.__name__.endswith("_fwd") and bwd.fn.__name__.endswith("_bwd")
    module_name = ROWS[row.torch_nn][0].name
    cls = ACTIVATIONS[module_name]
    assert cls.__bases__ == (row.torch_nn,) and cls.__name__ == row.torch_nn.__name__
    module = get_activation(name)
    assert type(module) is cls and activation_spec(module)[0] == name
    assert activation_spec(torch_module(name, 3))[0] == name  # torch.nn's module maps to the row too
    fn = getattr(RF, module_name)
    assert list(inspect.signature(fn).parameters)[0] == "input"
    assert module_name in ACTIVATION_TABLE and (row.composed is not None) == (module_name == name)
    assert row.per_channel or any(case == name or case.startswith(name + "_") for case in CASES), "no test case"
    assert row.bitmask == ("bitmask" in inspect.signature(cls).parameters)


@pytest.mark.parametrize("name", TABLE)
def test_references_agree_with_autograd(name):
    """The row's ``reference_backward`` from what it saves is autograd's derivative of
    ``reference``, and ``composed`` (the benchmark's formula) is ``reference``."""
    row = TABLE[name]
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 4, 5, dtype=torch.float64) * 4).requires_grad_()
    module = torch_module(name, 3).double()
    alpha = module.weight.detach() if row.per_channel else float(getattr(module, row.alpha)) if row.alpha else 0.0
    y = row.reference(x, alpha)
    g = torch.randn_like(y)
    (want,) = torch.autograd.grad(y, x, g)
    saved = y.detach() if row.saves_output(alpha if not row.per_channel else 0.0) else x.detach()
    torch.testing.assert_close(row.reference_backward(saved, g, alpha), want)
    torch.testing.assert_close(y, module(x))
    if row.composed is not None:
        torch.testing.assert_close(row.composed(x, module), y)


@pytest.mark.parametrize("name", TABLE)
def test_every_row_runs_after_batch_norm(name):
    row = TABLE[name]
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    module = torch_module(name, 3).double()
    weight = module.weight.detach() if row.per_channel else None
    alpha = float(getattr(module, row.alpha)) if row.alpha and not row.per_channel else 0.0
    out = batch_norm_act(x, None, None, training=True, act=name, alpha=alpha, act_weight=weight)
    torch.testing.assert_close(out, module(torch.nn.functional.batch_norm(x, None, None, training=True)))


def test_no_second_list_of_names():
    """Derived registries hold exactly the table's names."""
    assert set(ACTIVATIONS) == {rows[0].name for rows in ROWS.values()}
    assert set(ACTIVATION_TABLE) == set(ACTIVATIONS) and set(RF.__all__) == set(ACTIVATIONS)
    assert {case.removesuffix("_bitmask").removesuffix("_neg") for case in CASES} <= set(TABLE)
    assert all(hasattr(rtdetr_fused, cls.__name__) for cls in ACTIVATIONS.values())


# --- adding an activation: three files -----------------------------------------------------------

FORMULAS = """

@triton.jit
def softsign_fwd(x, ALPHA: tl.constexpr):
    return x / (1.0 + tl.abs(x))


@triton.jit
def softsign_bwd(x, g, ALPHA: tl.constexpr):
    d = 1.0 + tl.abs(x)
    return g / (d * d) + x * 0.0  # x * 0: torch's NaN at +-inf
"""

ROW = """    Activation(
        "softsign",
        nn.Softsign,
        "x / (1 + |x|)",
        lambda x, a: F.softsign(x),
        lambda x, g, a: g / (1 + x.abs()).square() + x * 0,
        composed=lambda x, m: x / (1 + x.abs()),
    ),
"""

CASE = """    "softsign": (lambda f, x: f.softsign(x), F.softsign),
"""

CHECK = """
import torch, rtdetr_fused as R
from rtdetr_fused.bn_act import batch_norm_act
from benchmarks.providers import ACTIVATION_TABLE
m = R.get_activation("softsign")
x = torch.randn(2, 3, 4, 5, requires_grad=True)
y = m(x)
torch.testing.assert_close(y, torch.nn.functional.softsign(x))
y.sum().backward()
assert type(m).__bases__ == (torch.nn.Softsign,) and "softsign" in ACTIVATION_TABLE
torch.testing.assert_close(R.functional.softsign(x), y)
b = batch_norm_act(x.detach(), None, None, training=True, act="softsign")
z = torch.nn.functional.batch_norm(x, None, None, training=True)
torch.testing.assert_close(b, torch.nn.functional.softsign(z))
print("ok")
"""


def _insert(path: Path, text: str, before: str | None = None, after_last: str | None = None) -> None:
    source = path.read_text()
    if before is not None:
        assert source.count(before) == 1, (path, before)
        source = source.replace(before, text + before)
    else:
        head, sep, tail = source.rpartition(after_last)
        source = head + sep + text + tail
    path.write_text(source)


@pytest.mark.slow
def test_adding_an_activation_touches_three_files(tmp_path):
    """Softsign, added to a copy of the package by its two formulas, its row and its test case,
    runs everywhere: module, functional, BN+act, benchmark provider; and the activation tests,
    the table's completeness tests and gradcheck pass for it."""
    skip = shutil.ignore_patterns("__pycache__", "kernels")  # kernels/ is rtdetr_fused.kernels
    for part in ("rtdetr_fused", "benchmarks", "tests"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=skip)
    shutil.copytree(ROOT / "kernels", tmp_path / "rtdetr_fused" / "kernels", ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.py")}

    _insert(tmp_path / "rtdetr_fused" / "kernels" / "formulas.py", FORMULAS, before="\n\n# BatchNorm + PReLU")
    _insert(tmp_path / "rtdetr_fused" / "activations.py", ROW, before=")\n\nTABLE")
    _insert(tmp_path / "tests" / "reference.py", CASE, before="    # Backward from one bit per element")

    changed = [p.relative_to(tmp_path) for p, data in before.items() if p.read_bytes() != data]
    assert len(changed) == 3, changed
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TRITON_INTERPRET": "1"}
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHECK)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
    tests = ["tests/test_table.py", "tests/test_activations.py", "tests/test_autograd_features.py"]
    args = ["-q", "-x", "-p", "no:cacheprovider", "-k", "softsign and not adding", *tests]
    run = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]
