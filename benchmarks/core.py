"""What the sections share: result rows with fixed fields and units, progress, the time budget."""

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .plan import Plan
from .providers import OURS

# Every numeric field, wherever it appears, with its unit.
UNITS: dict[str, str] = {
    "numel": "elements",
    "time_ms": "milliseconds per call, median of the timed calls, warm-up excluded",
    "ours_us": "microseconds per forward+backward of ours, median of interleaved rounds (wall clock on a GPU, "
    "the thread's CPU time on the CPU)",
    "torch_us": "microseconds per forward+backward of torch.nn's, timed in the same rounds as ours_us",
    "ratio_x": "times: median over the rounds of ours / torch.nn, each round's two batches timed next to each "
    "other (below 1: ours costs the host less)",
    "target_x": "times: the largest ratio_x the target allows",
    "ours_calls": "Python function calls per forward+backward of ours (sys.setprofile 'call' events)",
    "torch_calls": "Python function calls per forward+backward of torch.nn's",
    "ours_launches": "kernel launches per forward+backward of ours (see launches_by)",
    "torch_launches": "kernel launches per forward+backward of torch.nn's (GPU only, see launches_by)",
    "moved_bytes": "bytes the pass must read and write at the least (see METHOD.md)",
    "bandwidth_GBps": "GB/s (1e9 bytes per second): moved_bytes / time",
    "roofline_pct": "percent of the copy bandwidth measured in the same run (copy_GBps)",
    "speedup_x": "times: this row's time / rtdetr_fused's time in the same case (above 1: ours is faster)",
    "input_bytes": "bytes of the input tensor",
    "saved_bytes": "bytes in unique storages saved for backward, parameters excluded",
    "saved_tensors": "unique storages saved for backward, parameters excluded",
    "saved_x_input": "saved_bytes as a multiple of input_bytes",
    "peak_bytes": "bytes: peak allocated during forward+backward above what was allocated before (CUDA only)",
    "peak_x_input": "peak_bytes as a multiple of input_bytes",
    "size_bytes": "bytes per tensor",
    "feature_bytes": "bytes of one feature map of the block (the activation's output)",
    "saved_x_feature": "saved_bytes as a multiple of feature_bytes",
    "replaced": "activation modules replaced in the model",
    "saved_x_stock": "saved_bytes as a multiple of the stock model's",
    "batch": "images per step",
    "imgsz": "pixels (square images)",
    "steps": "timed steps",
    "step_ms": "milliseconds per training step (forward, loss, backward, optimizer), median",
    "step_p90_ms": "milliseconds per training step, 90th percentile",
    "first_step_s": "seconds for the first step (compilation and autotuning included)",
    "copy_bytes": "bytes read plus written by the reference copy",
    "copy_ms": "milliseconds per reference copy, median",
    "copy_GBps": "GB/s (1e9 bytes per second) of the reference copy: the roofline",
    "seconds": "wall-clock seconds the section took",
    "wall_s": "wall-clock seconds of the whole run",
}

_COMMON = ("device", "status", "error")
ROW_FIELDS: dict[str, tuple[str, ...]] = {
    "host": (
        "kind", "activation", "variant", "policy", "shape", "ours_us", "torch_us", "ratio_x", "target_x", "met",
        "ours_calls", "torch_calls", "ours_launches", "torch_launches", "launches_by",
    ),
    "micro": (
        "activation", "provider", "dtype", "pass", "shape", "layout", "numel",
        "time_ms", "moved_bytes", "bandwidth_GBps", "roofline_pct", "speedup_x",
    ),
    "memory": (
        "activation", "provider", "dtype", "shape", "layout", "numel", "input_bytes",
        "saved_bytes", "saved_tensors", "saved_x_input", "saves", "peak_bytes", "peak_x_input",
    ),
    "scaling": (
        "activation", "provider", "dtype", "size_bytes", "numel", "time_ms", "bandwidth_GBps", "roofline_pct",
        "speedup_x",
    ),
    "blocks": (
        "activation", "provider", "dtype", "shape", "feature_bytes", "saved_bytes", "saved_tensors",
        "saved_x_feature", "peak_bytes", "time_ms", "speedup_x",
    ),
    "bn_act": (
        "activation", "provider", "dtype", "pass", "shape", "layout", "numel",
        "time_ms", "moved_bytes", "bandwidth_GBps", "roofline_pct", "speedup_x",
    ),
    "model": (
        "model", "activation", "provider", "input_shape", "replaced", "saved_bytes", "saved_tensors", "saved_x_stock",
    ),
    "training": (
        "model", "precision", "batch", "imgsz", "variant", "activation", "provider", "steps", "step_ms",
        "step_p90_ms", "first_step_s", "peak_bytes", "speedup_x",
    ),
}  # fmt: skip
ROW_FIELDS = {name: _COMMON + fields for name, fields in ROW_FIELDS.items()}


class Unavailable(Exception):
    """Something a row needs is missing or not selected; the row is skipped with this reason."""


def describe(error: BaseException) -> str:
    """One line for a results row: the first line of the message, with the exception type
    unless the row was skipped on purpose."""
    message = str(error).strip().splitlines()
    if isinstance(error, Unavailable):
        return message[0] if message else "unavailable"
    return f"{type(error).__name__}: {message[0][:300]}" if message else type(error).__name__


def status_of(error: BaseException) -> str:
    return "skipped" if isinstance(error, Unavailable) else "error"


@dataclass
class Section:
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    rows: list[dict] = field(default_factory=list)
    seconds: float | None = None


class Results:
    """Rows per section, each with every field of ``ROW_FIELDS`` (None where not measured)."""

    def __init__(self, meta: dict):
        self.meta = meta
        self.notes: list[str] = []
        self.sections: dict[str, Section] = {
            name: Section(status="skipped", reason="not selected") for name in ROW_FIELDS
        }

    def add(self, section: str, **values) -> dict:
        unknown = set(values) - set(ROW_FIELDS[section])
        if unknown:
            raise KeyError(f"{section} rows have no field(s) {sorted(unknown)}")
        row = {name: values.get(name) for name in ROW_FIELDS[section]}
        row["status"] = row["status"] or "ok"
        row["error"] = row["error"] or ""
        s = self.sections[section]
        if s.status == "skipped":
            s.status, s.reason = "ok", ""
        s.rows.append(row)
        return row

    def skip(self, section: str, reason: str) -> None:
        self.sections[section] = Section(status="skipped", reason=reason)

    def rows(self, section: str, **match) -> list[dict]:
        return [r for r in self.sections[section].rows if all(r[k] == v for k, v in match.items())]

    def to_dict(self) -> dict:
        return {
            "schema": 1,
            "meta": self.meta,
            "units": UNITS,
            "notes": self.notes,
            "sections": {
                name: {
                    "status": s.status,
                    "reason": s.reason,
                    "seconds": s.seconds,
                    "fields": list(ROW_FIELDS[name]),
                    "rows": s.rows,
                }
                for name, s in self.sections.items()
            },
        }


def fill_speedups(rows: Iterable[dict], keys: tuple[str, ...], time_field: str) -> None:
    """speedup_x = the row's time / rtdetr_fused's time for the row with the same ``keys``."""
    rows = list(rows)
    ours = {tuple(r[k] for k in keys): r[time_field] for r in rows if r["provider"] == OURS and r[time_field]}
    for r in rows:
        base = ours.get(tuple(r[k] for k in keys))
        r["speedup_x"] = r[time_field] / base if base and r[time_field] else None


class Context:
    """The run: plan, device, results, progress bar and time budget, handed to every section."""

    def __init__(self, plan: Plan, device: torch.device, results: Results, progress: Progress):
        self.plan, self.device, self.results, self.progress = plan, device, results, progress
        self.label = results.meta["device_label"]
        self._start = perf_counter()
        self.interrupted = False

    @property
    def graph_timer(self) -> bool:
        """Times are CUDA-graph replays (``--timer cudagraph``)."""
        return self.plan.timer == "cudagraph"

    @property
    def timing(self) -> tuple[float, float, bool]:
        """bench_ms's (warmup_ms, rep_ms, graph) for this run."""
        return self.plan.warmup_ms, self.plan.rep_ms, self.graph_timer

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def out_of_time(self) -> bool:
        budget = self.plan.time_budget_s
        return budget is not None and perf_counter() - self._start > budget

    @property
    def budget_reason(self) -> str:
        return f"time budget of {self.plan.time_budget_s:g} s spent (--time-budget)"

    def skipped_for_time(self, section: str, **values) -> bool:
        """When the time budget is spent, record the row as skipped and say so."""
        if not self.out_of_time():
            return False
        self.add(section, **values, status="skipped", error=self.budget_reason)
        return True

    def add(self, section: str, **values) -> dict:
        return self.results.add(section, device=self.label, **values)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[], None]]:
        """A progress bar for one section; yields the function that advances it."""
        task = self.progress.add_task(f"[{self.label}] {description}", total=max(total, 1))
        try:
            yield lambda: self.progress.advance(task)
        finally:
            self.progress.update(task, completed=max(total, 1))


def make_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    )
