"""Launch a ``@triton.jit`` kernel with less host work than ``kernel[grid](...)``.

``JITFunction.run`` costs the host about 5 us per launch before the driver call (device and
stream look-ups, pre-run hooks, the binder, a string cache key, the used-globals check, launch
metadata and two launch-hook chains), which on small maps is more than the kernel. After a
kernel's first launch through that path, ``launch`` keeps the compiled kernel under Triton's own
specialization of the arguments (its binder: dtypes, 16-byte alignment of each pointer,
integers equal to 1 or divisible by 16, 32- or 64-bit integers, constexpr values) and calls the
compiled kernel's launcher directly, with no launch metadata and no hooks. The cache holds the
``CompiledKernel`` itself: from triton 3.8 its module is unloaded when it is collected.

Triton's own path runs whenever something could make it differ: under the interpreter, while
launch hooks are set (profilers), with pre-run hooks, the debug or instrumentation knobs, or an
asynchronous compile, and under torch.compile tracing.
"""

from collections.abc import Sequence

import torch
from triton import knobs
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

NUM_WARPS = 8
"""Warps of every kernel (kernels/SM90_REPORT.md: 128-bit loads, no spills, at 8 warps)."""

_compiled: dict[tuple, tuple] = {}
"""(id of the kernel, device, specialization) -> (CompiledKernel, its launcher, function, metadata);
the kernel by ``id``: hashing a JITFunction takes a lock."""
_launched: set[JITFunction] = set()


def _triton_path() -> bool:
    """True when something only Triton's own launch path honours is set."""
    runtime = knobs.runtime
    enter = runtime.launch_enter_hook
    return (
        (enter is not None and getattr(enter, "calls", True))
        or runtime.debug
        or runtime.add_stages_inspection_hook is not None
        or bool(knobs.compilation.instrumentation_mode)
        or torch.compiler.is_compiling()
    )


def launch(kernel: JITFunction, grid: Sequence[int], *args, **constexprs) -> None:
    """``kernel[grid](*args, **constexprs, num_warps=NUM_WARPS)``, through the cached compiled
    kernel when Triton would pick the same one. ``args`` are given by position and the
    constexprs by keyword."""
    if not isinstance(kernel, JITFunction) or kernel.pre_run_hooks or _triton_path():
        kernel[grid](*args, **constexprs, num_warps=NUM_WARPS)  # interpreter, hooks: Triton's path
        return
    active = driver.active
    device = active.get_current_device()
    binder = kernel.device_caches[device][4] if device in kernel.device_caches else None
    if binder is not None:
        bound, specialization, _ = binder(*args, **constexprs)
        entry = _compiled.get(_key(kernel, device, specialization, len(args), constexprs))
        if entry is not None:
            _, run, function, metadata = entry
            g = (*grid, 1, 1)
            run(g[0], g[1], g[2], active.get_current_stream(device), function, metadata, None, None, None,
                *bound.values())  # fmt: skip
            return
    _launched.add(kernel)
    compiled = kernel[grid](*args, **constexprs, num_warps=NUM_WARPS)  # compiles on first use
    if compiled is None or not hasattr(compiled, "packed_metadata"):  # an asynchronous compile: not yet
        return
    if not constexprs.keys() <= {p.name for p in kernel.params if p.is_constexpr}:
        return  # a runtime argument by keyword: Triton's path every time (see _key)
    specialization = kernel.device_caches[device][4](*args, **constexprs)[1]
    key = _key(kernel, device, specialization, len(args), constexprs)
    _compiled[key] = (compiled, compiled.run, compiled.function, compiled.packed_metadata)


def _key(kernel: JITFunction, device: int, specialization: list, positional: int, constexprs: dict) -> tuple:
    """The cache key: Triton's specialization of the positional arguments and the constexprs'
    values, each JITFunction (a formula) by its id: hashing one takes a lock in Triton's
    ``cache_key`` (3 us per launch in a YOLO11n step)."""
    values = [id(v) if isinstance(v, JITFunction) else v for v in constexprs.values()]
    return (id(kernel), device, *specialization[:positional], *values)


def specialization(kernel: JITFunction, *args, **constexprs) -> tuple:
    """Triton's specialization of these arguments on the current device (after the kernel's first
    launch there): ``launch``'s cache key holds it for the positional arguments, and the
    constexprs' values."""
    device = driver.active.get_current_device()
    return tuple(kernel.device_caches[device][4](*args, **constexprs)[1])


def clear() -> None:
    """Forget every compiled kernel ``launch`` has seen: its cache and Triton's (a stubbed
    driver's kernels must not outlive it)."""
    _compiled.clear()
    for kernel in _launched:
        kernel.device_caches.clear()
    _launched.clear()
