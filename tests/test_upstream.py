"""The upstream methods ``rtdetr_fused.integrations.fuse_bn`` re-implements are still those its copies were made
from, and setup.py claims the Ultralytics releases they were checked against.

When a check fails after an upgrade, its message names the method and the copy: read the method's new source,
bring the copy (and its row in ``FORWARDS``) in line, run tests/test_fuse_bn.py, test_fuse_hgblock.py,
test_max_pool.py and test_recompute.py, then record the new fingerprint and the releases checked in the copy's
``upstream``, ``fuse_bn.ULTRALYTICS`` and setup.py's ``extras_require["ultralytics"]``.
"""

import ast
import importlib
import inspect
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from rtdetr_fused.integrations import fuse_bn


@pytest.mark.parametrize("forward", list(fuse_bn.FORWARDS), ids=lambda forward: forward.__name__)
def test_copied_upstream_method_is_unchanged(forward):
    up = forward.upstream
    package = Requirement(up.checked).name
    installed = f"{package} {pytest.importorskip(package).__version__}"  # the one imported, as pip may not know
    importlib.import_module(up.module)
    where = f"{up.module}.{up.cls}.{forward.method}"
    copy = f"{forward.__name__} (rtdetr_fused/integrations/fuse_bn.py)"
    method = forward.upstream_method()
    assert method is not None, f"{where} is gone in the installed {installed}: {copy} re-implements it"
    now = fuse_bn.source_fingerprint(inspect.getsource(method))
    assert now == up.fingerprint, (
        f"{where} changed upstream: its source in the installed {installed} (fingerprint {now}) differs from the "
        f"one {copy} re-implements, checked against {up.checked} (fingerprint {up.fingerprint}). Re-check "
        f"{forward.__name__} and its row in FORWARDS against the new source, run the fuse_bn, fuse_hgblock, "
        f"max_pool and recompute tests, then set its upstream's fingerprint to {now!r} and record the releases "
        "checked there, in fuse_bn.ULTRALYTICS and in setup.py."
    )


def _setup_extras() -> dict[str, list[str]]:
    tree = ast.parse((Path(__file__).parents[1] / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    return ast.literal_eval(next(k.value for k in call.keywords if k.arg == "extras_require"))


def test_setup_claims_the_checked_ultralytics_releases():
    assert _setup_extras()["ultralytics"] == [fuse_bn.ULTRALYTICS], "setup.py and fuse_bn.ULTRALYTICS disagree"
    ranges = {f.__name__: f.upstream.checked for f in fuse_bn.FORWARDS}
    others = {name: r for name, r in ranges.items() if r.startswith("ultralytics") and r != fuse_bn.ULTRALYTICS}
    assert not others, f"copies checked against other releases than fuse_bn.ULTRALYTICS: {others}"
    installed = pytest.importorskip("ultralytics").__version__
    assert Requirement(fuse_bn.ULTRALYTICS).specifier.contains(installed), (
        f"the installed ultralytics {installed} is outside the releases checked, {fuse_bn.ULTRALYTICS}: once "
        "test_copied_upstream_method_is_unchanged and the Ultralytics tests pass with it, widen the range in "
        "fuse_bn.ULTRALYTICS and setup.py"
    )


def test_fingerprint_ignores_form_and_sees_changes():
    plain = "def forward(self, x):\n    return self.act(self.bn(self.conv(x)))\n"
    restyled = (
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        '        """Conv, BatchNorm, activation."""\n'
        "        return self.act(  # the activation last\n"
        "            self.bn(self.conv(x))\n"
        "        )\n"
    )
    changed = "def forward(self, x):\n    return self.act(self.conv(x))\n"
    fingerprint = fuse_bn.source_fingerprint
    assert fingerprint(plain) == fingerprint(restyled) != fingerprint(changed)
