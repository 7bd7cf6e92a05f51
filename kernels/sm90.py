"""Compile every kernel for Hopper (sm_90) without a GPU and read what ptxas reports.

``python -m rtdetr_fused.kernels.sm90 > kernels/SM90_REPORT.md`` writes the committed report;
``--json`` prints the same as JSON for ``tests/test_sm90.py``, which fails on a compile
error, a register spill or a missing 128-bit load. Run it without TRITON_INTERPRET: the
interpreter's kernels cannot be compiled.
For each kernel and dtype: registers per thread, spill bytes, and the widest global load.
"""

import dataclasses
import inspect
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import bn_act, pointwise, prelu
from .formulas import FORMULAS
from .launch import NUM_WARPS

TARGET = GPUTarget("cuda", 90, 32)
DTYPES = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32", "fp64": "*fp64"}
ITEMSIZE = {"fp16": 2, "bf16": 2, "fp32": 4, "fp64": 8}
ALIGNED = [["tt.divisibility", 16]]  # what Triton infers for torch's 16-byte aligned tensors


@dataclass(frozen=True)
class Entry:
    """One kernel specialisation: signature types, constexprs, which args get aligned."""

    label: str
    dtype: str
    kernel: triton.JITFunction
    signature: dict
    constexprs: dict
    aligned: tuple[int, ...]
    num_warps: int
    full_tensor: bool = True  # streams a whole tensor, so its loads must be 128-bit


@dataclass(frozen=True)
class Report:
    label: str
    dtype: str
    registers: int
    spill_bytes: int
    widest_load_bits: int
    full_tensor: bool


def _pointwise_entries() -> list[Entry]:
    entries = []
    for name, (fwd, bwd) in FORMULAS.items():
        for dt, ptr in DTYPES.items():
            block = pointwise.BYTES_PER_PROGRAM // ITEMSIZE[dt]
            const = {"ALPHA": 0.01, "BLOCK": block}
            entries.append(
                Entry(
                    f"{name} forward",
                    dt,
                    pointwise._forward_kernel,
                    {
                        "x_ptr": ptr,
                        "y_ptr": ptr,
                        "n": "i64",
                        "FN": "constexpr",
                        "ALPHA": "constexpr",
                        "BLOCK": "constexpr",
                    },
                    {"FN": fwd, **const},
                    (0, 1),
                    NUM_WARPS,
                )
            )
            entries.append(
                Entry(
                    f"{name} backward",
                    dt,
                    pointwise._backward_kernel,
                    {
                        "s_ptr": ptr,
                        "g_ptr": ptr,
                        "dx_ptr": ptr,
                        "n": "i64",
                        "FN": "constexpr",
                        "ALPHA": "constexpr",
                        "BLOCK": "constexpr",
                    },
                    {"FN": bwd, **const},
                    (0, 1, 2),
                    NUM_WARPS,
                )
            )
    for dt, ptr in DTYPES.items():
        const = {"ALPHA": 0.2, "BLOCK": pointwise.BYTES_PER_PROGRAM // ITEMSIZE[dt]}
        fwd, bwd = FORMULAS["leaky_relu"]
        entries.append(
            Entry(
                "bitmask forward (leaky_relu)",
                dt,
                pointwise._mask_forward_kernel,
                {"x_ptr": ptr, "y_ptr": ptr, "m_ptr": "*u8", "n": "i64"}
                | dict.fromkeys(("FN", "DERIV", "FROM_OUTPUT", "ALPHA", "BLOCK"), "constexpr"),
                {"FN": fwd, "DERIV": bwd, "FROM_OUTPUT": True, **const},
                (0, 1, 2),
                NUM_WARPS,
            )
        )
        entries.append(
            Entry(
                "bitmask backward",
                dt,
                pointwise._mask_backward_kernel,
                {"m_ptr": "*u8", "g_ptr": ptr, "dx_ptr": ptr, "n": "i64", "ALPHA": "constexpr", "BLOCK": "constexpr"},
                const,
                (0, 1, 2),
                NUM_WARPS,
            )
        )
    return entries


def _prelu_entries() -> list[Entry]:
    entries = []
    for dt, ptr in DTYPES.items():
        acc = "*fp64" if dt == "fp64" else "*fp32"
        block = pointwise.BYTES_PER_PROGRAM // ITEMSIZE[dt]
        entries.append(
            Entry(
                "prelu forward",
                dt,
                prelu._forward_kernel,
                {"x_ptr": ptr, "w_ptr": acc, "y_ptr": ptr, "n": "i64", "B": "i64", "C": "i64", "BLOCK": "constexpr"},
                {"BLOCK": block},
                (0, 1, 2),
                NUM_WARPS,
            )
        )
        # NCHW-like (channel per row) and channels_last-like (channel per column) tiles.
        for column, block_r, block_k in ((False, block // 1024, 1024), (True, block // 256, 256)):
            entries.append(
                Entry(
                    f"prelu backward ({'channel per column' if column else 'channel per row'})",
                    dt,
                    prelu._backward_kernel,
                    {
                        "x_ptr": ptr,
                        "w_ptr": acc,
                        "g_ptr": ptr,
                        "dx_ptr": ptr,
                        "part_ptr": acc,
                        "R": "i64",
                        "K": "i64",
                        "C": "i64",
                        "ROWS_PER_PROGRAM": "i64",
                        "K_BLOCKS": "i32",
                        "CHANNEL_IS_COLUMN": "constexpr",
                        "BLOCK_R": "constexpr",
                        "BLOCK_K": "constexpr",
                    },
                    {"CHANNEL_IS_COLUMN": column, "BLOCK_R": block_r, "BLOCK_K": block_k},
                    (0, 1, 2, 3, 4, 6),  # K (H*W or C) a multiple of 16, as on RT-DETR's maps
                    NUM_WARPS,
                )
            )
    return entries


def _bn_act_entries() -> list[Entry]:
    """NCHW-like (channel per row, H*W = 6400 -> 256-wide blocks) and channels_last-like
    (channel per column, C = 256); SiLU, Mish (the most registers) and PReLU."""
    entries = []
    per_channel = ("mean_ptr", "invstd_ptr", "w_ptr", "b_ptr", "a_ptr")
    for dt, ptr in DTYPES.items():
        acc = "*fp64" if dt == "fp64" else "*fp32"
        tile = pointwise.BYTES_PER_PROGRAM // ITEMSIZE[dt]
        reduce_tile = bn_act.REDUCE_TILE // (2 if dt == "fp64" else 1)
        for column in (False, True):
            layout = "channel per column" if column else "channel per row"
            blocks = {"BLOCK_R": tile // 256, "BLOCK_K": 256}
            rblocks = {"BLOCK_R": reduce_tile // 256, "BLOCK_K": 256}
            sig = {"x_ptr": ptr, "part_ptr": acc, "R": "i32", "K": "i32", "PER": "i32", "PLANE": "i32"}
            sig |= {"COLUMN": "constexpr", "BLOCK_R": "constexpr", "BLOCK_K": "constexpr"}
            entries.append(
                Entry(
                    f"bn stats ({layout})",
                    dt,
                    bn_act._stats_kernel,
                    sig,
                    {"COLUMN": column, **rblocks},
                    (0, 1, 3, 4),
                    NUM_WARPS,
                )
            )
            for name, is_prelu in (("silu", False), ("mish", False), ("leaky_relu", True)):
                act = "prelu" if is_prelu else name
                fwd, bwd = FORMULAS[name]
                const = {"ALPHA": 0.0, "PRELU": is_prelu, "COLUMN": column}
                sig = {"x_ptr": ptr, "y_ptr": ptr, **dict.fromkeys(per_channel, acc)}
                sig |= {"R": "i32", "K": "i32", "C": "i32", "K_BLOCKS": "i32"}
                sig |= dict.fromkeys(("FN", "ALPHA", "PRELU", "COLUMN", "BLOCK_R", "BLOCK_K"), "constexpr")
                entries.append(
                    Entry(
                        f"bn+{act} forward ({layout})",
                        dt,
                        bn_act._forward_kernel,
                        sig,
                        {"FN": fwd, **const, **blocks},
                        (0, 1, 8),
                        NUM_WARPS,
                    )
                )
                sig = {"x_ptr": ptr, "g_ptr": ptr, "part_ptr": acc, **dict.fromkeys(per_channel, acc)}
                sig |= {"R": "i32", "K": "i32", "C": "i32", "PER": "i32", "PLANE": "i32"}
                sig |= dict.fromkeys(("FN", "ALPHA", "PRELU", "COLUMN", "BLOCK_R", "BLOCK_K"), "constexpr")
                entries.append(
                    Entry(
                        f"bn+{act} backward reduce ({layout})",
                        dt,
                        bn_act._backward_reduce_kernel,
                        sig,
                        {"FN": bwd, **const, **rblocks},
                        (0, 1, 9, 11),
                        NUM_WARPS,
                    )
                )
                sig = {"x_ptr": ptr, "g_ptr": ptr, "dx_ptr": ptr, **dict.fromkeys(per_channel, acc), "sums_ptr": acc}
                sig |= dict.fromkeys(("gw_ptr", "gb_ptr", "ga_ptr"), acc)
                sig |= {"R": "i32", "K": "i32", "C": "i32", "K_BLOCKS": "i32", "N": "i32"}
                sig |= dict.fromkeys(("FN", "ALPHA", "PRELU", "COLUMN", "TRAINING", "BLOCK_R", "BLOCK_K"), "constexpr")
                entries.append(
                    Entry(
                        f"bn+{act} backward ({layout})",
                        dt,
                        bn_act._backward_kernel,
                        sig,
                        {"FN": bwd, **const, "TRAINING": True, **blocks},
                        (0, 1, 2, 13),
                        NUM_WARPS,
                    )
                )
        # One program per channel (small NCHW maps): RT-DETR-l's 20x20 at batch 16, A = 16, B = 400.
        blocks = {"BLOCK_A": 8, "BLOCK_B": 256}
        for name, is_prelu in (("silu", False), ("leaky_relu", True)):
            act = "prelu" if is_prelu else name
            fwd, bwd = FORMULAS[name]
            sig = {"x_ptr": ptr, "y_ptr": ptr, "mean_ptr": acc, "invstd_ptr": acc, "rm_ptr": "*fp32", "rv_ptr": "*fp32"}
            sig |= dict.fromkeys(("w_ptr", "b_ptr", "a_ptr"), acc)
            sig |= {
                "A": "i32",
                "C": "i32",
                "B": "i32",
                "eps": "fp64",
                "factor": "fp64",
                "stats": "i32",
                "update": "i32",
            }
            sig |= dict.fromkeys(("FN", "ALPHA", "PRELU", "BLOCK_A", "BLOCK_B"), "constexpr")
            const = {"FN": fwd, "ALPHA": 0.0, "PRELU": is_prelu, **blocks}
            entries.append(
                Entry(
                    f"bn+{act} forward (program per channel)",
                    dt,
                    bn_act._channel_forward_kernel,
                    sig,
                    const,
                    (0, 1, 11),
                    NUM_WARPS,
                )
            )
            sig = {"x_ptr": ptr, "g_ptr": ptr, "dx_ptr": ptr, **dict.fromkeys(per_channel, acc)}
            sig |= dict.fromkeys(("gw_ptr", "gb_ptr", "ga_ptr"), acc) | {"A": "i32", "C": "i32", "B": "i32"}
            sig |= dict.fromkeys(("FN", "ALPHA", "PRELU", "TRAINING", "BLOCK_A", "BLOCK_B"), "constexpr")
            const = {"FN": bwd, "ALPHA": 0.0, "PRELU": is_prelu, "TRAINING": True, **blocks}
            entries.append(
                Entry(
                    f"bn+{act} backward (program per channel)",
                    dt,
                    bn_act._channel_backward_kernel,
                    sig,
                    const,
                    (0, 1, 2, 13),
                    NUM_WARPS,
                )
            )
    for acc in ("*fp32", "*fp64"):
        sig = {"part_ptr": acc, "mean_ptr": acc, "invstd_ptr": acc, "rm_ptr": "*fp32", "rv_ptr": "*fp32"}
        sig |= dict.fromkeys(("C", "S", "PLANE", "PER", "DIV", "TOTAL", "N"), "i32") | {"eps": "fp64", "factor": "fp64"}
        sig |= dict.fromkeys(("UPDATE", "BLOCK_S", "BLOCK_C"), "constexpr")
        const = {"UPDATE": True, "BLOCK_S": bn_act.FINALIZE_TILE // 32, "BLOCK_C": 32}
        # Per-channel vectors only: no full tensor, so no 128-bit load is asked of it.
        entries.append(Entry("bn finalize", acc[1:], bn_act._finalize_kernel, sig, const, (), NUM_WARPS, False))
    return entries


ENTRY_SOURCES = [_pointwise_entries, _prelu_entries, _bn_act_entries]


def _ast_source(entry: Entry) -> ASTSource:
    names = list(entry.signature)
    attrs = {(names.index(n),): ALIGNED for n in names if names.index(n) in entry.aligned}
    key = "constexprs" if "constexprs" in inspect.signature(ASTSource.__init__).parameters else "constants"
    return ASTSource(fn=entry.kernel, signature=entry.signature, attrs=attrs, **{key: entry.constexprs})


def ptxas():
    """Triton's bundled ptxas (``.path``, ``.version``); its signature changed across versions."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(90) if inspect.signature(get_ptxas).parameters else get_ptxas()


def compile_entry(entry: Entry) -> Report:
    compiled = triton.compile(_ast_source(entry), target=TARGET, options={"num_warps": entry.num_warps})
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


def entries() -> list[Entry]:
    return [e for source in ENTRY_SOURCES for e in source()]


def main() -> None:
    reports = [compile_entry(entry) for entry in entries()]
    if "--json" in sys.argv[1:]:
        print(json.dumps([dataclasses.asdict(r) for r in reports]))
        return
    print("# sm_90 compile report\n")
    print(f"triton {triton.__version__}, its ptxas {ptxas().version} (`-v --gpu-name=sm_90a`), made by")
    print("`python -m rtdetr_fused.kernels.sm90`, no GPU needed. Widest load: 128 bits means")
    print("16-byte vector loads (`ld.global.v4.b32` / `v2.b64`) on the unmasked full-block path;")
    print("`bn finalize` reads only per-channel vectors. BN+act rows specialise H*W = 6400 or C = 256.\n")
    print("| kernel | dtype | registers | spill bytes | widest load (bits) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in reports:
        print(f"| {r.label} | {r.dtype} | {r.registers} | {r.spill_bytes} | {r.widest_load_bits} |")


if __name__ == "__main__":
    main()
