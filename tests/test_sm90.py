"""Every kernel, every dtype, compiled for sm_90 with triton's own ptxas (no GPU needed):
no compile error, no register spill, 128-bit global loads.

It runs in a subprocess without TRITON_INTERPRET (interpreted kernels cannot be compiled),
and is skipped where triton has no NVIDIA backend with ptxas.
"""

import json
import os
import subprocess
import sys

import pytest


def _have_ptxas() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _have_ptxas(), reason="triton has no NVIDIA backend with ptxas")
def test_every_kernel_compiles_for_sm90_without_spills_with_vector_loads():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "rtdetr_fused.kernels.sm90", "--json"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    reports = json.loads(out.stdout)
    assert len(reports) >= 158  # 8 formulas x 2 passes x 4 dtypes, PReLU's 12, BN+act's 82
    spilled = [r for r in reports if r["spill_bytes"]]
    narrow = [r for r in reports if r["full_tensor"] and r["widest_load_bits"] != 128]
    assert not spilled, spilled
    assert not narrow, narrow
