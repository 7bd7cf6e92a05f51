"""What one run measures: shapes, dtypes, providers, repeats, and the defaults per device.

A GPU run defaults to the issue's full grid; ``--quick`` fits ``make gpu-check``'s budget.
Without a GPU the defaults are what a 2-core CPU shows honestly in a couple of minutes.
"""

import dataclasses
import math
import re
from dataclasses import dataclass

import torch

from .providers import ACTIVATION_TABLE, PASSES, PROVIDERS

MiB = 2**20
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
PASS_ALIASES = {"fwd": "forward", "bwd": "backward", "fwd+bwd": "forward+backward", "fwdbwd": "forward+backward"}
LAYOUTS = ("nchw", "channels_last")
TIMERS = ("events", "cudagraph")
SECTIONS = ("host", "micro", "scaling", "blocks", "bn_act", "model", "training")
MODELS = ("rtdetr-l", "yolo11n")
# Feature maps of an RT-DETR-l training step at batch 16, 640x640.
RTDETR_MAPS = ("16x128x160x160", "16x256x80x80", "16x512x80x80", "16x1024x40x40", "16x256x20x20")


class PlanError(ValueError):
    """A bad option: the CLI prints it as a usage error."""


@dataclass(frozen=True)
class ShapeCase:
    """A tensor to time: a 4-D feature map in a memory layout, or a flat tensor of fixed bytes
    (its element count then depends on the dtype)."""

    dims: tuple[int, ...]
    layout: str
    flat_bytes: int = 0

    @property
    def label(self) -> str:
        return "x".join(map(str, self.dims)) if self.dims else f"flat {self.flat_bytes // MiB} MiB"

    @property
    def channels(self) -> int:
        return self.dims[1] if self.dims else 1

    def shape(self, dtype: torch.dtype) -> tuple[int, ...]:
        return self.dims or (self.flat_bytes // dtype.itemsize,)

    def numel(self, dtype: torch.dtype) -> int:
        return math.prod(self.shape(dtype))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.layout == "channels_last" else torch.contiguous_format


def parse_shapes(specs: tuple[str, ...], layouts: tuple[str, ...]) -> tuple[ShapeCase, ...]:
    """``NxCxHxW`` (one case per layout) or ``flat:MIB`` (a 1-D tensor of MIB MiB)."""
    cases = []
    for spec in specs:
        if m := re.fullmatch(r"flat:(\d+)", spec):
            if int(m[1]) < 1:
                raise PlanError(f"bad shape {spec!r}: flat size must be at least 1 MiB")
            cases.append(ShapeCase((), "flat", int(m[1]) * MiB))
        elif re.fullmatch(r"\d+x\d+x\d+x\d+", spec) and all(int(d) > 0 for d in spec.split("x")):
            dims = tuple(int(d) for d in spec.split("x"))
            cases.extend(ShapeCase(dims, layout) for layout in layouts)
        else:
            raise PlanError(f"bad shape {spec!r}: expected NxCxHxW (e.g. 16x256x80x80) or flat:MIB (e.g. flat:256)")
    return tuple(cases)


def _powers_of_4(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(lo * 4**i for i in range(int(math.log(hi // lo, 4)) + 1))


@dataclass(frozen=True)
class Plan:
    """Every choice of a run; recorded in results.json."""

    device: str
    quick: bool
    sections: tuple[str, ...]
    activations: tuple[str, ...]
    dtypes: tuple[str, ...]
    passes: tuple[str, ...]
    shapes: tuple[str, ...]
    layouts: tuple[str, ...]
    providers: tuple[str, ...]
    compile_dtypes: tuple[str, ...]
    warmup_ms: float
    rep_ms: float
    scaling_sizes: tuple[int, ...]
    scaling_dtype: str
    host_shape: tuple[int, ...]
    host_rounds: int
    block_shape: tuple[int, ...]
    block_dtype: str
    bn_act_shapes: tuple[str, ...]
    bn_act_layouts: tuple[str, ...]
    model_input: tuple[int, ...]
    models: tuple[str, ...]
    precisions: tuple[str, ...]
    train_activations: tuple[str, ...]
    train_batch: int
    imgsz: int
    train_warmup: int
    train_steps: int
    train_compile: bool
    time_budget_s: float | None = None
    seed: int = 0
    timer: str = "events"
    copy_bytes: int = 1024 * MiB  # the roofline copy (GPU only)

    @property
    def cases(self) -> tuple[ShapeCase, ...]:
        return parse_shapes(self.shapes, self.layouts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


ALL_DTYPES = tuple(DTYPES)
ALL_ACTIVATIONS = tuple(ACTIVATION_TABLE)
_COMMON = dict(
    activations=ALL_ACTIVATIONS,
    passes=PASSES,
    host_shape=(1, 16, 8, 8),
    host_rounds=15,
    # RT-DETR-l's training size: below it the decoder's 300 queries, a fixed cost per image,
    # outweigh the convolutions (at 64x64 it runs 84 queries and holds 70% of the bytes).
    model_input=(1, 3, 640, 640),
    models=MODELS,
    time_budget_s=None,
)
_GPU = dict(
    _COMMON,
    sections=SECTIONS,
    dtypes=ALL_DTYPES,
    shapes=(*RTDETR_MAPS, "flat:256"),
    layouts=LAYOUTS,
    providers=tuple(PROVIDERS),
    compile_dtypes=ALL_DTYPES,
    warmup_ms=25.0,
    rep_ms=100.0,
    scaling_sizes=_powers_of_4(64 * 1024, 1024 * MiB),
    scaling_dtype="bfloat16",
    block_shape=(16, 256, 80, 80),
    block_dtype="bfloat16",
    bn_act_shapes=RTDETR_MAPS,
    bn_act_layouts=LAYOUTS,
    precisions=("bfloat16", "float16", "float32"),
    train_activations=ALL_ACTIVATIONS,
    train_batch=16,
    imgsz=640,
    train_warmup=5,
    train_steps=20,
    train_compile=True,
)
_CPU = dict(
    _COMMON,
    sections=tuple(s for s in SECTIONS if s != "training"),
    dtypes=("float32",),
    shapes=("1x64x80x80", "1x256x20x20"),
    layouts=LAYOUTS,
    providers=("rtdetr_fused", "eager", "formula"),
    compile_dtypes=ALL_DTYPES,
    warmup_ms=10.0,
    rep_ms=50.0,
    scaling_sizes=_powers_of_4(64 * 1024, 16 * MiB),
    scaling_dtype="float32",
    block_shape=(2, 64, 40, 40),
    block_dtype="float32",
    bn_act_shapes=("2x64x40x40",),
    bn_act_layouts=("nchw",),
    models=("yolo11n",),
    precisions=("float32",),
    train_activations=("silu",),
    train_batch=2,
    imgsz=128,
    train_warmup=1,
    train_steps=2,
    train_compile=False,
)
DEFAULTS: dict[tuple[str, bool], dict] = {
    ("cuda", False): _GPU,
    # make gpu-check: about 4 minutes on one H200 (METHOD.md has the breakdown).
    ("cuda", True): dict(
        _GPU,
        shapes=("16x256x80x80", "16x256x20x20", "flat:256"),
        compile_dtypes=("bfloat16",),
        # BN+act is compiled once per case (forward and backward): RT-DETR-l's maps in NCHW,
        # as Ultralytics runs them.
        bn_act_layouts=("nchw",),
        warmup_ms=5.0,
        rep_ms=25.0,
        host_rounds=9,
        precisions=("bfloat16",),
        train_activations=("silu", "relu", "mish"),
        train_warmup=3,
        train_steps=6,
        train_compile=False,
    ),
    ("cpu", False): _CPU,
    ("cpu", True): dict(
        _CPU,
        shapes=("1x64x40x40",),
        layouts=("nchw",),
        warmup_ms=2.0,
        rep_ms=10.0,
        host_rounds=9,
        scaling_sizes=_powers_of_4(64 * 1024, 1 * MiB),
        block_shape=(2, 32, 20, 20),
        bn_act_shapes=("2x32x20x20",),
        model_input=(1, 3, 64, 64),
    ),
}


def _check_choices(option: str, values: tuple[str, ...], known: tuple[str, ...]) -> None:
    if not values:
        raise PlanError(f"{option}: give at least one value")
    for v in values:
        if v not in known:
            raise PlanError(f"{option}: unknown value {v!r}; choose from {', '.join(known)}")


def make_plan(device: str, quick: bool, **overrides) -> Plan:
    """The defaults for the device and mode, with every option the user gave (None: not given)."""
    values = dict(DEFAULTS[device, quick], device=device, quick=quick)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("train_activations") is None:
        values["train_activations"] = tuple(a for a in values["train_activations"] if a in values["activations"])
    plan = Plan(**values)
    _check_choices("--sections", plan.sections, SECTIONS)
    _check_choices("--activations", plan.activations, ALL_ACTIVATIONS)
    _check_choices("--dtypes", plan.dtypes, ALL_DTYPES)
    _check_choices("--passes", plan.passes, PASSES)
    _check_choices("--layouts", plan.layouts, LAYOUTS)
    _check_choices("--providers", plan.providers, tuple(PROVIDERS))
    _check_choices("--models", plan.models, MODELS)
    _check_choices("--precisions", plan.precisions, ALL_DTYPES)
    for option, number in (("--train-batch", plan.train_batch), ("--imgsz", plan.imgsz), ("--steps", plan.train_steps)):
        if number < 1:
            raise PlanError(f"{option} must be at least 1, got {number}")
    if plan.imgsz % 32:
        raise PlanError(f"--imgsz must be a multiple of 32 (the models' largest stride), got {plan.imgsz}")
    if plan.warmup_ms < 0 or plan.rep_ms <= 0:
        raise PlanError("--warmup-ms must be >= 0 and --rep-ms > 0")
    _check_choices("--timer", (plan.timer,), TIMERS)
    if plan.timer == "cudagraph" and device != "cuda":
        raise PlanError("--timer cudagraph replays CUDA graphs: it needs a GPU")
    if plan.time_budget_s is not None and plan.time_budget_s <= 0:
        raise PlanError(f"--time-budget must be positive, got {plan.time_budget_s}")
    parse_shapes(plan.shapes, plan.layouts)
    parse_shapes(plan.bn_act_shapes, plan.bn_act_layouts)
    return plan
