"""Plots: speedup per activation and dtype, share of the roofline, memory, the size sweep and
training steps. Matplotlib's object API renders with Agg and touches no global state; each
title names the device the numbers came from."""

from collections.abc import Callable
from pathlib import Path

from matplotlib.figure import Figure

from .core import Results
from .providers import OURS, PROVIDERS
from .report import geomean, main_pass, ok, ordered, size_label


def _figure(panels: int, title: str) -> tuple[Figure, list]:
    fig = Figure(figsize=(6 * panels, 4.5))
    fig.suptitle(title)
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def _bars(ax, groups: list[str], series: dict[str, list[float | None]], ylabel: str) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per series (missing: no bar)."""
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [v or 0 for v in values], width, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    top = max((v for values in series.values() for v in values if v), default=1)
    ax.set_ylim(0, top * 1.3)  # room for the legend above the bars
    ax.legend(fontsize="small", ncol=len(series), loc="upper center")
    ax.grid(axis="y", alpha=0.3)


def _series(rows: list[dict], acts: list[str], providers: list[str], field: str) -> dict[str, list]:
    """Per provider, ``field`` for each activation (None where not measured)."""
    by = {(r["provider"], r["activation"]): r[field] for r in rows}
    return {p: [by.get((p, a)) for a in acts] for p in providers}


def _first_case(rows: list[dict]) -> list[dict]:
    """The rows measured on the same dtype, shape and layout as the first row."""
    first = rows[0]
    keys = [k for k in ("dtype", "shape", "layout") if k in first]
    return [r for r in rows if all(r[k] == first[k] for k in keys)]


def _acts(results: Results, rows: list[dict]) -> list[str]:
    return ordered({r["activation"] for r in rows}, results.meta["plan"]["activations"])


def _providers(rows: list[dict]) -> list[str]:
    return ordered({r["provider"] for r in rows}, list(PROVIDERS))


def _main_rows(results: Results) -> list[dict]:
    rows = ok(results, "micro")
    return [r for r in rows if r["pass"] == main_pass(rows)] if rows else []


def speedup(results: Results, label: str) -> Figure | None:
    rows = _main_rows(results)
    others = [p for p in _providers(rows) if p != OURS]
    if not others:
        return None
    fig, axes = _figure(len(others), f"{label}: speedup of rtdetr_fused, {rows[0]['pass']} (geomean over shapes)")
    acts, dtypes = _acts(results, rows), ordered({r["dtype"] for r in rows}, results.meta["plan"]["dtypes"])
    for ax, provider in zip(axes, others):
        mine = [r for r in rows if r["provider"] == provider]
        series = {
            d: [geomean(r["speedup_x"] for r in mine if (r["activation"], r["dtype"]) == (a, d)) for a in acts]
            for d in dtypes
        }
        _bars(ax, acts, series, f"time({provider}) / time(ours)")
        ax.axhline(1, color="black", linewidth=0.8)
        ax.set_title(f"vs {provider}")
    return fig


def roofline(results: Results, label: str) -> Figure | None:
    rows = _main_rows(results)
    if not rows or not results.meta["roofline"]:
        return None
    dtypes = ordered({r["dtype"] for r in rows}, results.meta["plan"]["dtypes"])
    copy = results.meta["roofline"]["copy_GBps"]
    fig, axes = _figure(
        len(dtypes), f"{label}: % of copy bandwidth ({copy:,.0f} GB/s), largest shape, {rows[0]['pass']}"
    )
    for ax, dtype in zip(axes, dtypes):
        largest = max((r for r in rows if r["dtype"] == dtype), key=lambda r: r["numel"])
        at = [r for r in rows if (r["dtype"], r["shape"], r["layout"]) == (dtype, largest["shape"], largest["layout"])]
        _bars(
            ax,
            _acts(results, at),
            _series(at, _acts(results, at), _providers(at), "roofline_pct"),
            "% of copy bandwidth",
        )
        ax.set_title(f"{dtype}, {largest['shape']} {largest['layout']}")
    return fig


def memory(results: Results, label: str) -> Figure | None:
    op = ok(results, "memory")
    panels = [
        (rows, field, title)
        for rows, field, title in (
            (op, "saved_x_input", "saved for backward, x input (one op)"),
            (ok(results, "blocks"), "saved_x_feature", "saved for backward, feature maps (Conv-BN-act block)"),
            ([r for r in op if r["peak_x_input"] is not None], "peak_x_input", "peak of forward+backward, x input"),
        )
        if rows
    ]
    if not panels:
        return None
    fig, axes = _figure(len(panels), f"{label}: memory")
    for ax, (rows, field, title) in zip(axes, panels):
        rows = _first_case(rows)
        _bars(ax, _acts(results, rows), _series(rows, _acts(results, rows), _providers(rows), field), field)
        ax.set_title(title, fontsize="medium")
    return fig


def scaling(results: Results, label: str) -> Figure | None:
    rows = ok(results, "scaling", provider="eager")
    if not rows:
        return None
    fig, (ax,) = _figure(1, f"{label}: forward+backward ({rows[0]['dtype']}), ours vs eager by size")
    for act in _acts(results, rows):
        points = sorted((r["size_bytes"], r["speedup_x"]) for r in rows if r["activation"] == act and r["speedup_x"])
        ax.plot([s for s, _ in points], [x for _, x in points], marker="o", label=act)
    ax.set_xscale("log")
    sizes = sorted({r["size_bytes"] for r in rows})
    ax.set_xticks(sizes, [size_label(s) for s in sizes], rotation=30)
    ax.minorticks_off()
    ax.axhline(1, color="black", linewidth=0.8)
    ax.set_xlabel("bytes per tensor")
    ax.set_ylabel("time(eager) / time(ours)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def training(results: Results, label: str) -> Figure | None:
    rows = ok(results, "training")
    if not rows:
        return None
    groups = list(dict.fromkeys((r["model"], r["precision"]) for r in rows))
    fig, axes = _figure(len(groups), f"{label}: training step, median")
    for ax, (model, precision) in zip(axes, groups):
        at = [r for r in rows if (r["model"], r["precision"]) == (model, precision)]
        ax.barh([r["variant"] for r in at], [r["step_ms"] for r in at])
        ax.set_xlabel("ms per step")
        ax.set_title(f"{model}, {precision}")
        ax.invert_yaxis()
    return fig


PLOTS: dict[str, Callable[[Results, str], Figure | None]] = {
    "speedup.png": speedup,
    "roofline.png": roofline,
    "memory.png": memory,
    "scaling.png": scaling,
    "training.png": training,
}


def write_plots(results: Results, out: Path) -> list[str]:
    """Write every plot that has data; returns the file names written."""
    written = []
    for name, make in PLOTS.items():
        fig = make(results, results.meta["device_label"])
        if fig is not None:
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            written.append(name)
    return written
