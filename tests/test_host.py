"""The host's side of our ops without a GPU: launches per forward+backward under
``rtdetr_fused.testing.stub_launches`` and what each carries, the policy's native route, the
launch cache against Triton's own path, and the harness's host section and profile.

``stub_launches`` needs kernels compiled for a GPU, and this process imports them under Triton's
interpreter (conftest.py), so the checks run in subprocesses with ``TRITON_INTERPRET=0``: one
runs ``launch_checks`` (which asserts what it can only see there, and hands back what it saw),
the others the harness's commands.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BYTES_PER_PROGRAM = 8192


def _run(*args: str, timeout: float = 120) -> str:
    """``python *args`` in the repository, kernels compiled for a GPU; its stdout."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "YOLO_OFFLINE": "1"}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _same(t, ref) -> bool:
    """The launch got ``ref``'s memory, in its dtype."""
    return t.data_ptr() == ref.data_ptr() and t.dtype == ref.dtype


def _activation_launches(step, policy) -> dict:
    """Each activation (float32, and float16 for the parameterless), the bitmask ReLU and an
    in-place ReLU6 on a non-leaf: two launches with the tensors, grid and constexprs the
    kernels expect."""
    import torch
    from rtdetr_fused.kernels.formulas import pair

    from rtdetr_fused import ACTIVATIONS
    from rtdetr_fused.activations import TABLE

    policy.NATIVE_BELOW = 0
    seen = {}
    for name, cls in ACTIVATIONS.items():
        for dtype in (torch.float32,) if name == "prelu" else (torch.float32, torch.float16):
            x = torch.randn(2, 16, 32, 33, dtype=dtype)  # 33792 elements: 17 programs of float32, 9 of float16
            y, g, grads, (fwd, bwd) = step(cls(16) if name == "prelu" else cls(), x)
            block = BYTES_PER_PROGRAM // x.element_size()
            grid = (_cdiv(x.numel(), block), 1, 1)
            assert fwd.grid == grid, (name, fwd.grid)
            assert _same(fwd.args["x_ptr"], x) and _same(fwd.args["y_ptr"], y) and _same(bwd.args["g_ptr"], g)
            assert _same(bwd.args["dx_ptr"], grads[0]) and fwd.args["BLOCK"] == block
            if name == "prelu":  # backward: its own tiles, per-program partial sums of the weight's grad
                assert fwd.args["w_ptr"].dtype == torch.float32 and fwd.args["w_ptr"].numel() == 16
                assert _same(bwd.args["x_ptr"], x) and (fwd.args["B"], fwd.args["C"]) == (32 * 33, 16)
            else:
                assert bwd.grid == grid and bwd.args["BLOCK"] == block and fwd.args["n"] == bwd.args["n"] == x.numel()
                assert fwd.args["FN"] is pair(name)[0] and bwd.args["FN"] is pair(name)[1]
                assert fwd.args["ALPHA"] == bwd.args["ALPHA"] == (0.01 if name == "leaky_relu" else 0.0)
                assert _same(bwd.args["s_ptr"], y if TABLE[name].saves_output(0.01) else x), name
            seen[f"{name} {dtype}"] = [fwd.kernel, bwd.kernel]
    x = torch.randn(2, 16, 32, 33)
    y, g, grads, (fwd, bwd) = step(ACTIVATIONS["relu"](bitmask=True), x)
    n, bits = x.numel(), fwd.args["m_ptr"]
    assert bits.dtype == torch.uint8 and bits.numel() == _cdiv(n, 8) and _same(bwd.args["m_ptr"], bits)
    assert (fwd.args["FN"], fwd.args["DERIV"]) == pair("relu") and fwd.args["FROM_OUTPUT"] is True
    assert _same(fwd.args["y_ptr"], y) and _same(bwd.args["g_ptr"], g) and _same(bwd.args["dx_ptr"], grads[0])
    seen["relu bitmask"] = [fwd.kernel, bwd.kernel]
    y, g, grads, (fwd, bwd) = step(ACTIVATIONS["relu6"](inplace=True), x, clone=True)
    assert _same(fwd.args["x_ptr"], y) and _same(fwd.args["y_ptr"], y) and _same(bwd.args["s_ptr"], y)
    seen["relu6 inplace"] = [fwd.kernel, bwd.kernel]
    return seen


def _scalars(args: dict) -> dict:
    """A launch's arguments but its tensors: integers, floats and constexprs, formulas by name."""
    import torch

    return {k: getattr(v, "__name__", v) for k, v in args.items() if not isinstance(v, torch.Tensor)}


def _bn_act_launches(step) -> dict:
    """BatchNormAct2d: one program per channel up to 16384 elements per channel (train and
    eval), the split reduction above."""
    import torch
    from rtdetr_fused.kernels.formulas import pair

    from rtdetr_fused import BatchNormAct2d

    seen = {}
    for label, shape, training in (
        ("train 1x16x8x8", (1, 16, 8, 8), True),
        ("eval 1x16x8x8", (1, 16, 8, 8), False),
        ("train 1x4x128x128", (1, 4, 128, 128), True),  # 16384 per channel
        ("train 1x4x128x129", (1, 4, 128, 129), True),
        ("train 2x16x160x160", (2, 16, 160, 160), True),
        ("eval 2x16x160x160", (2, 16, 160, 160), False),
    ):
        x = torch.randn(shape)
        module = BatchNormAct2d(shape[1], act="silu").train(training)
        # Twice: Triton's path, then the cache, which must hand the launcher the same values.
        scalars = [[(launch.kernel, _scalars(launch.args)) for launch in step(module, x)[3]] for _ in range(2)]
        assert scalars[0] == scalars[1], label
        y, g, grads, launched = step(module, x)
        seen[label] = [launch.kernel for launch in launched]
        for launch in launched:
            if "FN" in launch.args:
                assert launch.args["FN"] is pair("silu")["backward" in launch.kernel], (label, launch.kernel)
            if "x_ptr" in launch.args:
                assert _same(launch.args["x_ptr"], x), (label, launch.kernel)
        first, last = launched[0], launched[-1]
        if first.kernel == "_channel_forward_kernel":
            assert first.grid == last.grid == (shape[1], 1, 1) and last.args["TRAINING"] == training
            assert first.args["stats"] == int(training) and _same(first.args["y_ptr"], y)
            assert _same(last.args["g_ptr"], g) and _same(last.args["dx_ptr"], grads[0])
            assert _same(last.args["gw_ptr"], grads[1]) and _same(last.args["gb_ptr"], grads[2])
    return seen


def _policy_launches(step, policy) -> dict:
    """The policy's native route: no launch for a small SiLU map unless it is off; Mish always."""
    import torch

    from rtdetr_fused import Mish, SiLU

    counts = {}
    for below in (1 << 40, 0):
        policy.NATIVE_BELOW = below
        for cls in (SiLU, Mish):
            counts[f"{cls.__name__} below={below}"] = len(step(cls(), torch.randn(1, 16, 8, 8))[3])
    return counts


def _launch_cache(launches) -> list:
    """``kernels.launch.Launch`` against Triton's binder and Triton's own launch path, on the
    pointwise forward kernel: one compile per specialization Triton tells apart, and the same
    compiled kernel run as Triton's path returns for the same arguments."""
    import torch
    import triton.compiler
    from rtdetr_fused.kernels import launch as L
    from rtdetr_fused.kernels import pointwise
    from rtdetr_fused.kernels.formulas import pair

    kernel, fn = pointwise._forward_kernel, pair("silu")[0]
    stub, compiles, ran = triton.compiler.compile, [], []

    def counting(src, *args, **kwargs):
        """The stub's compile, counted; its kernel notes each run, whichever path runs it."""
        compiled = stub(src, *args, **kwargs)
        compiles.append(compiled)
        run = compiled.run

        def noted(*launch_args):
            ran.append(compiled)
            return run(*launch_args)

        compiled.run = noted
        return compiled

    def pair(n: int, dtype: torch.dtype = torch.float32, offset: int = 0):
        return torch.empty(n + offset, dtype=dtype)[offset:], torch.empty(n, dtype=dtype)

    cases = [
        ("aligned", *pair(4096), 4096, torch.float32),
        ("other tensors, same specialization", *pair(4096), 4096, torch.float32),
        ("unaligned view x[1:]", *pair(4096, offset=1), 4096, torch.float32),
        ("size 1", *pair(1), 1, torch.float32),
        ("size not divisible by 16", *pair(4100), 4100, torch.float32),
        ("another size divisible by 16", *pair(4112), 4112, torch.float32),
        ("integer past 2**31, divisible by 16", *pair(16), 2**31 + 16, torch.float32),  # nothing runs: no bounds
        ("integer past 2**31, not divisible by 16", *pair(16), 2**31 + 3, torch.float32),
        *((str(dtype), *pair(4096, dtype), 4096, dtype) for dtype in (torch.float16, torch.bfloat16, torch.float64)),
    ]
    triton.compiler.compile = counting  # a kernel's binder takes ``compile`` when created: after launch.clear()
    try:
        seen, out, made = set(), [], {}
        for label, x, y, n, dtype in cases:
            constexprs = dict(FN=fn, ALPHA=0.0, BLOCK=BYTES_PER_PROGRAM // dtype.itemsize)
            grid = (_cdiv(n, constexprs["BLOCK"]),)
            launch = made.setdefault((n, dtype), L.Launch(kernel, grid, (n,), **constexprs))
            before = len(compiles)
            launch((x, y))  # Triton's path the first time for these specs, the cached launcher after
            launch((x, y))
            ours = ran[-1]
            assert kernel[grid](x, y, n, **constexprs, num_warps=L.NUM_WARPS) is ours is ran[-1], label
            assert launches[-1].grid == launches[-2].grid == (*grid, 1, 1) and launches[-1].args["n"] == n
            specialization = L.specialization(kernel, x, y, n, **constexprs)
            out.append([label, len(compiles) - before, specialization not in seen])
            seen.add(specialization)
        assert len(compiles) == len(seen)  # Triton's own path compiled nothing more
    finally:
        triton.compiler.compile = stub
    return out


def launch_checks() -> dict:
    """Runs in the subprocess (kernels compiled for a GPU): everything above, under the stub."""
    import torch

    from rtdetr_fused.ops import policy
    from rtdetr_fused.testing import stub_launches

    with stub_launches() as launches:

        def step(module, x, clone: bool = False):
            """Forward+backward (input and parameters); what was launched."""
            x.requires_grad_()
            launches.clear()
            y = module(x.clone() if clone else x)
            g = torch.randn_like(y)
            grads = torch.autograd.grad(y, [x, *module.parameters()], g)
            return y, g, grads, list(launches)

        default = policy.NATIVE_BELOW
        try:
            activations = _activation_launches(step, policy)
            bn_act = _bn_act_launches(step)
            counts = _policy_launches(step, policy)
        finally:
            policy.NATIVE_BELOW = default
    with stub_launches() as launches:  # a fresh stub: every kernel's binder is created anew
        cache = _launch_cache(launches)
    return {"activations": activations, "bn_act": bn_act, "policy": counts, "cache": cache}


@pytest.fixture(scope="module")
def checks() -> dict:
    code = "import json, sys; sys.path.insert(0, 'tests'); import test_host as t; print(json.dumps(t.launch_checks()))"
    return json.loads(_run("-c", code).splitlines()[-1])


POINTWISE = ["_forward_kernel", "_backward_kernel"]
CHANNEL = ["_channel_forward_kernel", "_channel_backward_kernel"]
SPLIT_FORWARD = ["_stats_kernel", "_finalize_kernel", "_forward_kernel"]
SPLIT_BACKWARD = ["_backward_reduce_kernel", "_backward_kernel"]


def test_two_launches_per_activation(checks):
    activations = checks["activations"]
    assert len(activations) == 7 * 2 + 1 + 2
    assert activations.pop("relu bitmask") == ["_mask_forward_kernel", "_mask_backward_kernel"]
    assert all(kernels == POINTWISE for kernels in activations.values()), activations


def test_bn_act_launches_by_reduction(checks):
    assert checks["bn_act"] == {
        "train 1x16x8x8": CHANNEL,
        "eval 1x16x8x8": CHANNEL,
        "train 1x4x128x128": CHANNEL,
        "train 1x4x128x129": SPLIT_FORWARD + SPLIT_BACKWARD,
        "train 2x16x160x160": SPLIT_FORWARD + SPLIT_BACKWARD,
        "eval 2x16x160x160": ["_forward_kernel", *SPLIT_BACKWARD],
    }


def test_policy_native_route(checks):
    assert checks["policy"] == {
        "SiLU below=1099511627776": 0,
        "Mish below=1099511627776": 2,
        "SiLU below=0": 2,
        "Mish below=0": 2,
    }


def test_launch_specs_are_at_least_as_fine_as_tritons():
    """A ``Launch`` keys its compiled kernels by ``specs`` of its tensors (its integers are fixed
    values, its floats not keyed): tensors it puts together Triton specializes alike (every
    dtype, aligned and unaligned views), and every float alike."""
    import torch
    from rtdetr_fused.kernels.launch import specs

    native = pytest.importorskip("triton.runtime.jit").__dict__.get("native_specialize_impl")
    backend = pytest.importorskip("triton.backends.nvidia.compiler").CUDABackend
    if native is None:
        pytest.skip("this triton specializes in Python")
    storage = {dt: torch.empty(64, dtype=dt) for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}
    groups: dict = {}
    for t in [t[i:] for t in storage.values() for i in (0, 1, 2, 4, 8, 16)]:
        groups.setdefault(specs((t,)), set()).add(repr(native(backend, t, False, True, True)))
    assert len(groups) == 8 and all(len(found) == 1 for found in groups.values()), groups
    floats = {repr(native(backend, v, False, True, True)) for v in (0.0, 1.0, -2.5, 1e300, float("nan"), -0.0)}
    assert len(floats) == 1, floats


def test_launch_cache_compiles_once_per_specialization(checks):
    """A compile exactly where Triton's binder tells the arguments apart; the same compiled
    kernel as Triton's own path (asserted in the subprocess)."""
    cache = {label: (compiled, new) for label, compiled, new in checks["cache"]}
    assert all(compiled == int(new) for compiled, new in cache.values()), cache
    assert cache["aligned"] == (1, True)
    for same in ("other tensors, same specialization", "another size divisible by 16"):
        assert cache[same] == (0, False)
    for differs in (
        "unaligned view x[1:]",
        "size 1",
        "size not divisible by 16",
        "integer past 2**31, divisible by 16",
        "torch.float16",
        "torch.bfloat16",
        "torch.float64",
    ):
        assert cache[differs] == (1, True), differs


def test_host_section_writes_its_rows(tmp_path):
    """``python -m benchmarks --sections host`` on the CPU, as ``make bench`` runs it (no
    TRITON_INTERPRET): every row measured, launches stubbed, ratios against the targets."""
    _run(
        *("-m", "benchmarks", "--device", "cpu", "--quick", "--sections", "host", "--activations", "relu,relu6"),
        *("--rep-ms", "2", "--warmup-ms", "0", "--out", str(tmp_path)),
    )
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["host"]["launches"] == "launches stubbed"
    assert data["meta"]["host"]["policy"]["native_below_bytes"] > 0
    rows = data["sections"]["host"]["rows"]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    labels = {(r["kind"], r["activation"], r["variant"], r["policy"]) for r in rows}
    assert labels == {
        *(("activation", a, "-", p) for a in ("relu", "relu6") for p in ("on", "off")),
        ("activation", "relu", "bitmask", "off"),
        ("activation", "relu6", "inplace", "off"),
        *(("bn_act", a, m, "off") for a in ("relu", "relu6") for m in ("train", "eval")),
        *((kind, "silu", v, "on") for kind in ("block", "model") for v in ("fuse_bn", "recompute")),
    }
    for r in rows:
        assert r["ours_us"] > 0 and r["torch_us"] > 0 and r["ratio_x"] > 0 and r["ours_calls"] > r["torch_calls"]
        assert r["launches_by"] == "stub_launches" and r["torch_launches"] is None
        assert r["met"] is (None if r["target_x"] is None else r["ratio_x"] <= r["target_x"])
        if r["kind"] in ("activation", "bn_act", "block"):  # relu on small maps: PyTorch's op by default
            assert r["ours_launches"] == (0 if (r["activation"], r["policy"]) == ("relu", "on") else 2), r
    targets = {(r["kind"], r["variant"]): r["target_x"] for r in rows}
    assert targets[("activation", "bitmask")] == 2.0 and targets[("bn_act", "train")] == 1.1
    assert targets[("bn_act", "eval")] == 1.0 and targets[("model", "recompute")] == 1.1
    summary = (tmp_path / "summary.md").read_text()
    assert "CPU, launches stubbed: host cost per forward+backward" in summary and "| YOLO11n recompute |" in summary
    assert "targets met" in summary


def test_profile_writes_every_part(tmp_path):
    """``python -m benchmarks.profile`` on the CPU (GPU runs only in make gpu-check): every part
    runs or says it needs a GPU; the host parts run with launches stubbed."""
    out = tmp_path / "profile.txt"
    _run("-m", "benchmarks.profile", "--out", str(out))
    text = out.read_text()
    assert "a part failed" not in text
    for title in ("## Host", "## Python functions", "## BN+SiLU forward+backward by reduction", "## YOLO11n"):
        assert title in text
    assert "| YOLO11n recompute |" in text and "launches stubbed" in text
