"""Measure the host's cost of our ops without a GPU.

``stub_launches()`` makes CPU tensors take the GPU route of every op, with Triton's driver
replaced by a stub: a kernel's first launch "compiles" to a recorder, and every later step runs
as it would on a GPU (argument binding, specialization, the launch cache, allocations, autograd)
up to the driver call, which records the launch instead of making it. What a forward+backward
then costs is the Python and PyTorch work a GPU's host would do, without the kernels.
"""

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

from .ops import common


class Launch(NamedTuple):
    """One recorded launch: the kernel's name, its grid and its arguments by parameter name
    (constexprs included)."""

    kernel: str
    grid: tuple[int, int, int]
    args: dict[str, Any]


class Launches(list):
    """The launches recorded so far. Set ``recording`` to False while timing: a record holds its
    arguments, tensors included, alive."""

    recording = True


@contextlib.contextmanager
def stub_launches() -> Iterator[Launches]:
    """CPU tensors take our kernels' route, launches are recorded and not made; yields the list
    of launches, appended to as they happen. Needs the kernels compiled for a GPU, not the
    interpreter: import ``rtdetr_fused`` without ``TRITON_INTERPRET=1``."""
    import triton.compiler
    import triton.language
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    from .kernels import launch, pointwise

    if not all(isinstance(f, JITFunction) for f in (pointwise._forward_kernel, triton.language.standard.sigmoid)):
        # Triton's own library, too, is interpreted when triton was imported under the interpreter.
        raise RuntimeError("stub_launches needs kernels compiled for a GPU: unset TRITON_INTERPRET before import")
    launches = Launches()

    class Driver:
        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", 90, 32)

        def get_current_device(self) -> int:
            return 0

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

    class Compiled:
        """What a compile returns: a launcher that records."""

        function, packed_metadata = None, None

        def __init__(self, src, target=None, options=None, **_):
            self.fn = src.fn

        def launch_metadata(self, *_):
            return None

        def run(self, gx, gy, gz, stream, function, metadata, launch_metadata, enter, exit, *args):
            if launches.recording:
                launches.append(Launch(self.fn.__name__, (gx, gy, gz), dict(zip(self.fn.arg_names, args))))

    compile_, stubbed, previous = triton.compiler.compile, common.STUBBED, driver._active
    launch.clear()
    driver.set_active(Driver())
    triton.compiler.compile, common.STUBBED = Compiled, True
    # Outputs of stubbed launches are never written: their garbage may hold denormals, on which
    # the CPU's own math (a model's convolutions) runs many times slower.
    torch.set_flush_denormal(True)
    try:
        yield launches
    finally:
        torch.set_flush_denormal(False)
        triton.compiler.compile, common.STUBBED = compile_, stubbed
        driver.set_active(previous)
        launch.clear()
