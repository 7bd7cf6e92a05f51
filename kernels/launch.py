"""Launch a ``@triton.jit`` kernel with less host work than ``kernel[grid](...)``.

``JITFunction.run`` costs the host about 5 us per launch before the driver call (device and
stream look-ups, pre-run hooks, the binder, a string cache key, the used-globals check, launch
metadata and two launch-hook chains), which on small maps is more than the kernel. After a
kernel's first launch through that path, ``launch`` keeps the compiled kernel under Triton's own
specialization of the arguments (its binder: dtypes, 16-byte alignment of each pointer,
integers equal to 1 or divisible by 16, 32- or 64-bit integers, constexpr values) and calls the
compiled kernel's launcher directly, with no launch metadata and no hooks; the specialization is
decided here (``_key``), as Triton's binder would, without running it. The cache holds the
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
"""``_key`` -> (CompiledKernel, its launcher, function, metadata, the constexprs' names in the
kernel's order where the call gives them in another)."""
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
    constexprs by keyword, in the kernel's order."""
    if not isinstance(kernel, JITFunction) or kernel.pre_run_hooks or _triton_path():
        kernel[grid](*args, **constexprs, num_warps=NUM_WARPS)  # interpreter, hooks: Triton's path
        return
    active = driver.active
    device = active.get_current_device()
    key = _key(kernel, device, args, constexprs)
    entry = _compiled.get(key) if key is not None else None
    if entry is not None:
        _, run, function, metadata, order = entry
        values = constexprs.values() if order is None else [constexprs[name] for name in order]
        g = (*grid, 1, 1)
        run(g[0], g[1], g[2], active.get_current_stream(device), function, metadata, None, None, None,
            *args, *values)  # fmt: skip
        return
    _launched.add(kernel)
    compiled = kernel[grid](*args, **constexprs, num_warps=NUM_WARPS)  # compiles on first use
    if compiled is None or not hasattr(compiled, "packed_metadata"):  # an asynchronous compile: not yet
        return
    order = [p.name for p in kernel.params[len(args) :]]
    if key is not None and sorted(constexprs) == sorted(order):  # every parameter given
        # The launcher takes every argument in the kernel's order: the constexprs as given, or sorted.
        order = None if list(constexprs) == order else order
        _compiled[key] = (compiled, compiled.run, compiled.function, compiled.packed_metadata, order)


_I32 = range(-(2**31), 2**31)


def _key(kernel: JITFunction, device: int, args: tuple, constexprs: dict) -> tuple | None:
    """The cache key: what Triton's binder specializes each positional argument on, decided here
    at least as finely and in less time (0.2 us an argument against its 0.3, with no key to build
    after), and the constexprs' names and values, a JITFunction (a formula) by its id: hashing one
    takes a lock in Triton's ``cache_key``. None for an argument of another type: Triton's path.

    Tensors: dtype and 16-byte alignment; integers: equal to 1, divisible by 16, 32-bit or wider
    (``tests/test_host.py`` checks the decisions against Triton's own); floats are fp32; None and
    bools as they are."""
    key = [id(kernel), device]
    for v in args:
        if isinstance(v, torch.Tensor):
            key.append((v.dtype, v.data_ptr() % 16 == 0))
        elif type(v) is int:
            key.append((v == 1, v % 16 == 0, v in _I32, v >= 2**63))
        elif type(v) is float:
            key.append(float)
        elif v is None or type(v) is bool:
            key.append((v,))
        else:
            return None
    key.append(tuple(constexprs))  # their names: two call sites may order them differently
    for v in constexprs.values():
        key.append(id(v) if isinstance(v, JITFunction) else v)
    return tuple(key)


def specialization(kernel: JITFunction, *args, **constexprs) -> tuple:
    """Triton's specialization of these arguments on the current device (after the kernel's first
    launch there), by its binder: what ``_key`` must tell apart."""
    device = driver.active.get_current_device()
    return tuple(kernel.device_caches[device][4](*args, **constexprs)[1])


def clear() -> None:
    """Forget every compiled kernel ``launch`` has seen: its cache and Triton's (a stubbed
    driver's kernels must not outlive it)."""
    _compiled.clear()
    for kernel in _launched:
        kernel.device_caches.clear()
    _launched.clear()
