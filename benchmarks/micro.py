"""Per-op sections: the micro grid (time, bandwidth, roofline, memory for every provider),
BatchNorm2d + activation, and the size sweep against eager."""

import itertools
from collections.abc import Callable

import torch
from torch import nn

from .core import Context, describe, fill_speedups
from .measure import Peak, SavedTensors, back_to_back_ms, bench_ms, pool_size, release
from .memory import BLOCK_PROVIDERS, Autocast
from .plan import DTYPES, ShapeCase, parse_shapes
from .providers import ACTIVATION_TABLE, OURS, PROVIDERS, moved_bytes

Pool = list[tuple[torch.Tensor, torch.Tensor]]


def _pool(case: ShapeCase, dtype: torch.dtype, device: torch.device, seed: int) -> Pool:
    """Inputs (requiring grad) and output gradients in the case's layout, enough to rotate
    through ``ROTATE_BYTES`` so no call finds its input in cache."""
    shape, fmt = case.shape(dtype), case.memory_format
    gen = torch.Generator(device=device).manual_seed(seed)
    count = pool_size(case.numel(dtype) * dtype.itemsize, device)

    def tensor() -> torch.Tensor:
        # std 3 so every branch of every activation (x < -3, |x| < 3, x > 6) is taken.
        return torch.empty(shape, dtype=dtype, device=device, memory_format=fmt).normal_(0, 3, generator=gen)

    return [(tensor().requires_grad_(), tensor()) for _ in range(count)]


def _setup(ctx: Context, provider: str, activation: str, dtype: torch.dtype, case: ShapeCase):
    module = PROVIDERS[provider].build(ACTIVATION_TABLE[activation], case.channels).to(ctx.device, dtype)
    return module, list(module.parameters()), _pool(case, dtype, ctx.device, ctx.plan.seed)


def _calls(pass_name: str, module: nn.Module, pool: Pool, params: list[torch.Tensor]) -> Callable[[], object]:
    """One call of the pass, each call on the next input of the pool. Backward replays
    graphs built once (retain_graph), so it times the backward kernels alone."""
    if pass_name == "forward":
        inputs = itertools.cycle([x for x, _ in pool])
        return lambda: module(next(inputs))
    if pass_name == "backward":
        graphs = itertools.cycle([(module(x), x, g) for x, g in pool])

        def backward() -> None:
            y, x, g = next(graphs)
            torch.autograd.grad(y, (x, *params), g, retain_graph=True)

        return backward
    pairs = itertools.cycle(pool)

    def forward_backward() -> None:
        x, g = next(pairs)
        torch.autograd.grad(module(x), (x, *params), g)

    return forward_backward


def _memory(device: torch.device, module: nn.Module, x: torch.Tensor, g: torch.Tensor, params: list) -> dict:
    """Bytes saved for backward, what they are, and the peak of one forward+backward."""
    with Peak(device) as peak:
        with SavedTensors(exclude=params) as saved:
            y = module(x)
        torch.autograd.grad(y, (x, *params), g)
    input_bytes = x.numel() * x.element_size()
    return dict(
        input_bytes=input_bytes,
        saved_bytes=saved.nbytes,
        saved_tensors=saved.count,
        saved_x_input=saved.nbytes / input_bytes,
        saves=saved.which(input=x, output=y),
        peak_bytes=peak.value,
        peak_x_input=None if peak.value is None else peak.value / input_bytes,
    )


def _bandwidth(ctx: Context, moved: int, ms: float) -> dict:
    gbps, roofline = moved / ms / 1e6, ctx.results.meta["roofline"]
    return dict(time_ms=ms, bandwidth_GBps=gbps, roofline_pct=100 * gbps / roofline["copy_GBps"] if roofline else None)


def _micro_case(ctx: Context, provider: str, activation: str, dtype_name: str, case: ShapeCase) -> None:
    plan, dtype = ctx.plan, DTYPES[dtype_name]
    base = dict(
        activation=activation,
        provider=provider,
        dtype=dtype_name,
        shape=case.label,
        layout=case.layout,
        numel=case.numel(dtype),
    )
    passes = [{"pass": p} for p in plan.passes]
    if ctx.out_of_time():
        return _record_all(ctx, base, passes, "skipped", ctx.budget_reason)
    if provider == "compile" and dtype_name not in plan.compile_dtypes:
        reason = f"torch.compile is measured in {', '.join(plan.compile_dtypes)} only (--compile-dtypes)"
        return _record_all(ctx, base, passes, "skipped", reason)
    try:
        module, params, pool = _setup(ctx, provider, activation, dtype, case)
    except Exception as e:
        return _record_all(ctx, base, passes, "error", describe(e))
    try:
        ctx.add("memory", **base, **_memory(ctx.device, module, *pool[0], params))
    except Exception as e:
        ctx.add("memory", **base, status="error", error=describe(e))
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    moved = {p: moved_bytes(p, base["numel"], dtype.itemsize, param_bytes) for p in plan.passes}
    _time_passes(ctx, "micro", base, module, pool, params, moved)
    del module, pool
    release(ctx.device)


GRAPH_BACKWARD = "backward alone replays graphs built before capture, which a CUDA graph cannot hold"


def _time_passes(
    ctx: Context, section: str, base: dict, module: nn.Module, pool: Pool, params: list, moved: dict[str, int]
) -> None:
    """One row per pass of ``moved`` (pass -> bytes it must move): time, bandwidth, roofline."""
    for pass_name, nbytes in moved.items():
        if pass_name == "backward" and ctx.graph_timer:
            ctx.add(section, **base, **{"pass": pass_name}, status="skipped", error=GRAPH_BACKWARD)
            continue
        try:
            ms = bench_ms(_calls(pass_name, module, pool, params), ctx.device, *ctx.timing)
            ctx.add(section, **base, **{"pass": pass_name}, moved_bytes=nbytes, **_bandwidth(ctx, nbytes, ms))
        except Exception as e:
            ctx.add(section, **base, **{"pass": pass_name}, status="error", error=describe(e))


def _record_all(ctx: Context, base: dict, passes: list[dict], status: str, error: str) -> None:
    """A case not measured: its memory row and every pass row say why."""
    ctx.add("memory", **base, status=status, error=error)
    for p in passes:
        ctx.add("micro", **base, **p, status=status, error=error)


def run_micro(ctx: Context) -> None:
    """Every provider x activation x dtype x shape: time of each pass, effective bandwidth,
    share of the copy roofline, bytes saved and peak memory. Each case runs its providers one
    after another, so a time budget leaves whole comparisons; torch.compile runs after all of
    them, so the budget cuts it first."""
    plan = ctx.plan
    cases = list(itertools.product(plan.activations, plan.dtypes, plan.cases))
    plain = [p for p in PROVIDERS if p in plan.providers and p != "compile"]
    work = [(p, *case) for case in cases for p in plain]
    work += [("compile", *case) for case in cases] if "compile" in plan.providers else []
    with ctx.task("micro: time, bandwidth, memory", len(work)) as advance:
        for provider, activation, dtype, case in work:
            _micro_case(ctx, provider, activation, dtype, case)
            advance()
    fill_speedups(ctx.results.sections["micro"].rows, ("activation", "dtype", "pass", "shape", "layout"), "time_ms")


# Input-sized tensors a fused BN+act pass must move: forward reads x for the statistics and
# again to normalize, and writes y; backward reads x and grad_output for the two per-channel
# sums and again for grad_input, which it writes. Eager BatchNorm2d then the activation moves
# 5 forward and 8 backward.
BN_ACT_TENSORS = {"forward": 3, "backward": 5, "forward+backward": 8}


def _bn_act_module(provider: str, activation: str, channels: int, dtype: torch.dtype) -> nn.Module:
    """Training-mode BatchNorm2d + activation: ours fused, torch.nn's pair, or that pair compiled."""
    act = ACTIVATION_TABLE[activation]
    if provider == OURS:
        return Autocast(BLOCK_PROVIDERS["bn_act"](act, channels), dtype)
    pair = BLOCK_PROVIDERS["eager"](act, channels)
    if provider == "compile":
        torch._dynamo.reset()  # as for the activations: a clean cache per case, static shapes
        pair = torch.compile(pair, dynamic=False)
    return Autocast(pair, dtype)


def run_bn_act(ctx: Context) -> None:
    """BatchNorm2d + activation in training mode on RT-DETR-l's feature maps, ours fused
    against torch.nn's BatchNorm2d then the activation, eager and compiled: time per pass
    with parameters in float32 and maps in the block dtype, as under autocast."""
    plan, dtype = ctx.plan, DTYPES[ctx.plan.block_dtype]
    providers = [p for p in (OURS, "eager", "compile") if p in plan.providers]
    cases = parse_shapes(plan.bn_act_shapes, plan.bn_act_layouts)
    work = list(itertools.product(plan.activations, cases, providers))
    with ctx.task(f"bn_act: BatchNorm2d + activation, {plan.block_dtype}", len(work)) as advance:
        for activation, case, provider in work:
            numel = case.numel(dtype)
            base = dict(activation=activation, provider=provider, dtype=plan.block_dtype, shape=case.label)
            base.update(layout=case.layout, numel=numel)
            if ctx.out_of_time():
                for p in plan.passes:
                    ctx.add("bn_act", **base, **{"pass": p}, status="skipped", error=ctx.budget_reason)
            else:
                try:
                    module = _bn_act_module(provider, activation, case.channels, dtype).to(ctx.device).train()
                    pool = _pool(case, dtype, ctx.device, plan.seed)
                    moved = {p: BN_ACT_TENSORS[p] * numel * dtype.itemsize for p in plan.passes}
                    _time_passes(ctx, "bn_act", base, module, pool, list(module.parameters()), moved)
                    del module, pool
                except Exception as e:
                    for p in plan.passes:
                        ctx.add("bn_act", **base, **{"pass": p}, status="error", error=describe(e))
                release(ctx.device)
            advance()
    keys = ("activation", "pass", "shape", "layout")
    fill_speedups(ctx.results.sections["bn_act"].rows, keys, "time_ms")


def run_scaling(ctx: Context) -> None:
    """Forward+backward on flat tensors from 64 KiB to 1 GiB (GPU), ours against eager, timed
    back to back: where launch and Python overhead dominate, and where bandwidth does."""
    plan = ctx.plan
    dtype = DTYPES[plan.scaling_dtype]
    work = list(itertools.product(plan.activations, plan.scaling_sizes, (OURS, "eager")))
    with ctx.task(f"scaling: sizes, {plan.scaling_dtype}", len(work)) as advance:
        for activation, size, provider in work:
            case = ShapeCase((), "flat", size)
            base = dict(activation=activation, provider=provider, dtype=plan.scaling_dtype, size_bytes=size)
            base["numel"] = case.numel(dtype)
            if not ctx.skipped_for_time("scaling", **base):
                try:
                    module, params, pool = _setup(ctx, provider, activation, dtype, case)
                    fn = _calls("forward+backward", module, pool, params)
                    ms = back_to_back_ms(fn, ctx.device, plan.warmup_ms, plan.rep_ms)
                    moved = moved_bytes("forward+backward", base["numel"], dtype.itemsize)
                    ctx.add("scaling", **base, **_bandwidth(ctx, moved, ms))
                    del module, pool, fn
                except Exception as e:
                    ctx.add("scaling", **base, status="error", error=describe(e))
                release(ctx.device)
            advance()
    fill_speedups(ctx.results.sections["scaling"].rows, ("activation", "size_bytes"), "time_ms")
