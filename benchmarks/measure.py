"""Timers and memory probes: CUDA events through Triton's do_bench on a GPU, and the same
questions answered with wall clocks on the CPU (reported as CPU figures)."""

import math
import statistics
import weakref
from collections.abc import Callable, Sequence
from time import perf_counter

import torch

# Inputs rotate through at least this many bytes so a small shape is not timed out of cache:
# several times an H200's 60 MB L2 on a GPU; on the CPU, whose figures compare dispatch
# paths, enough to leave a core's caches. The pool never holds more than MAX_POOL inputs.
ROTATE_BYTES = {"cuda": 256 * 2**20, "cpu": 16 * 2**20}
MAX_POOL = 64


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_ms(
    fn: Callable[[], object], device: torch.device, warmup_ms: float, rep_ms: float, graph: bool = False
) -> float:
    """Median milliseconds per call, warm-up excluded.

    CUDA: ``triton.testing.do_bench`` (CUDA events around each call, L2 flushed before each),
    which counts the host's time too when it is slower than the kernels; with ``graph``,
    ``do_bench_cudagraph`` (calls captured in a CUDA graph and replayed: device time alone).
    CPU: ``perf_counter`` around each call, at least 10 calls.
    """
    if device.type == "cuda":
        from triton.testing import do_bench, do_bench_cudagraph

        if graph:
            return float(do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    fn()
    end = perf_counter() + warmup_ms / 1e3
    while perf_counter() < end:
        fn()
    times: list[float] = []
    end = perf_counter() + rep_ms / 1e3
    while perf_counter() < end or len(times) < 10:
        start = perf_counter()
        fn()
        times.append(perf_counter() - start)
    return statistics.median(times) * 1e3


def pool_size(tensor_bytes: int, device: torch.device) -> int:
    """How many inputs to rotate through for a tensor of ``tensor_bytes``: at least two."""
    return max(2, min(MAX_POOL, math.ceil(ROTATE_BYTES[device.type] / max(tensor_bytes, 1))))


def copy_bandwidth(device: torch.device, nbytes: int, warmup_ms: float, rep_ms: float) -> dict:
    """The roofline: a device-to-device copy of ``nbytes``, counting bytes read plus written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), device, warmup_ms, rep_ms)
    moved = 2 * src.numel() * src.element_size()
    return {"copy_bytes": moved, "copy_ms": ms, "copy_GBps": moved / ms / 1e6}


def back_to_back_ms(
    fn: Callable[[], object], device: torch.device, warmup_ms: float, rep_ms: float, batches: int = 5
) -> float:
    """Milliseconds per call over batches of back-to-back calls, synchronised only at the ends
    of a batch: no cache flush hides the host, so when the host is slower than the kernels
    (small tensors) its cost is what is timed, as in a training step. Median of ``batches``
    batches of at least 3 calls."""
    fn()
    sync(device)
    start = perf_counter()
    fn()
    sync(device)
    calls = max(3, int(rep_ms / 1e3 / batches / max(perf_counter() - start, 1e-7)))
    end = perf_counter() + warmup_ms / 1e3
    while perf_counter() < end:
        fn()
    times = []
    for _ in range(batches):
        sync(device)
        start = perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        times.append((perf_counter() - start) / calls)
    return statistics.median(times) * 1e3


class SavedTensors:
    """Unique storages autograd saves for backward, seen through ``saved_tensors_hooks``: the
    memory a training step keeps alive from forward to backward.

    Storages are keyed by data pointer, so views and tensors shared between ops (an output
    saved by the activation and again as the next conv's input) count once. Storages of
    ``exclude`` (parameters, buffers, a block's input) are not counted, nor those whose saved
    tensors are gone when the ``with`` ends (a graph branch freed during forward): counting them
    would add memory no longer held, and a later storage at the same address would be merged
    with them, by chance. So the forward's output must be alive when the ``with`` ends.
    """

    def __init__(self, exclude: Sequence[torch.Tensor] = ()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._packed: list[tuple[weakref.ref, object]] = []
        self.storages: dict[int, int] = {}
        """Data pointer -> bytes of each storage still saved when the ``with`` ends."""
        self.tags: dict[int, object] = {}
        """Data pointer -> ``_tag()`` when the storage was first saved."""
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _tag(self) -> object:
        """What to remember about a tensor as it is saved: nothing here; a subclass may say who saved it."""
        return None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        # Detached: ``t`` itself, when its own node saves it, would hold that node (its grad_fn),
        # a cycle through C++ that Python's collector never frees: each measured graph leaked
        # (1 GB per RT-DETR-l forward at 640x640). Backward gets the same values either way.
        t = t.detach()
        ptr = t.untyped_storage().data_ptr()
        if ptr and ptr not in self._exclude:
            self._packed.append((weakref.ref(t), self._tag()))
        return t

    def __enter__(self) -> "SavedTensors":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        for ref, tag in self._packed:
            if (t := ref()) is not None:
                storage = t.untyped_storage()
                self.storages.setdefault(storage.data_ptr(), storage.nbytes())
                self.tags.setdefault(storage.data_ptr(), tag)
        self._packed.clear()

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())

    @property
    def count(self) -> int:
        return len(self.storages)

    def which(self, **named: torch.Tensor) -> str:
        """Which of the named tensors are saved, e.g. ``"input"``, ``"output+1 other"``."""
        ptrs = {name: t.untyped_storage().data_ptr() for name, t in named.items()}
        parts = [name for name, ptr in ptrs.items() if ptr in self.storages]
        others = len(set(self.storages) - set(ptrs.values()))
        if others:
            parts.append(f"{others} other")
        return "+".join(parts) or "nothing"


class Peak:
    """Peak bytes allocated inside the ``with`` above what was allocated before it. CUDA only:
    ``value`` stays None on the CPU, which keeps no allocator statistics."""

    def __init__(self, device: torch.device):
        self.device = device
        self.value: int | None = None
        self._base = 0

    def __enter__(self) -> "Peak":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda" and exc[0] is None:
            torch.cuda.synchronize(self.device)
            self.value = torch.cuda.max_memory_allocated(self.device) - self._base


def release(device: torch.device) -> None:
    """Give cached blocks back between large cases so the next case's peak starts clean."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
