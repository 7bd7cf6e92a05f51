"""Compile every kernel for Hopper (sm_90) without a GPU and read what ptxas reports.

``python -m rtdetr_fused.kernels.sm90 > kernels/SM90_REPORT.md`` writes the committed report;
``--json`` prints the same as JSON for ``tests/test_sm90.py``, which fails on a compile
error, a register spill or a missing 128-bit load; ``--list`` prints what would be compiled
(no compile). Run it without TRITON_INTERPRET: the interpreter's kernels cannot be compiled.
For each kernel and dtype: registers per thread, spill bytes, and the widest global load.

Nothing here describes a kernel. The report runs each family's own host launch functions
(``pointwise``, ``prelu``, ``bn_act``) on meta tensors of every dtype, with shapes that take
each of their code paths, records the ``launch.Launch`` calls they make, and hands each
recorded call to Triton's own binder and argument packing, as ``kernel[grid](...)`` does:
the signature (types from the values, one entry per kernel parameter), the constexprs and
the alignment attributes are what a launch of those values on an H100/H200 compiles. A
kernel that gains a parameter, or a launch that passes another value, changes the report
by itself. Meta tensors have no storage; their address, 0, is 16-byte aligned like every
allocation of torch's CUDA caching allocator.
"""

import contextlib
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from types import ModuleType

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, KernelInterface, create_function_from_signature

from rtdetr_fused.activations import TABLE

from . import accumulate_dtype, bn_act, launch, pointwise, prelu

TARGET = GPUTarget("cuda", 90, 32)
FAMILIES: tuple[ModuleType, ...] = (pointwise, prelu, bn_act)
"""The kernel modules the report covers: every ``*_kernel`` in them must show up in it."""
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
PROGRAMS = 4 * 132
"""``ops.common.device_programs`` on an H100/H200 (132 SMs)."""
SHAPE = (4, 256, 80, 80)
"""RT-DETR's stride-8 map at batch 4: NCHW gives H*W = 6400 per row, channels_last C = 256 per
row, and 25600 values per channel, more than ``bn_act.CHANNEL_PROGRAM_MAX``: the split
reduction."""
SMALL_SHAPE = (16, 256, 20, 20)
"""RT-DETR-l's 20x20 map at batch 16 (6400 values per channel): BN+act's program per channel."""
BN_ACTIVATIONS = ("silu", "mish", "prelu")
"""BN+act is compiled with these (it takes every row's formula): SiLU, the most used; Mish, the
most registers; PReLU, the per-channel slope. Eval (frozen statistics) with the first only."""
LAYOUTS = {
    # note: (shape, memory format)
    "channel per row": (SHAPE, torch.contiguous_format),
    "channel per column": (SHAPE, torch.channels_last),
}


@dataclass(frozen=True)
class Entry:
    """One kernel specialisation, as Triton's launch path would compile it."""

    label: str
    dtype: str  # the input dtypes whose launches compile it, e.g. "fp16, bf16, fp32"
    kernel: KernelInterface
    signature: dict  # parameter name -> Triton type ("*fp16", "i32", "constexpr", ...)
    constexprs: dict  # (index,) -> value
    attrs: dict  # (index,) -> [["tt.divisibility", 16]], ...
    options: dict  # the backend's options (num_warps, ...)
    full_tensor: bool = True  # streams a whole tensor, so its loads must be 128-bit


@dataclass(frozen=True)
class Report:
    label: str
    dtype: str
    registers: int
    spill_bytes: int
    widest_load_bits: int
    full_tensor: bool


# --- Triton's view of a launch ---------------------------------------------------------------

_backend = make_backend(TARGET)
_binders: dict[int, tuple[JITFunction, Callable]] = {}


def as_jit(kernel: KernelInterface) -> JITFunction:
    """The ``JITFunction`` of a kernel: itself, or under TRITON_INTERPRET the one ``@triton.jit``
    would have made (same function and decorator arguments), to read its parameters."""
    return _binder(kernel)[0]


def _binder(kernel: KernelInterface) -> tuple[JITFunction, Callable]:
    """The kernel and Triton's binder for it on sm_90 (``JITFunction.create_binder`` without
    asking a driver for the target)."""
    if id(kernel) not in _binders:
        jit = kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn, **kernel.kwargs)
        _binders[id(kernel)] = jit, create_function_from_signature(jit.signature, jit.params, _backend)
    return _binders[id(kernel)]


def specialize(kernel: KernelInterface, args: tuple, constexprs: dict) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs, attrs, options) that ``kernel[grid](*args, **constexprs,
    num_warps=launch.NUM_WARPS)`` (a ``launch.Launch``'s call) compiles: Triton's binder
    specializes the values, ``JITFunction._pack_args`` turns that into the compile's input."""
    jit, binder = _binder(kernel)
    kwargs = {**constexprs, "num_warps": launch.NUM_WARPS}
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constants, attrs = jit._pack_args(_backend, kwargs, bound, specialization, options)
    return signature, constants, attrs, options.__dict__


# --- recording the launch functions' calls ----------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One call of a family's launch functions: ``run`` launches through ``launch.Launch``."""

    family: str  # "" (the activations), "prelu" or "bn"
    act: str | None  # the activation, shown for kernels that take one (FN or ALPHA)
    note: str  # the geometry, shown after the label
    dtype: str
    x: torch.Tensor  # the input: kernels that take a tensor of its size stream a full tensor
    run: Callable[[], object]


@contextlib.contextmanager
def _recording(calls: list) -> Iterator[None]:
    """Make every ``launch.Launch`` record (kernel, args, constexprs) instead of launching."""

    def record(self: launch.Launch, tensors: tuple, floats: tuple = ()) -> None:
        calls.append((self.kernel, (*tensors, *floats, *self.ints), self.constexprs))

    call = launch.Launch.__call__
    launch.Launch.__call__ = record
    try:
        yield
    finally:
        launch.Launch.__call__ = call


def _empty(shape, dtype, memory_format=torch.contiguous_format) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta", memory_format=memory_format)


def _alpha(name: str) -> float:
    """The activation's alpha as the op gets it from a default torch.nn module (0 without one)."""
    row = TABLE[name]
    return float(getattr(row.torch_nn(**row.when), row.alpha)) if row.alpha else 0.0


def _pointwise(dt: str) -> Iterator[Scenario]:
    x, out, grad = (_empty(SHAPE, DTYPES[dt]) for _ in range(3))
    bits = _empty(((x.numel() + 7) // 8,), torch.uint8)
    for name, row in TABLE.items():
        if row.per_channel:
            continue  # PReLU: its own kernels
        a = _alpha(name)
        runs = [partial(pointwise.forward, x, out, name, a), partial(pointwise.backward, x, grad, out, name, a)]
        if row.bitmask:
            runs.append(partial(pointwise.mask_forward, x, out, bits, name, a, row.saves_output(a)))
            runs.append(partial(pointwise.mask_backward, bits, grad, out, a))
        yield from (Scenario("", name, "", dt, x, run) for run in runs)


def _prelu(dt: str) -> Iterator[Scenario]:
    """Per-channel weights in both layouts, and one weight for all (``nn.PReLU()``'s default)."""
    geometries = [(note, fmt, SHAPE[1]) for note, (_, fmt) in LAYOUTS.items()]
    for note, fmt, channels in [*geometries, ("one weight", torch.contiguous_format, 1)]:
        x, grad, out = (_empty(SHAPE, DTYPES[dt], fmt) for _ in range(3))
        w = _empty((channels,), accumulate_dtype(x))
        yield Scenario("prelu", None, note, dt, x, partial(prelu.forward, x, w, out))
        yield Scenario("prelu", None, note, dt, x, partial(prelu.backward, x, w, grad, out, PROGRAMS))


def _bn_act(dt: str) -> Iterator[Scenario]:
    """Per geometry and activation, a training forward (statistics with a running update, then
    the output; or one program per channel) and backward; for the first activation also eval:
    the output from given statistics and the backward of frozen ones."""
    geometries = {**LAYOUTS, "program per channel": (SMALL_SHAPE, torch.contiguous_format)}
    for note, (shape, fmt) in geometries.items():
        x, grad, out, grad_x = (_empty(shape, DTYPES[dt], fmt) for _ in range(4))
        mean, invstd, rm, rv, w, b, a, gw, gb, ga = (_empty((shape[1],), accumulate_dtype(x)) for _ in range(10))
        for name in BN_ACTIVATIONS:
            per_channel = TABLE[name].per_channel
            act_w, grad_a, alpha = (a, ga, 0.0) if per_channel else (None, None, _alpha(name))
            params = (w, b, act_w, name, alpha)
            stats = (mean, invstd, w, b, act_w)
            runs = {
                note: [
                    partial(bn_act.train_forward, x, out, rm, rv, 0.1, 1e-5, *params, PROGRAMS),
                    partial(bn_act.backward, x, grad, grad_x, gw, gb, grad_a, *stats, True, name, alpha, PROGRAMS),
                ]
            }
            if name == BN_ACTIVATIONS[0]:
                runs[f"{note}, eval"] = [
                    partial(bn_act.forward, x, out, mean, invstd, *params),
                    partial(bn_act.backward, x, grad, grad_x, gw, gb, grad_a, *stats, False, name, alpha, PROGRAMS),
                ]
            yield from (Scenario("bn", name, n, dt, x, run) for n, group in runs.items() for run in group)


SCENARIOS: tuple[Callable[[str], Iterator[Scenario]], ...] = (_pointwise, _prelu, _bn_act)


def _label(kernel: KernelInterface, scenario: Scenario) -> str:
    """``<family>+<activation> <kernel name> (<geometry>)``: the kernel's name without ``_`` and
    ``_kernel``; the activation only for kernels that take one."""
    words = kernel.fn.__name__.strip("_").removesuffix("_kernel").replace("_", " ")
    takes_act = scenario.act and {"FN", "ALPHA"} & set(as_jit(kernel).arg_names)
    who = "+".join(filter(None, (scenario.family, scenario.act if takes_act else None)))
    return f"{who} {words}" + (f" ({scenario.note})" if scenario.note else "")


def _key(kernel, signature: dict, constants: dict, attrs: dict, options: dict) -> str:
    values = {k: f"jit:{id(v)}" if isinstance(v, KernelInterface) else v for k, v in constants.items()}
    return repr((id(kernel), signature, values, attrs, options))


def entries() -> list[Entry]:
    """Every distinct specialisation the scenarios launch, in order of first launch; one that
    several dtypes launch (``bn finalize``: float32 statistics) lists them all."""
    found: dict[str, Entry] = {}
    for source in SCENARIOS:
        for dt in DTYPES:
            for scenario in source(dt):
                calls = []
                with _recording(calls):
                    scenario.run()
                if not calls:  # it launched some other way: its kernels would drop out unseen
                    raise RuntimeError(f"{scenario.run} launched nothing through launch.Launch")
                for kernel, args, constexprs in calls:
                    signature, constants, attrs, options = specialize(kernel, args, constexprs)
                    key = _key(kernel, signature, constants, attrs, options)
                    if key in found:
                        if dt not in found[key].dtype.split(", "):
                            found[key] = dataclasses.replace(found[key], dtype=f"{found[key].dtype}, {dt}")
                        continue
                    full = any(isinstance(a, torch.Tensor) and a.numel() == scenario.x.numel() for a in args)
                    label = _label(kernel, scenario)
                    found[key] = Entry(label, dt, as_jit(kernel), signature, constants, attrs, options, full)
    return list(found.values())


# --- compiling -------------------------------------------------------------------------------


def ptxas():
    """Triton's bundled ptxas (``.path``, ``.version``); its signature changed across versions."""
    import inspect

    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(90) if inspect.signature(get_ptxas).parameters else get_ptxas()


def compile_entry(entry: Entry) -> Report:
    source = ASTSource(entry.kernel, entry.signature, entry.constexprs, entry.attrs)
    compiled = triton.compile(source, target=TARGET, options=entry.options)
    ptx = compiled.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        # The PTX says sm_90a; ptxas -v prints registers and spill bytes per function.
        info = subprocess.run(
            [ptxas().path, "-v", "--gpu-name=sm_90a", f.name, "-o", "/dev/null"],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    registers = int(re.search(r"Used (\d+) registers", info).group(1))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", info))
    widths = [_load_bits(m) for m in re.findall(r"ld\.global(?:\.\w+)*", ptx)]
    return Report(entry.label, entry.dtype, registers, spills, max(widths, default=0), entry.full_tensor)


def _load_bits(instr: str) -> int:
    """Width of one ``ld.global[.vN].bM`` in bits."""
    parts = instr.split(".")
    vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
    bits = next((int(p[1:]) for p in parts if re.fullmatch(r"[bfsu]\d+", p)), 0)
    return vec * bits


def describe(entry: Entry) -> str:
    """One line of ``--list``: the label, dtypes, signature, constexprs and aligned arguments."""
    names = list(entry.signature)
    consts = {names[k[0]]: getattr(v, "__name__", v) for k, v in entry.constexprs.items()}
    attrs = {names[k[0]]: [value for _, value in v] for k, v in entry.attrs.items() if v}
    return f"{entry.label} [{entry.dtype}] {entry.signature} constexprs={consts} attrs={attrs}"


def main() -> None:
    if "--list" in sys.argv[1:]:
        print("\n".join(describe(e) for e in entries()))
        return
    reports = [compile_entry(entry) for entry in entries()]
    if "--json" in sys.argv[1:]:
        print(json.dumps([dataclasses.asdict(r) for r in reports]))
        return
    big, small = ("x".join(map(str, s)) for s in (SHAPE, SMALL_SHAPE))
    print("# sm_90 compile report\n")
    print(f"triton {triton.__version__}, its ptxas {ptxas().version} (`-v --gpu-name=sm_90a`), made by")
    print("`python -m rtdetr_fused.kernels.sm90`, no GPU needed. One row per specialisation that the")
    print(f"launch functions make on {big} maps (NCHW: H*W = {SHAPE[2] * SHAPE[3]} per row; channels_last:")
    print(f"C = {SHAPE[1]}; BN+act's split reduction) and {small} (BN+act's program per channel), as")
    print("Triton's binder specialises their arguments; a list of dtypes shares one compile. Widest")
    print("load: 128 bits means 16-byte vector loads (`ld.global.v4.b32` / `v2.b64`) on the unmasked")
    print("full-block path; `bn finalize` reads only per-channel vectors. The few fp64 spill bytes are")
    print("values kept on the stack across the calls of ptxas's fp64 division and square-root routines.\n")
    print("| kernel | dtype | registers | spill bytes | widest load (bits) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in reports:
        print(f"| {r.label} | {r.dtype} | {r.registers} | {r.spill_bytes} | {r.widest_load_bits} |")


if __name__ == "__main__":
    main()
