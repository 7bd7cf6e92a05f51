"""Training step of RT-DETR-l and YOLO11n on a synthetic batch: forward, loss, backward and
optimizer step, per precision (AMP bfloat16, AMP float16, float32), for the stock model, each
of our activations swapped in everywhere against torch.nn's, and torch.compile."""

import copy
import statistics
from collections.abc import Callable, Iterator
from time import perf_counter

import torch
from torch import nn

from .core import Context, Unavailable, describe, fill_speedups, status_of
from .measure import Peak, release, sync
from .models import Variant, build, synthetic_batch, variants
from .plan import DTYPES


def _step(model: nn.Module, batch: dict, precision: str, device: torch.device) -> Callable[[], None]:
    """One optimizer step as Ultralytics' trainer takes it: autocast, GradScaler for float16."""
    amp = precision != "float32"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "float16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=DTYPES[precision], enabled=amp):
            loss, _ = model.loss(batch)
        scaler.scale(loss.sum()).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def _timed(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> dict:
    """First step (compilation included), then warm-up, then ``steps`` timed one by one."""
    sync(device)
    start = perf_counter()
    step()
    sync(device)
    first = perf_counter() - start
    for _ in range(warmup - 1):
        step()
    times = []
    with Peak(device) as peak:
        for _ in range(steps):
            sync(device)
            start = perf_counter()
            step()
            sync(device)
            times.append((perf_counter() - start) * 1e3)
    p90 = statistics.quantiles(times, n=10)[-1] if len(times) > 1 else times[0]
    return dict(
        steps=steps, step_ms=statistics.median(times), step_p90_ms=p90, first_step_s=first, peak_bytes=peak.value
    )


def _measure(ctx: Context, model: nn.Module, batch: dict, precision: str) -> dict:
    step = _step(model.to(ctx.device).train(), batch, precision, ctx.device)
    return _timed(step, ctx.device, ctx.plan.train_warmup, ctx.plan.train_steps)


def _compiled(ctx: Context, base: nn.Module) -> Variant:
    """The stock model with each layer compiled (``Module.compile``): Ultralytics calls layers
    one by one and the loss outside ``forward``, so the layers are what compile can see."""
    if not ctx.plan.train_compile or "compile" not in ctx.plan.providers:
        reason = "--quick" if ctx.plan.quick else "not selected"
        return "compile", None, Unavailable(f"torch.compile of the model not run ({reason})"), None
    torch._dynamo.reset()
    compiled = copy.deepcopy(base)
    for layer in compiled.model:
        layer.compile()
    return "compile", None, compiled, None


def _all_variants(ctx: Context, base: nn.Module) -> Iterator[Variant]:
    yield from variants(base, ctx.plan.train_activations)
    yield _compiled(ctx, base)


def run_training(ctx: Context) -> None:
    """Median step time and peak memory per model, precision and variant; ours against the
    torch.nn twin of the same swapped model (speedup_x on the torch.nn row)."""
    plan = ctx.plan
    per_model = len(plan.precisions) * (2 + 4 * len(plan.train_activations))
    with ctx.task("training steps", len(plan.models) * per_model) as advance:
        for name in plan.models:
            try:
                base = build(name)
            except Unavailable as e:
                ctx.results.skip("training", str(e))
                return
            for precision in plan.precisions:
                batch = synthetic_batch(plan.train_batch, plan.imgsz, ctx.device, plan.seed)
                for provider, activation, model, _ in _all_variants(ctx, base):
                    row = dict(
                        model=name,
                        precision=precision,
                        batch=plan.train_batch,
                        imgsz=plan.imgsz,
                        variant=provider if activation is None else f"{provider}:{activation}",
                        activation=activation,
                        provider=provider,
                    )
                    if isinstance(model, Exception):
                        ctx.add("training", **row, status=status_of(model), error=describe(model))
                    elif not ctx.skipped_for_time("training", **row):
                        try:
                            ctx.add("training", **row, **_measure(ctx, model, batch, precision))
                        except Exception as e:
                            ctx.add("training", **row, status="error", error=describe(e))
                    del model
                    release(ctx.device)
                    advance()
    fill_speedups(ctx.results.sections["training"].rows, ("model", "precision", "activation"), "step_ms")
