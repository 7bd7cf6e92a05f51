"""Memory sections beyond one op: an interior Conv-BN-activation block, and a whole model's
training forward. What autograd saves is the same on any device, so these are honest on the
CPU too; times and peaks are labelled with the device they came from."""

from collections.abc import Callable

import torch
from torch import nn

from .core import Context, Unavailable, describe, fill_speedups, status_of
from .measure import Peak, SavedTensors, bench_ms, release
from .models import build, variants
from .plan import DTYPES
from .providers import ACTIVATION_TABLE, OURS, Activation


def _fused_bn_act(activation: Activation, channels: int) -> nn.Module:
    """Issue 5's fused BatchNorm2d + activation, once ``rtdetr_fused.bn_act`` exists."""
    from rtdetr_fused.bn_act import BatchNormAct2d

    return BatchNormAct2d(channels, act=activation.name, **activation.module_kwargs(channels))


# The normalisation and activation of a block, per provider; a new fused module is one row.
BLOCK_PROVIDERS: dict[str, Callable[[Activation, int], nn.Module]] = {
    "eager": lambda a, c: nn.Sequential(nn.BatchNorm2d(c), a.torch_module(c)),
    OURS: lambda a, c: nn.Sequential(nn.BatchNorm2d(c), a.fused(c)),
    "bn_act": _fused_bn_act,
}


def interior_block(norm_act: nn.Module, channels: int) -> nn.Sequential:
    """Conv -> BN -> activation, followed by the next conv, which saves the activation's
    output as its input: an activation that saves its output shares that tensor."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False), norm_act, nn.Conv2d(channels, channels, 1, bias=False)
    )


class Autocast(nn.Module):
    """``inner`` under autocast to ``dtype``, as in a training step (torch.nn's PReLU refuses
    a bfloat16 input with its float32 weight outside autocast); ours ignores autocast."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner, self.dtype = inner, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.inner(x)


def _block_case(ctx: Context, provider: str, activation: str) -> dict:
    shape = ctx.plan.block_shape
    dtype = DTYPES[ctx.plan.block_dtype]
    block = interior_block(BLOCK_PROVIDERS[provider](ACTIVATION_TABLE[activation], shape[1]), shape[1])
    block = Autocast(block, dtype).to(ctx.device).train()
    params = [*block.parameters(), *block.buffers()]
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.plan.seed)
    # The input arrives in the compute dtype, as from the previous block: no cast to save.
    x = torch.randn(shape, dtype=dtype, device=ctx.device, generator=gen).requires_grad_()
    g = torch.randn_like(block(x))
    grads = (x, *block.parameters())
    with Peak(ctx.device) as peak:
        with SavedTensors(exclude=[*params, x]) as saved:
            y = block(x)
        torch.autograd.grad(y, grads, g)
    feature_bytes = y.numel() * y.element_size()

    def step() -> None:
        torch.autograd.grad(block(x), grads, g)

    return dict(
        feature_bytes=feature_bytes,
        saved_bytes=saved.nbytes,
        saved_tensors=saved.count,
        saved_x_feature=saved.nbytes / feature_bytes,
        peak_bytes=peak.value,
        # Captured, the block's conv broke the capture on the H200 (and the CUDA RNG after it).
        time_ms=None if ctx.graph_timer else bench_ms(step, ctx.device, *ctx.timing),
    )


def run_blocks(ctx: Context) -> None:
    """Per activation and provider: bytes an interior Conv-BN-act block keeps for backward
    (parameters and the block's input excluded: the input belongs to the previous block),
    peak memory and forward+backward time of the block."""
    plan = ctx.plan
    work = [(a, p) for a in plan.activations for p in BLOCK_PROVIDERS]
    shape = "x".join(map(str, plan.block_shape))
    with ctx.task("blocks: Conv-BN-act", len(work)) as advance:
        for activation, provider in work:
            base = dict(activation=activation, provider=provider, dtype=plan.block_dtype, shape=shape)
            if not ctx.skipped_for_time("blocks", **base):
                try:
                    ctx.add("blocks", **base, **_block_case(ctx, provider, activation))
                except Exception as e:
                    ctx.add("blocks", **base, status="error", error=describe(e))
                release(ctx.device)
            advance()
    fill_speedups(ctx.results.sections["blocks"].rows, ("activation",), "time_ms")


def _model_saved(ctx: Context, model: nn.Module) -> SavedTensors:
    model = model.to(ctx.device).train()
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.plan.seed)
    img = torch.rand(ctx.plan.model_input, device=ctx.device, generator=gen)
    with SavedTensors(exclude=[*model.parameters(), *model.buffers()]) as saved:
        out = model(img)
    del out
    return saved


def run_model(ctx: Context) -> None:
    """RT-DETR-l's training forward on a small image: bytes saved for backward for the stock
    model and, per activation, with ours swapped in everywhere (alone, with BatchNorm fused into
    it, and with the fused outputs recomputed in backward) against torch.nn's."""
    plan = ctx.plan
    name = "rtdetr-l"
    try:
        base = build(name)
    except Unavailable as e:
        ctx.results.skip("model", str(e))
        return
    shape = "x".join(map(str, plan.model_input))
    stock_bytes = None
    with ctx.task(f"model: {name} saved for backward", 1 + 4 * len(plan.activations)) as advance:
        for provider, activation, model, swapped in variants(base, plan.activations):
            row = dict(model=name, activation=activation, provider=provider, input_shape=shape, replaced=swapped)
            if isinstance(model, Exception):
                ctx.add("model", **row, status=status_of(model), error=describe(model))
            elif not ctx.skipped_for_time("model", **row):
                try:
                    saved = _model_saved(ctx, model)
                    if provider == "stock":
                        stock_bytes = saved.nbytes
                    ratio = saved.nbytes / stock_bytes if stock_bytes else None
                    ctx.add("model", **row, saved_bytes=saved.nbytes, saved_tensors=saved.count, saved_x_stock=ratio)
                except Exception as e:
                    ctx.add("model", **row, status="error", error=describe(e))
            del model
            release(ctx.device)
            advance()
