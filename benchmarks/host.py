"""The host's cost of ours against torch.nn: microseconds, Python calls and kernel launches per
forward+backward of small maps, a Conv-BN-SiLU block and YOLO11n on a 64x64 image, where the
host, not the device, sets the pace of a step.

On a GPU the calls run for real. On the CPU they run under ``rtdetr_fused.testing.stub_launches``:
CPU tensors take our kernels' route, and Triton's driver records each launch instead of making
it, so what is timed is the host's work a GPU would see (Python, autograd, binding, the launch
cache, allocations). Each comparison times ours and torch.nn in the same run, interleaved round
by round, and reports the median of the rounds' ratios: the ratio, not the absolute time, is
the figure, on a machine that other work may share (benchmarks/METHOD.md, "Host cost").
"""

import contextlib
import copy
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from time import perf_counter, thread_time

import torch
from torch import nn

from rtdetr_fused.bn_act import BatchNormAct2d
from rtdetr_fused.ops import policy as ops_policy
from rtdetr_fused.testing import Launches, stub_launches

from . import models
from .core import Context, describe, status_of
from .measure import sync
from .providers import ACTIVATION_TABLE

Step = Callable[[], object]
MODEL = "yolo11n"
MODEL_INPUT = (1, 3, 64, 64)
TARGETS = {
    "activation": 2.0,
    "bn_act train": 1.1,
    "bn_act eval": 1.0,
    "block": 1.05,  # fuse_bn=True and "recompute" alike
    "model fuse_bn": 1.05,
    "model recompute": 1.10,
}
"""Ours / torch.nn host time per forward+backward at most: the issue's targets."""
STUBBED = "launches stubbed"


@dataclass
class Group:
    """Steps measured side by side in one run: torch.nn's and one or more of ours, each of ours
    a row against torch.nn. Builders run inside the measurement (under the stub on the CPU)."""

    kind: str
    activation: str
    shape: tuple[int, ...]
    torch_nn: Callable[[torch.device], Step]
    ours: dict[str, tuple[Callable[[torch.device], Step], float | None]]
    """variant -> (builder, target ratio or None)"""
    native: bool = False
    """Run with ``policy``'s default (PyTorch's op on small maps, what a user gets); False: our
    kernels' route (``policy.NATIVE_BELOW = 0``)."""


def _grad_step(module: nn.Module, shape: tuple[int, ...], device: torch.device, clone: bool = False) -> Step:
    """``torch.autograd.grad`` of ``module`` on the input and its parameters; ``clone``: on a
    copy of the input (a non-leaf, for in-place calls)."""
    module.to(device)
    x = torch.randn(shape, device=device, requires_grad=True)
    g, inputs = torch.randn_like(x), [x, *module.parameters()]
    if clone:
        return lambda: torch.autograd.grad(module(x.clone()), inputs, g)
    return lambda: torch.autograd.grad(module(x), inputs, g)


def activation_group(name: str, shape: tuple[int, ...], native: bool = False, variant: str = "") -> Group:
    """One activation on ``shape``: ``variant`` "" (out of place), "bitmask" or "inplace"."""
    act, channels = ACTIVATION_TABLE[name], shape[1]
    kwargs = {"bitmask": {"bitmask": True}, "inplace": {"inplace": True}}.get(variant, {})
    clone = variant == "inplace"

    def ours(device: torch.device) -> Step:
        return _grad_step(act.fused_class(**act.module_kwargs(channels), **kwargs), shape, device, clone)

    def torch_nn(device: torch.device) -> Step:
        inplace = {"inplace": True} if clone else {}
        return _grad_step(act.torch_class(**act.module_kwargs(channels), **inplace), shape, device, clone)

    target = None if native else TARGETS["activation"]
    return Group("activation", name, shape, torch_nn, {variant or "-": (ours, target)}, native)


def bn_act_group(name: str, shape: tuple[int, ...], training: bool) -> Group:
    """``BatchNormAct2d(C, act=name)`` against ``nn.BatchNorm2d`` then torch.nn's activation."""
    act, channels, mode = ACTIVATION_TABLE[name], shape[1], "train" if training else "eval"

    def ours(device: torch.device) -> Step:
        module = BatchNormAct2d(channels, act=name, **act.module_kwargs(channels)).train(training)
        return _grad_step(module, shape, device)

    def torch_nn(device: torch.device) -> Step:
        pair = nn.Sequential(nn.BatchNorm2d(channels), act.torch_module(channels))
        return _grad_step(pair.train(training), shape, device)

    return Group("bn_act", name, shape, torch_nn, {mode: (ours, TARGETS[f"bn_act {mode}"])})


def block_group(shape: tuple[int, ...]) -> Group:
    """Ultralytics' ``Conv`` (Conv2d 3x3 -> BatchNorm2d -> SiLU), as is and through
    ``fuse_bn_act`` without and with ``recompute``."""

    def build(recompute: bool | None) -> Callable[[torch.device], Step]:
        def make(device: torch.device) -> Step:
            from ultralytics.nn.modules.conv import Conv

            from rtdetr_fused.integrations.fuse_bn import fuse_bn_act

            block = Conv(shape[1], shape[1], 3).train()
            if recompute is not None:
                fuse_bn_act(block, recompute=recompute)
            return _grad_step(block, shape, device)

        return make

    ours = {"fuse_bn": (build(False), TARGETS["block"]), "recompute": (build(True), TARGETS["block"])}
    return Group("block", "silu", shape, build(None), ours, native=True)


def model_group() -> Group:
    """YOLO11n's training forward+backward on a 64x64 image: stock (torch.nn), and with
    ``replace_activations(..., fuse_bn=True)`` and ``fuse_bn="recompute"``, each a copy of one
    model built on first use."""
    built: list[nn.Module] = []

    def build(fuse_bn: bool | str | None) -> Callable[[torch.device], Step]:
        def make(device: torch.device) -> Step:
            if not built:
                built.append(models.build(MODEL))
            model = copy.deepcopy(built[0])
            if fuse_bn is not None:
                models.replacer()(model, "silu", targets="all", fuse_bn=fuse_bn)
            model.to(device).train()
            x, params = torch.randn(MODEL_INPUT, device=device), [p for p in model.parameters() if p.requires_grad]

            def step() -> None:
                outputs = model(x)
                loss = sum(t.sum() for t in outputs.values() if isinstance(t, torch.Tensor))
                torch.autograd.grad(loss, params, allow_unused=True)

            return step

        return make

    ours = {
        v: (build(fuse_bn), TARGETS[f"model {v}"]) for v, fuse_bn in (("fuse_bn", True), ("recompute", "recompute"))
    }
    return Group("model", "silu", MODEL_INPUT, build(None), ours, native=True)


class _ProfileBackward(torch.autograd.Function):
    """Identity whose backward sets ``hook`` as the profile function of the thread running it:
    on a GPU, autograd's device thread, where our backward's Python runs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, hook: Callable | None) -> torch.Tensor:
        ctx.hook = hook
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        sys.setprofile(ctx.hook)
        return grad, None


def _profile_backward_thread(hook: Callable | None, device: torch.device) -> None:
    if device.type == "cuda":
        x = torch.zeros(1, device=device, requires_grad=True)
        _ProfileBackward.apply(x, hook).sum().backward()


def python_calls(step: Step, device: torch.device) -> int:
    """Python function calls (``sys.setprofile``'s 'call' events) of one ``step``, in this thread
    and, on a GPU, in autograd's device thread."""
    count = 0

    def hook(frame, event: str, arg) -> None:
        nonlocal count
        count += event == "call"

    _profile_backward_thread(hook, device)
    sys.setprofile(hook)
    try:
        count = 0
        step()
        sync(device)
        calls = count
    finally:
        sys.setprofile(None)
        _profile_backward_thread(None, device)
    return calls


def launches_of(step: Step, device: torch.device, launches: Launches | None) -> int:
    """Kernel launches of one ``step``: recorded by the stub on the CPU (ours' Triton launches),
    CUDA kernels seen by torch.profiler on a GPU (memory copies and sets excluded)."""
    if launches is not None:
        launches.clear()
        launches.recording = True
        try:
            step()
            return len(launches)
        finally:
            launches.recording = False
            launches.clear()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        sync(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(not e.name.startswith(("Memcpy", "Memset")) for e in kernels)


def _count_launches(
    steps: dict[str, Step], device: torch.device, launches: Launches | None
) -> tuple[dict[str, int | None], str]:
    """``launches_of`` each step, and how they were counted. A profiler that fails on a GPU
    costs the counts, not the row."""
    if launches is not None:
        return {name: launches_of(step, device, launches) for name, step in steps.items()}, "stub_launches"
    try:
        return {name: launches_of(step, device, None) for name, step in steps.items()}, "torch.profiler"
    except Exception as e:
        return dict.fromkeys(steps), f"not counted ({describe(e)})"


def interleaved_us(
    steps: dict[str, Step], device: torch.device, rounds: int, batch_ms: float, warmup_ms: float
) -> dict[str, list[float]]:
    """Microseconds per call of each step in each of ``rounds`` rounds: a round times a batch of
    back-to-back calls (about ``batch_ms``, synchronised at its end) of every step in turn, the
    order reversed every other round, so load on the machine falls on all of them alike. On a
    GPU the wall clock; on the CPU this thread's CPU time (all the work is in it: the stub's
    ops, autograd, one torch thread), which time given to other processes does not inflate."""
    clock = perf_counter if device.type == "cuda" else thread_time
    calls = {}
    for name, step in steps.items():
        step()
        sync(device)
        start, n = clock(), 0
        while n < 2 or clock() - start < warmup_ms / 1e3:
            step()
            n += 1
        sync(device)
        calls[name] = max(1, round(batch_ms / 1e3 / max((clock() - start) / n, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for i in range(rounds):
        for name in order if i % 2 == 0 else order[::-1]:
            step, n = steps[name], calls[name]
            sync(device)
            start = clock()
            for _ in range(n):
                step()
            sync(device)
            times[name].append((clock() - start) / n * 1e6)
    return times


@contextlib.contextmanager
def policy(native: bool) -> Iterator[None]:
    """``policy.NATIVE_BELOW`` at its default (``native``: PyTorch's op on small maps, what a user
    gets) or 0 (our kernels' route)."""
    default = ops_policy.NATIVE_BELOW
    ops_policy.NATIVE_BELOW = default if native else 0
    try:
        yield
    finally:
        ops_policy.NATIVE_BELOW = default


@contextlib.contextmanager
def kernels_route(device: torch.device) -> Iterator[Launches | None]:
    """Our kernels' route on ``device``: as is on a GPU (yields None), under ``stub_launches`` on
    the CPU (yields its launches, not recording) with one torch thread. Raises where kernels are
    interpreted (``TRITON_INTERPRET=1`` when ``rtdetr_fused``'s kernels were imported)."""
    if device.type == "cuda":
        yield None
        return
    # Stubbed ops allocate and never write their outputs: flush denormals, so the CPU's ops
    # that read them (the convs of a block or model) run at their usual speed.
    threads = torch.get_num_threads()
    with stub_launches() as launches:
        flush = torch.set_flush_denormal(True)
        torch.set_num_threads(1)
        launches.recording = False
        try:
            yield launches
        finally:
            torch.set_num_threads(threads)
            if flush:
                torch.set_flush_denormal(False)


def measure_group(
    group: Group, device: torch.device, launches: Launches | None, rounds: int, batch_ms: float, warmup_ms: float
) -> list[dict]:
    """One row per variant of ours in ``group``, measured with torch.nn's step in one run."""
    names = {"torch.nn": group.torch_nn, **{v: build for v, (build, _) in group.ours.items()}}
    with policy(group.native):
        steps = {name: build(device) for name, build in names.items()}
        us = interleaved_us(steps, device, rounds, batch_ms, warmup_ms)
        calls = {name: python_calls(step, device) for name, step in steps.items()}
        counted, counter = _count_launches(steps, device, launches)
    base = dict(kind=group.kind, activation=group.activation, shape="x".join(map(str, group.shape)))
    rows = []
    for variant, (_, target) in group.ours.items():
        # The median of the rounds' ratios: each pairs two batches timed next to each other.
        ratio = statistics.median(o / t for o, t in zip(us[variant], us["torch.nn"]))
        # The stub records our Triton launches only; torch.nn's native ops launch nothing there.
        torch_launches = None if launches is not None else counted["torch.nn"]
        rows.append(
            dict(
                base,
                variant=variant,
                policy=_policy(group),
                ours_us=statistics.median(us[variant]),
                torch_us=statistics.median(us["torch.nn"]),
                ratio_x=ratio,
                target_x=target,
                met=None if target is None else ratio <= target,
                ours_calls=calls[variant],
                torch_calls=calls["torch.nn"],
                ours_launches=counted[variant],
                torch_launches=torch_launches,
                launches_by=counter,
            )
        )
    return rows


def _policy(group: Group) -> str:
    return "on" if group.native else "off"


def groups(activations: tuple[str, ...], shape: tuple[int, ...]) -> Iterator[Group]:
    """What the section compares, cheapest first: each activation on our kernels' route, the
    bitmask ReLU and an in-place ReLU6, BatchNormAct2d in train and eval mode, each activation
    with the policy's default, then the Conv block and YOLO11n."""
    for name in activations:
        yield activation_group(name, shape)
    if "relu" in activations:
        yield activation_group("relu", shape, variant="bitmask")
    if "relu6" in activations:
        yield activation_group("relu6", shape, variant="inplace")
    for name in activations:
        for training in (True, False):
            yield bn_act_group(name, shape, training)
    for name in activations:
        yield activation_group(name, shape, native=True)
    yield block_group(shape)
    yield model_group()


def _not_measured(group: Group, status: str, error: str) -> list[dict]:
    base = dict(kind=group.kind, activation=group.activation, shape="x".join(map(str, group.shape)))
    return [dict(base, variant=v, policy=_policy(group), status=status, error=error) for v in group.ours]


def run_host(ctx: Context) -> None:
    """Host microseconds, Python calls and launches per forward+backward, ours against torch.nn,
    side by side (see the module's docstring); on the CPU with launches stubbed."""
    plan = ctx.plan
    batch_ms = plan.rep_ms / plan.host_rounds
    ctx.results.meta["host"] = {
        "launches": "real" if ctx.cuda else STUBBED,
        "rounds": plan.host_rounds,
        "batch_ms": batch_ms,
        "policy": ops_policy.describe(),
    }
    todo = list(groups(plan.activations, plan.host_shape))
    title = f"host: host cost per forward+backward{'' if ctx.cuda else ', ' + STUBBED}"
    with ctx.task(title, len(todo)) as advance, contextlib.ExitStack() as route:
        try:
            launches = route.enter_context(kernels_route(ctx.device))
        except Exception as e:  # kernels interpreted: every row says so
            for group in todo:
                for row in _not_measured(group, "error", describe(e)):
                    ctx.add("host", **row)
            return
        for group in todo:
            if ctx.out_of_time():
                rows = _not_measured(group, "skipped", ctx.budget_reason)
            else:
                try:
                    rows = measure_group(group, ctx.device, launches, plan.host_rounds, batch_ms, plan.warmup_ms)
                except Exception as e:
                    rows = _not_measured(group, status_of(e), describe(e))
            for row in rows:
                ctx.add("host", **row)
            advance()
