"""Launch a ``@triton.jit`` kernel with less host work than ``kernel[grid](...)``.

``JITFunction.run`` costs the host about 5 us per launch before the driver call (device and
stream look-ups, pre-run hooks, the binder, a string cache key, the used-globals check, launch
metadata and two launch-hook chains), which on small maps is more than the kernel. A ``Launch``
is one launch with everything but its tensors and floats decided: kernel, grid, integer
arguments and constexprs, built once per map by the launch functions' caches. Called with the
tensors, it looks up the compiled kernel by what Triton's binder specializes them on (dtype and
16-byte alignment; the integers, fixed, are part of the ``Launch``, floats are always fp32) and
calls its launcher directly, with no launch metadata and no hooks. The first call of each
specialization goes through Triton's own path, which compiles; the cache keeps the
``CompiledKernel`` itself: from triton 3.8 its module is unloaded when it is collected.

Triton's own path runs whenever something could make it differ: under the interpreter, while
launch hooks are set (profilers), with pre-run hooks, the debug or instrumentation knobs, or an
asynchronous compile, and under torch.compile tracing.
"""

import weakref
from collections.abc import Sequence

import torch
from triton import knobs
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

NUM_WARPS = 8
"""Warps of every kernel (kernels/SM90_REPORT.md: 128-bit loads, no spills, at 8 warps)."""

_holding: weakref.WeakSet["Launch"] = weakref.WeakSet()
"""Launches that hold compiled kernels, for ``clear``. Each holds its own, so a ``Launch`` the
launch functions' caches evict (past 4096 map shapes) takes its entries with it."""
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


def specs(tensors: tuple[torch.Tensor, ...]) -> tuple:
    """What Triton's binder specializes tensors on: dtype and 16-byte alignment
    (``tests/test_host.py`` checks the decisions against Triton's own)."""
    return tuple([(t.dtype, not t.data_ptr() % 16) for t in tensors])


class Launch:
    """``kernel[grid](*tensors, *floats, *ints, **constexprs, num_warps=NUM_WARPS)``, the kernel's
    parameters in that order: tensors, float scalars, integers, constexprs. Everything but the
    tensors and floats is fixed here; calling it with them launches."""

    __slots__ = ("kernel", "grid", "ints", "constexprs", "_grid3", "_direct", "_compiled", "__weakref__")

    def __init__(self, kernel: JITFunction, grid: Sequence[int], ints: tuple[int, ...] = (), **constexprs) -> None:
        self.kernel, self.grid, self.ints, self.constexprs = kernel, tuple(grid), tuple(ints), constexprs
        self._grid3 = (*grid, 1, 1)[:3]
        self._direct = isinstance(kernel, JITFunction)  # not the interpreter's
        # (device, tensors' specs) -> (CompiledKernel, its launcher, function, metadata, the
        # integers and constexprs in the kernel's order)
        self._compiled: dict[tuple, tuple] = {}

    def __call__(self, tensors: tuple[torch.Tensor, ...], floats: tuple[float, ...] = ()) -> None:
        kernel = self.kernel
        if not self._direct or kernel.pre_run_hooks or _triton_path():
            kernel[self.grid](*tensors, *floats, *self.ints, **self.constexprs, num_warps=NUM_WARPS)
            return
        active = driver.active
        device = active.get_current_device()
        key = (device, *specs(tensors))
        entry = self._compiled.get(key)
        if entry is not None:
            _, run, function, metadata, tail = entry
            run(*self._grid3, active.get_current_stream(device), function, metadata, None, None, None, *tensors,
                *floats, *tail)  # fmt: skip
            return
        _launched.add(kernel)
        compiled = kernel[self.grid](*tensors, *floats, *self.ints, **self.constexprs, num_warps=NUM_WARPS)
        if compiled is None or not hasattr(compiled, "packed_metadata"):  # an asynchronous compile: not yet
            return
        order = [p.name for p in kernel.params if p.is_constexpr]
        if sorted(order) == sorted(self.constexprs):  # every constexpr given: the launcher takes them in order
            tail = (*self.ints, *(self.constexprs[name] for name in order))
            self._compiled[key] = (compiled, compiled.run, compiled.function, compiled.packed_metadata, tail)
            _holding.add(self)


def specialization(kernel: JITFunction, *args, **constexprs) -> tuple:
    """Triton's specialization of these arguments on the current device (after the kernel's first
    launch there), by its binder: what ``specs`` and a ``Launch``'s integers must tell apart."""
    device = driver.active.get_current_device()
    return tuple(kernel.device_caches[device][4](*args, **constexprs)[1])


def clear() -> None:
    """Forget every compiled kernel a ``Launch`` has seen: its cache and Triton's (a stubbed
    driver's kernels must not outlive it)."""
    for held in list(_holding):
        held._compiled.clear()
    _holding.clear()
    for kernel in _launched:
        kernel.device_caches.clear()
    _launched.clear()
