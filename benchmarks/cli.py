"""``python -m benchmarks``: options, the order of the sections, and the files written."""

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from time import perf_counter

import torch

from rtdetr_fused.modules import ACTIVATIONS, NAMES

from .core import Context, Results, describe, make_progress
from .env import environment
from .host import run_host
from .measure import copy_bandwidth
from .memory import run_blocks, run_model
from .micro import run_bn_act, run_micro, run_scaling
from .plan import (
    ALL_ACTIVATIONS,
    ALL_DTYPES,
    DTYPE_ALIASES,
    LAYOUTS,
    MODELS,
    PASS_ALIASES,
    SECTIONS,
    TIMERS,
    Plan,
    PlanError,
    make_plan,
)
from .plots import write_plots
from .providers import PASSES, PROVIDERS, article_prelu_note
from .report import markdown, print_tables, stdout_console, write_csv, write_json
from .training import run_training

# Cheap sections first, so a --time-budget cuts the long grid rather than whole sections;
# the fused BN+act figures (blocks, bn_act, training) before the activations' sweep.
RUNNERS: dict[str, Callable[[Context], None]] = {
    "host": run_host,
    "model": run_model,
    "blocks": run_blocks,
    "bn_act": run_bn_act,
    "training": run_training,
    "scaling": run_scaling,
    "micro": run_micro,
}
assert set(RUNNERS) == set(SECTIONS)

DESCRIPTION = """\
Benchmark rtdetr_fused's activations against eager torch.nn, the article's composed formulas
and torch.compile: time per pass, effective bandwidth as a share of a copy roofline measured
in the same run, bytes saved for backward and peak memory, a size sweep, the host's cost of a
forward+backward (ours against torch.nn, side by side), Conv-BN-act blocks, RT-DETR-l's saved
activations and training steps.

Without a GPU it runs what the CPU shows honestly (saved bytes, our CPU path against eager on
the CPU, and the host's cost of our kernels' route with Triton's launches stubbed, labelled
CPU); GPU timings need a GPU."""

EPILOG = """\
lists are comma-separated. sections: {sections}
activations: {activations}
dtypes: {dtypes} (or fp32, fp16, bf16); passes: {passes} (or fwd, bwd, fwd+bwd)
providers: {providers}
shapes: NxCxHxW (timed in each --layouts) or flat:MIB (a 1-D tensor of MIB MiB)

Outputs in --out: results.json (every number with its unit, device, versions, commit),
results.csv, summary.md and PNG plots. METHOD.md beside this module says how it measures."""


def _listing(aliases: dict[str, str] | None = None) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(i.strip().lower() for i in text.split(",") if i.strip())
        return tuple((aliases or {}).get(i, i) for i in items)

    return parse


def build_parser() -> argparse.ArgumentParser:
    epilog = EPILOG.format(
        sections=", ".join(SECTIONS),
        activations=", ".join(ALL_ACTIVATIONS),
        dtypes=", ".join(ALL_DTYPES),
        passes=", ".join(PASSES),
        providers=", ".join(f"{p.name} ({p.description})" for p in PROVIDERS.values()),
    )
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=DESCRIPTION,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, help="results folder (default: $RESULTS_DIR, else ./results)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="default: cuda if present")
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer shapes, shorter timing, bfloat16-only compile and training: make gpu-check's mode",
    )
    lists = p.add_argument_group("what to measure (comma-separated lists; defaults depend on device and --quick)")
    lists.add_argument("--sections", type=_listing(), help="default: all (without a GPU: all but training)")
    aliases = {key: row.name for key, row in NAMES.items() if row.name in ACTIVATIONS}  # get_activation's
    lists.add_argument("--activations", type=_listing(aliases), help="default: all")
    lists.add_argument("--dtypes", type=_listing(DTYPE_ALIASES), help="GPU default: all three; CPU: float32")
    lists.add_argument("--passes", type=_listing(PASS_ALIASES), help="default: all three")
    lists.add_argument("--shapes", type=_listing(), help="default: RT-DETR-l feature maps at batch 16, and flat:256")
    lists.add_argument("--layouts", type=_listing(), help=f"for 4-D shapes: {', '.join(LAYOUTS)} (default: both)")
    lists.add_argument("--providers", type=_listing(), help="GPU default: all; CPU: all but compile")
    lists.add_argument("--compile-dtypes", type=_listing(DTYPE_ALIASES), help="dtypes timed with torch.compile")
    timing = p.add_argument_group("timing")
    timing.add_argument("--warmup-ms", type=float, help="warm-up per measurement (do_bench's warmup)")
    timing.add_argument("--rep-ms", type=float, help="timed duration per measurement (do_bench's rep)")
    timing.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="start nothing new after this; the rest is reported skipped",
    )
    timing.add_argument("--seed", type=int, help="seed for inputs (default 0)")
    timing.add_argument(
        "--timer",
        choices=TIMERS,
        help="GPU timer of the micro, blocks and bn_act sections: events (default; do_bench, host time "
        "shows where the host is slower than the kernels) or cudagraph (calls replayed from a CUDA graph: "
        "device time alone)",
    )
    train = p.add_argument_group("training step")
    train.add_argument("--models", type=_listing(), help=f"{', '.join(MODELS)} (default: both)")
    train.add_argument(
        "--precisions",
        type=_listing(DTYPE_ALIASES),
        help="bfloat16 and float16 (AMP), float32 (default: all; --quick: bfloat16)",
    )
    train.add_argument(
        "--train-activations",
        type=_listing(),
        help="activations swapped in (default: --activations; --quick: silu, relu, mish)",
    )
    train.add_argument("--train-batch", type=int, help="images per step (GPU default 16)")
    train.add_argument("--imgsz", type=int, help="image size (GPU default 640)")
    train.add_argument("--train-warmup", type=int, help="untimed steps first")
    train.add_argument("--steps", type=int, dest="train_steps", help="timed steps")
    train.add_argument("--train-compile", action=argparse.BooleanOptionalAction, help="also time torch.compile")
    return p


PLAN_OPTIONS = (
    "sections activations dtypes passes shapes layouts providers compile_dtypes warmup_ms rep_ms seed models "
    "precisions train_activations train_batch imgsz train_warmup train_steps train_compile timer"
).split()


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise PlanError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _skip_reason(section: str, device: torch.device) -> str:
    if section == "training" and device.type == "cpu":
        return "GPU timings need a GPU: training steps are timed on CUDA (--sections training times them on the CPU)"
    return "not selected (--sections)"


def run(ctx: Context) -> None:
    """Measure the roofline, then each selected section; a section that breaks is reported."""
    plan, results = ctx.plan, ctx.results
    # On the CPU these tensors live in caches, so a memory copy is no ceiling for them.
    results.meta["roofline"] = (
        copy_bandwidth(ctx.device, plan.copy_bytes, plan.warmup_ms, plan.rep_ms) if ctx.cuda else None
    )
    for name, runner in RUNNERS.items():
        if ctx.interrupted:
            results.skip(name, "interrupted (SIGINT): not run")
            continue
        if name not in plan.sections:
            results.skip(name, _skip_reason(name, ctx.device))
            if name == "micro":
                results.skip("memory", "comes with the micro section (--sections)")
            continue
        start = perf_counter()
        try:
            runner(ctx)
        except Exception as e:  # a broken section is a result; the others still run
            results.sections[name].status, results.sections[name].reason = "failed", describe(e)
        except KeyboardInterrupt:  # a wall-clock cap (make gpu-check): keep what was measured
            ctx.interrupted = True
            results.notes.append(f"Interrupted (SIGINT) during the {name} section: later sections not run.")
        results.sections[name].seconds = perf_counter() - start


def measure(plan: Plan, device: torch.device, argv: list[str]) -> Results:
    """Every selected section on ``device``; the environment and the plan go into the results."""
    torch.manual_seed(plan.seed)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # One thread: the CPU figures compare dispatch paths, and on a shared machine a
        # second thread turns every call into a wait for a descheduled worker.
        torch.set_num_threads(1)
    try:
        results = Results({**environment(device, argv), "plan": plan.to_dict()})
        results.notes.append(article_prelu_note())
        if device.type == "cpu" and results.meta["triton_interpret"]:
            results.notes.append("TRITON_INTERPRET=1: ours ran in Triton's interpreter; its CPU times are not speed.")
        if plan.timer == "cudagraph":
            results.notes.append(
                "--timer cudagraph: micro, blocks and bn_act times are CUDA-graph replays, the device's time "
                "alone; the host's cost per call is in the host and scaling sections."
            )
        start = perf_counter()
        with make_progress() as progress:
            run(Context(plan, device, results, progress))
        results.meta["wall_s"] = perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return results


def write_all(results: Results, out: Path) -> list[str]:
    """results.json, results.csv, the plots and summary.md; returns the plots' file names."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / "results.json")
    write_csv(results, out / "results.csv")
    plots = write_plots(results, out)
    (out / "summary.md").write_text(markdown(results, plots))
    return plots


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = _device(args.device)
        options = {k: getattr(args, k) for k in PLAN_OPTIONS}
        plan = make_plan(device.type, args.quick, time_budget_s=args.time_budget, **options)
    except PlanError as e:
        parser.error(str(e))
    out = args.out or Path(os.environ.get("RESULTS_DIR") or "results")
    results = measure(plan, device, argv)
    plots = write_all(results, out)
    console = stdout_console()
    print_tables(results, console)
    console.print(f"\nWrote results.json, results.csv, summary.md and {len(plots)} plots to {out}/")
    return 0
