"""Every kernel, every dtype, compiled for sm_90 with triton's own ptxas (no GPU needed):
no compile error, no register spill, 128-bit global loads; and the report's enumeration,
derived from the launch functions, covers every kernel with exactly its parameters.

The compile runs in a subprocess without TRITON_INTERPRET (interpreted kernels cannot be
compiled); the enumeration runs here, under the interpreter, without compiling. Both are
skipped where triton has no NVIDIA backend with ptxas.
"""

import inspect
import json
import os
import subprocess
import sys

import pytest

from rtdetr_fused.activations import TABLE


def _have_ptxas() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except ImportError:
        return False
    return True


needs_ptxas = pytest.mark.skipif(not _have_ptxas(), reason="triton has no NVIDIA backend with ptxas")
DTYPES = ("fp16", "bf16", "fp32", "fp64")
FP64_CALL_SPILLS = 32
"""fp64 division and square root are subroutine calls on sm_90; ptxas saves a few live values
on the stack around them (STL/LDL next to CALL.REL in the SASS), which it counts as spill bytes:
seen in the fp64 ``bn finalize`` and BN+PReLU program-per-channel forward once their integer
arguments are specialised divisible by 16, as a launch specialises them."""


@pytest.fixture(scope="module")
def sm90():
    from rtdetr_fused.kernels import sm90

    return sm90


@needs_ptxas
def test_every_kernel_compiles_for_sm90_without_spills_with_vector_loads():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "rtdetr_fused.kernels.sm90", "--json"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    reports = json.loads(out.stdout)
    compiled = {(r["label"], dt) for r in reports for dt in r["dtype"].split(", ")}
    # Every activation's formula, forward and backward, in every dtype (PReLU has its own kernels).
    formulas = [name for name, row in TABLE.items() if not row.per_channel]
    expected = {(f"{n} {p}", dt) for n in formulas for p in ("forward", "backward") for dt in DTYPES}
    assert expected <= compiled, sorted(expected - compiled)
    call_saves = [r for r in reports if r["dtype"] == "fp64" and 0 < r["spill_bytes"] <= FP64_CALL_SPILLS]
    spilled = [r for r in reports if r["spill_bytes"] and r not in call_saves]
    narrow = [r for r in reports if r["full_tensor"] and r["widest_load_bits"] != 128]
    assert not spilled, spilled
    assert not narrow, narrow


@needs_ptxas
def test_enumeration_covers_every_kernel_with_its_own_parameters(sm90):
    from rtdetr_fused.kernels import bn_act, launch, pointwise, prelu
    from triton.runtime.jit import KernelInterface

    modules = (pointwise, prelu, bn_act)
    kernels = {
        f"{m.__name__}.{name}": k
        for m in modules
        for name, k in vars(m).items()
        if isinstance(k, KernelInterface) and name.endswith("_kernel")
    }
    assert len(kernels) >= 10
    call = launch.Launch.__call__
    entries = sm90.entries()
    covered = {e.kernel.fn for e in entries}
    assert not [name for name, k in kernels.items() if k.fn not in covered]
    for e in entries:
        params = list(inspect.signature(e.kernel.fn).parameters)
        assert list(e.signature) == params, e.label
        constexprs = [p for p, t in e.signature.items() if t == "constexpr"]
        assert [params[i] for (i,) in e.constexprs] == constexprs, e.label
        assert all(i < len(params) for (i,) in e.attrs), e.label
        assert e.options["num_warps"] == launch.NUM_WARPS
    labels = [(e.label, dt) for e in entries for dt in e.dtype.split(", ")]
    assert len(labels) == len(set(labels))
    # The recording is undone: a Launch launches again.
    assert launch.Launch.__call__ is call
