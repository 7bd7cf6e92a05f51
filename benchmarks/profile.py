"""Where the time of ours goes, for an activation and for BatchNorm2d + activation (SiLU):

- host: microseconds, Python calls and launches per forward+backward of two small maps
  (``HOST_MAPS``: BN+act's two reductions), ours against torch.nn side by side
  (``benchmarks.host``; when the host is slower than the kernels, as on small maps, this is
  the step's cost);
- the Python functions behind ours (cProfile, by own time);
- device: the kernels of one forward+backward on RT-DETR-l's maps (torch.profiler), ours
  against torch.nn, in bfloat16 under autocast as in training;
- BN+act's two reductions forced in turn on maps around ``CHANNEL_PROGRAM_MAX`` (GPU only):
  device time (CUDA graph) and back-to-back wall time, the data to place that threshold;
- a YOLO11n forward+backward on a 64x64 image with torch.nn, ``fuse_bn=True`` and
  ``fuse_bn="recompute"``, float32, side by side (``benchmarks.host``'s model rows).

Without a GPU the host parts and the Python functions run our kernels' route with Triton's
launches stubbed (``rtdetr_fused.testing.stub_launches``: the host's work of a GPU run without
its kernels; needs ``TRITON_INTERPRET`` unset), and the kernels part profiles the CPU path
(PyTorch's ops behind ours). ``python -m benchmarks.profile [--out FILE]``; ``make gpu-check``
writes profile.txt.
"""

import argparse
import cProfile
import io
import pstats
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from rtdetr_fused import SiLU
from rtdetr_fused.bn_act import BatchNormAct2d

from . import host
from .core import Unavailable
from .measure import back_to_back_ms, bench_ms, sync
from .memory import Autocast
from .report import host_label

CASES: dict[str, dict[str, Callable[[int], nn.Module]]] = {
    "silu": {"ours": lambda c: SiLU(), "torch.nn": lambda c: nn.SiLU()},
    "bn+silu": {
        "ours": lambda c: BatchNormAct2d(c, act="silu"),
        "torch.nn": lambda c: nn.Sequential(nn.BatchNorm2d(c), nn.SiLU()),
    },
}
GPU_MAPS = ((16, 128, 160, 160), (16, 256, 80, 80), (16, 256, 20, 20))
PATH_MAPS = ((16, 512, 20, 20), (16, 256, 40, 40), (16, 128, 80, 80))
"""6400, 25600 and 102400 elements per channel: RT-DETR-l's and YOLO11n's maps at batch 16."""
HOST_MAPS = ((1, 16, 8, 8), (1, 16, 160, 160))
"""Small maps, so the host's time shows: BN+act runs one program per channel on the first and
the split reduction on the second (25600 elements per channel, above CHANNEL_PROGRAM_MAX)."""
CPU_MAPS = ((2, 16, 20, 20),)


def _step(module: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn_like(x)
    grads = [x, *module.parameters()]
    return lambda: torch.autograd.grad(module(x), grads, g)


def _route_note(device: torch.device) -> str:
    return "" if device.type == "cuda" else ", CPU, launches stubbed"


def _host_table(device: torch.device, groups: list[host.Group], rounds: int, batch_ms: float) -> list[str]:
    """A markdown table of ``benchmarks.host`` rows for ``groups``."""
    lines = [
        "| case | map | ours us | torch.nn us | ours / torch.nn | Python calls ours / torch.nn | launches ours / "
        "torch.nn |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    with host.kernels_route(device) as launches:
        for group in groups:
            for r in host.measure_group(group, device, launches, rounds, batch_ms, batch_ms):
                torch_launches = "-" if r["torch_launches"] is None else r["torch_launches"]
                lines.append(
                    f"| {host_label(r)} | {r['shape']} | {r['ours_us']:,.1f} | {r['torch_us']:,.1f} | "
                    f"{r['ratio_x']:.2f}x | {r['ours_calls']} / {r['torch_calls']} | "
                    f"{r['ours_launches']} / {torch_launches} |"
                )
    return lines


def host_cost(device: torch.device, out: list[str]) -> None:
    out.append(f"## Host: per forward+backward of a small float32 map, side by side{_route_note(device)}\n")
    groups = []
    for shape in HOST_MAPS:
        groups += [host.activation_group("silu", shape), host.bn_act_group("silu", shape, training=True)]
    out += _host_table(device, groups, rounds=15, batch_ms=10.0)
    if device.type != "cuda":
        out.append(
            "\nOn the CPU torch.nn's ops compute while ours only record: at 1x16x160x160 the ratio is not the host's."
        )
    out.append("")


def python_functions(device: torch.device, out: list[str], calls: int = 300) -> None:
    with host.kernels_route(device), host.policy(native=False):
        for case, providers in CASES.items():
            step = _step(providers["ours"](16).to(device).train(), (1, 16, 8, 8), torch.float32, device)
            step()
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(calls):
                step()
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
            title = (
                f"## Python functions of ours, {case}, {calls} forward+backward calls (cProfile{_route_note(device)})"
            )
            out += [f"{title}\n", "```"]
            out += [line for line in text.getvalue().splitlines() if line.strip()][3:] + ["```", ""]


def kernels(device: torch.device, out: list[str], maps: tuple[tuple[int, ...], ...]) -> None:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for case, providers in CASES.items():
        for shape in maps:
            for provider, build in providers.items():
                module = Autocast(build(shape[1]), dtype).to(device).train()
                step = _step(module, shape, dtype, device)
                step()
                sync(device)
                with torch.profiler.profile(activities=activities) as prof:
                    for _ in range(5):
                        step()
                    sync(device)
                table = _table(prof)
                title = f"## {case}, {provider}, {'x'.join(map(str, shape))} {dtype}: 5 forward+backward calls"
                out += [title, "", "```", table, "```", ""]


def reduction_paths(device: torch.device, out: list[str]) -> None:
    out.append("## BN+SiLU forward+backward by reduction, bfloat16 under autocast\n")
    if device.type != "cuda":
        out += ["Needs a GPU: the CPU path runs neither reduction.", ""]
        return
    from rtdetr_fused.kernels import bn_act as K

    out += [
        "| map | per channel | reduction | device us (CUDA graph) | back to back us |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    default = K.CHANNEL_PROGRAM_MAX
    try:
        for shape in PATH_MAPS:
            for name, limit in (("per channel", 1 << 40), ("split", 0)):
                K.CHANNEL_PROGRAM_MAX = limit
                module = Autocast(CASES["bn+silu"]["ours"](shape[1]), torch.bfloat16).to(device).train()
                step = _step(module, shape, torch.bfloat16, device)
                graph_us = bench_ms(step, device, 25.0, 100.0, graph=True) * 1e3
                wall_us = back_to_back_ms(step, device, 25.0, 100.0) * 1e3
                size, per = "x".join(map(str, shape)), shape[0] * shape[2] * shape[3]
                out.append(f"| {size} | {per} | {name} | {graph_us:.1f} | {wall_us:.1f} |")
    finally:
        K.CHANNEL_PROGRAM_MAX = default
    out.append("")


def step_host(device: torch.device, out: list[str]) -> None:
    size = "x".join(map(str, host.MODEL_INPUT))
    out.append(f"## YOLO11n forward+backward on {size}, side by side{_route_note(device)}\n")
    try:
        group = host.model_group()
        out += [*_host_table(device, [group], rounds=9, batch_ms=100.0), ""]
    except Unavailable as e:
        out += [f"Skipped: {e}", ""]


def _table(prof: torch.profiler.profile) -> str:
    averages = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total", "self_cpu_time_total"):
        try:
            return averages.table(sort_by=key, row_limit=14, max_name_column_width=60)
        except (AttributeError, KeyError, ValueError):
            continue
    return averages.table(row_limit=14)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the report here (default: print it)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = [f"# Profile of ours on {torch.cuda.get_device_name() if device.type == 'cuda' else 'the CPU'}", ""]
    if device.type == "cpu":
        out += [
            "No GPU: the host parts run our kernels' route with Triton's launches stubbed; the kernels part "
            "profiles the CPU path (PyTorch's ops behind ours); kernel times need a GPU.",
            "",
        ]
    maps = GPU_MAPS if device.type == "cuda" else CPU_MAPS
    for part in (host_cost, python_functions, lambda d, o: kernels(d, o, maps), reduction_paths, step_host):
        try:
            part(device, out)
        except Exception as e:  # one part failing must not cost the others
            out += [f"(a part failed: {type(e).__name__}: {e})", ""]
        if args.out:  # after each part: a run stopped at its time limit keeps what it measured
            args.out.write_text("\n".join(out) + "\n")
    if not args.out:
        print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
