"""Turn results into what a person reads: summary tables (terminal and markdown), findings,
results.json and results.csv. Every table says which device its numbers came from."""

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable

from .core import ROW_FIELDS, Results, describe
from .models import FUSE_BN, RECOMPUTE
from .providers import OURS, PROVIDERS

MiB = 2**20


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]


def ok(results: Results, section: str, **match) -> list[dict]:
    return [r for r in results.rows(section, **match) if r["status"] == "ok"]


def geomean(values) -> float | None:
    values = [v for v in values if v]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def fx(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}x"


def fmib(v: float | None) -> str:
    return "-" if v is None else f"{v / MiB:,.1f} MiB"


def fnum(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def ordered(values, preferred) -> list:
    present = set(values)
    return [v for v in preferred if v in present] + sorted(present - set(preferred), key=str)


def main_pass(rows: list[dict]) -> str:
    passes = {r["pass"] for r in rows}
    return "forward+backward" if "forward+backward" in passes else sorted(passes)[0]


def smallest_map(rows: list[dict]) -> str | None:
    maps = [r for r in rows if r["layout"] == "nchw"]
    return min(maps, key=lambda r: r["numel"])["shape"] if maps else None


def micro_table(results: Results, label: str) -> Table | None:
    rows = ok(results, "micro")
    if not rows:
        return None
    pass_name = main_pass(rows)
    rows = [r for r in rows if r["pass"] == pass_name]
    others = [p for p in PROVIDERS if p != OURS and any(r["provider"] == p for r in rows)]
    smallest = smallest_map(rows)
    headers = ["activation", "dtype", "ours % roofline"] + [f"vs {p}" for p in others]
    headers += [f"vs eager @ {smallest}"] if smallest else []
    table = []
    plan = results.meta["plan"]
    for act in ordered({r["activation"] for r in rows}, plan["activations"]):
        for dtype in ordered({r["dtype"] for r in rows}, plan["dtypes"]):
            case = [r for r in rows if r["activation"] == act and r["dtype"] == dtype]
            ours = [r for r in case if r["provider"] == OURS]
            if not ours:
                continue
            largest = max(ours, key=lambda r: r["numel"])
            pct = largest["roofline_pct"]
            line = [act, dtype, "-" if pct is None else f"{pct:.0f}% ({largest['shape']})"]
            line += [fx(geomean(r["speedup_x"] for r in case if r["provider"] == p)) for p in others]
            if smallest:
                at = [r for r in case if r["provider"] == "eager" and r["shape"] == smallest and r["layout"] == "nchw"]
                line.append(fx(at[0]["speedup_x"]) if at else "-")
            table.append(line)
    title = f"{label}: {pass_name}, speedup of ours = provider time / ours (geometric mean over shapes)"
    return Table(title, headers, table)


def memory_table(results: Results, label: str) -> Table | None:
    rows = ok(results, "memory")
    if not rows:
        return None
    first = rows[0]
    rows = [
        r for r in rows if (r["dtype"], r["shape"], r["layout"]) == (first["dtype"], first["shape"], first["layout"])
    ]
    providers = [p for p in PROVIDERS if any(r["provider"] == p for r in rows)]
    has_peak = any(r["peak_bytes"] is not None for r in rows)
    headers = (
        ["activation"] + [f"{p} saved" for p in providers] + ([f"{p} peak" for p in providers] if has_peak else [])
    )
    table = []
    for act in ordered({r["activation"] for r in rows}, results.meta["plan"]["activations"]):
        by = {r["provider"]: r for r in rows if r["activation"] == act}
        line = [act] + [f"{fx(by[p]['saved_x_input'])} ({by[p]['saves']})" if p in by else "-" for p in providers]
        if has_peak:
            line += [fx(by[p]["peak_x_input"]) if p in by else "-" for p in providers]
        table.append(line)
    title = (
        f"{label}: bytes saved for backward{' and peak of forward+backward' if has_peak else ''}, multiples of "
        f"the input ({first['shape']} {first['layout']}, {first['dtype']})"
    )
    return Table(title, headers, table)


def blocks_table(results: Results, label: str) -> Table | None:
    rows = results.rows("blocks")
    if not rows:
        return None
    providers = ordered({r["provider"] for r in rows}, ["eager", OURS])
    headers = ["activation"] + [f"{p} saved" for p in providers] + [f"{p} time" for p in providers]
    table = []
    for act in ordered({r["activation"] for r in rows}, results.meta["plan"]["activations"]):
        by = {r["provider"]: r for r in rows if r["activation"] == act}
        done = {p: by[p] for p in providers if p in by and by[p]["status"] == "ok"}
        line = [act]
        line += [
            f"{done[p]['saved_x_feature']:.2f} maps" if p in done else by.get(p, {}).get("status", "-")
            for p in providers
        ]
        line += [f"{done[p]['time_ms']:.3f} ms" if p in done and done[p]["time_ms"] else "-" for p in providers]
        table.append(line)
    first = rows[0]
    title = (
        f"{label}: interior Conv-BN-act block ({first['shape']}, {first['dtype']}): "
        "saved for backward in feature maps, forward+backward time"
    )
    return Table(title, headers, table)


def bn_act_table(results: Results, label: str) -> Table | None:
    rows = ok(results, "bn_act")
    if not rows:
        return None
    pass_name = main_pass(rows)
    rows = [r for r in rows if r["pass"] == pass_name]
    providers = ordered({r["provider"] for r in rows}, [OURS, "eager", "compile"])
    others = [p for p in providers if p != OURS]
    headers = ["activation", "shape"] + [f"{p} ms" for p in providers] + [f"vs {p}" for p in others]
    table = []
    plan = results.meta["plan"]
    for act in ordered({r["activation"] for r in rows}, plan["activations"]):
        for shape, layout in ordered({(r["shape"], r["layout"]) for r in rows}, []):
            by = {r["provider"]: r for r in rows if (r["activation"], r["shape"], r["layout"]) == (act, shape, layout)}
            line = [act, f"{shape} {layout}"] + [fnum(by[p]["time_ms"], 3) if p in by else "-" for p in providers]
            table.append(line + [fx(by[p]["speedup_x"]) if p in by else "-" for p in others])
    title = (
        f"{label}: BatchNorm2d + activation, training mode, {pass_name} ({rows[0]['dtype']} maps, float32 "
        "parameters): time per call and speedup of ours (provider time / ours)"
    )
    return Table(title, headers, table)


def model_table(results: Results, label: str) -> Table | None:
    rows = results.rows("model")
    if not rows:
        return None
    stock = [r for r in rows if r["provider"] == "stock" and r["status"] == "ok"]
    ours = (OURS, FUSE_BN, RECOMPUTE)
    headers = ["activation", "sites", "torch.nn saved", *(f"{p} saved" for p in ours)]
    headers += [*(f"{p} / torch.nn" for p in ours), f"{FUSE_BN} vs stock"]
    table = [["(stock)", "-", fmib(stock[0]["saved_bytes"]) if stock else "-", *["-"] * 2 * len(ours), "1.00x"]]
    for act in ordered({r["activation"] for r in rows if r["activation"]}, results.meta["plan"]["activations"]):
        by = {r["provider"]: r for r in rows if r["activation"] == act}
        eager, mine = by.get("eager"), by.get(OURS)
        if not (eager and mine and eager["status"] == mine["status"] == "ok" and all(p in by for p in ours)):
            why = next((r["error"] for r in (mine, eager) if r and r["error"]), "not measured")
            table.append([act, "-", "-", *["-"] * len(ours), why, *["-"] * len(ours)])
            continue
        done = [by[p] if by[p]["status"] == "ok" else None for p in ours]
        table.append(
            [
                act,
                str(by[OURS]["replaced"]),
                fmib(eager["saved_bytes"]),
                *(fmib(r["saved_bytes"]) if r else by[p]["status"] for p, r in zip(ours, done)),
                *(fx(r and r["saved_bytes"] / eager["saved_bytes"], 3) for r in done),  # against a 0.75x target
                fx(done[1] and done[1]["saved_x_stock"]),
            ]
        )
    title = f"{label}: {rows[0]['model']} training forward ({rows[0]['input_shape']}), bytes saved for backward"
    return Table(title, headers, table)


def host_label(row: dict) -> str:
    """What a host row compares, in words."""
    variant = "" if row["variant"] in (None, "-") else f" {row['variant']}"
    return {
        "activation": f"{row['activation']}{variant}",
        "bn_act": f"BatchNormAct2d {row['activation']}{variant}",
        "block": f"Conv-BN-SiLU block{variant}",
        "model": f"YOLO11n{variant}",
    }.get(row["kind"], f"{row['kind']}{variant}")


def host_stubbed(results: Results) -> str:
    return ", launches stubbed" if results.meta.get("host", {}).get("launches") == "launches stubbed" else ""


def host_table(results: Results, label: str) -> Table | None:
    rows = results.rows("host")
    if not rows:
        return None
    headers = ["compares", "policy", "us ours / torch.nn", "ours / torch.nn", "target: met", "Python calls", "launches"]
    table = []
    for r in rows:
        if r["status"] != "ok":
            table.append([host_label(r), r["policy"] or "-", f"{r['status']}: {r['error']}", *["-"] * 4])
            continue
        target = "-" if r["target_x"] is None else f"<= {r['target_x']:.2f}x: {'yes' if r['met'] else 'NO'}"
        torch_launches = "-" if r["torch_launches"] is None else r["torch_launches"]
        table.append(
            [
                host_label(r),
                r["policy"],
                f"{fnum(r['ours_us'])} / {fnum(r['torch_us'])}",
                fx(r["ratio_x"]),
                target,
                f"{r['ours_calls']} / {r['torch_calls']}",
                f"{r['ours_launches']} / {torch_launches}",
            ]
        )
    shapes = " (YOLO11n: " + ", ".join(sorted({r["shape"] for r in rows if r["kind"] == "model"})) + ")"
    maps = sorted({r["shape"] for r in rows if r["kind"] != "model"})
    title = (
        f"{label}{host_stubbed(results)}: host cost per forward+backward on {', '.join(maps)} float32 maps"
        f"{shapes if any(r['kind'] == 'model' for r in rows) else ''}, ours against torch.nn timed side by side "
        f"(median of {results.meta.get('host', {}).get('rounds', '?')} interleaved rounds; policy off: our "
        "kernels' route, on: the policy's default; Python calls and launches ours / torch.nn)"
    )
    return Table(title, headers, table)


def scaling_table(results: Results, label: str) -> Table | None:
    rows = ok(results, "scaling", provider="eager")
    if not rows:
        return None
    sizes = sorted({r["size_bytes"] for r in rows})
    headers = ["activation"] + [size_label(s) for s in sizes]
    table = []
    for act in ordered({r["activation"] for r in rows}, results.meta["plan"]["activations"]):
        by = {r["size_bytes"]: r["speedup_x"] for r in rows if r["activation"] == act}
        table.append([act] + [fx(by.get(s)) for s in sizes])
    title = f"{label}: forward+backward ({rows[0]['dtype']}) by tensor size, speedup of ours over eager"
    return Table(title, headers, table)


def training_table(results: Results, label: str) -> Table | None:
    rows = results.rows("training")
    if not rows:
        return None
    has_peak = any(r["peak_bytes"] is not None for r in rows)  # CUDA only
    headers = ["model", "precision", "batch", "variant", "step ms", *(["peak"] if has_peak else []), "ours faster by"]
    table = [
        [
            r["model"],
            r["precision"],
            str(r["batch"]),
            r["variant"],
            fnum(r["step_ms"]) if r["status"] == "ok" else f"{r['status']}: {r['error']}",
            *([fmib(r["peak_bytes"])] if has_peak else []),
            fx(r["speedup_x"]) if r["provider"] == "eager" else "",
        ]
        for r in rows
    ]
    return Table(f"{label}: training step (median)", headers, table)


def failures_table(results: Results) -> Table | None:
    seen: dict[tuple, int] = {}
    for name, section in results.sections.items():
        for r in section.rows:
            if r["status"] != "ok":
                key = (name, r.get("provider") or "", r["status"], r["error"])
                seen[key] = seen.get(key, 0) + 1
    if not seen:
        return None
    rows = [[s, p, st, e, str(n)] for (s, p, st, e), n in seen.items()]
    return Table("Rows not measured (reported, not fatal)", ["section", "provider", "status", "reason", "rows"], rows)


def size_label(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", MiB), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"


def tables(results: Results) -> list[Table]:
    label = results.meta["device_label"]
    makers = (
        micro_table,
        memory_table,
        blocks_table,
        bn_act_table,
        host_table,
        model_table,
        scaling_table,
        training_table,
    )
    made = []
    for make in makers:
        try:
            made.append(make(results, label))
        except Exception as e:  # a section cut short must not cost the rest of the report
            made.append(Table(f"{label}: {make.__name__} not drawn ({describe(e)})", ["-"], []))
    return [t for t in [*made, failures_table(results)] if t]


def findings(results: Results) -> list[str]:
    """Plain sentences: the roofline, where ours loses to eager and why, memory saved."""
    label = results.meta["device_label"]
    out = []
    roof = results.meta.get("roofline")
    if roof:
        out.append(
            f"{label}: copy roofline {roof['copy_GBps']:,.0f} GB/s ({size_label(roof['copy_bytes'] // 2)} copied)."
        )
    if label == "CPU":
        out.append(
            "CPU figures: without a GPU our ops run PyTorch's own kernels behind our modules, so 'ours vs eager' "
            "here measures our Python's overhead only, and no roofline share is given (these tensors sit in the CPU's "
            "caches, so a memory copy is no ceiling for them); the host section runs our kernels' route instead, "
            "with Triton's launches stubbed. GPU timings need a GPU (make gpu-check, or python -m benchmarks on a "
            "CUDA machine)."
        )
    rows = [r for r in ok(results, "micro", provider="eager") if r["pass"] == "forward+backward"]
    smallest = smallest_map(rows)
    if smallest:
        slow = [r for r in rows if r["shape"] == smallest and r["layout"] == "nchw" and (r["speedup_x"] or 1) < 1]
        listed = ", ".join(f"{r['activation']} {r['dtype']} ({fx(r['speedup_x'])})" for r in slow)
        verdict = f"ours is slower than eager for {listed}" if slow else "ours is at least as fast as eager"
        out.append(f"{label}: at the smallest feature map {smallest}, forward+backward time per call, {verdict}.")
    scaling = ok(results, "scaling", provider="eager")
    losing = {}
    for act in ordered({r["activation"] for r in scaling}, results.meta["plan"]["activations"]):
        sizes = [r["size_bytes"] for r in scaling if r["activation"] == act and (r["speedup_x"] or 1) < 1]
        if sizes:
            losing[act] = size_label(max(sizes))
    if losing:
        largest = size_label(max(r["size_bytes"] for r in scaling))
        listed = ", ".join(f"{act} {size}" for act, size in losing.items())
        out.append(
            f"{label}: size sweep (forward+backward timed back to back, host cost included, up to {largest}): "
            f"the largest size where ours is slower than eager: {listed}."
        )
    host = [r for r in ok(results, "host") if r["met"] is not None]
    if host:
        missed = ", ".join(
            f"{host_label(r)} {fx(r['ratio_x'])} (target {fx(r['target_x'])})" for r in host if not r["met"]
        )
        figures = results.meta["host"]["policy"]
        out.append(
            f"{label}{host_stubbed(results)}: host cost per forward+backward against torch.nn, "
            f"{sum(r['met'] for r in host)} of {len(host)} targets met"
            + (f"; missed: {missed}." if missed else ".")
            + f" The policy runs PyTorch's op for SiLU, Hardswish, ReLU and GELU maps below "
            f"{figures['native_below_bytes'] / 1e6:,.0f} MB (host {figures['host_us']:g} us per forward+backward "
            f"assumed)."
        )
    bn_act = [r for r in ok(results, "bn_act") if r["pass"] == "forward+backward" and r["provider"] != OURS]
    for provider in ordered({r["provider"] for r in bn_act}, ["eager", "compile"]):
        ratios = [r["speedup_x"] for r in bn_act if r["provider"] == provider and r["speedup_x"]]
        if ratios:
            out.append(
                f"{label}: BatchNorm2d + activation forward+backward, ours fused against {provider}: "
                f"{fx(geomean(ratios))} (geometric mean of {len(ratios)} cases, {fx(min(ratios))} to "
                f"{fx(max(ratios))}; above 1: ours is faster)."
            )
    training = ok(results, "training")
    for r in training:
        if r["provider"] not in (FUSE_BN, RECOMPUTE) or not r["peak_bytes"]:
            continue
        same = (r["model"], r["precision"], r["activation"])
        eager = [
            e for e in training if e["provider"] == "eager" and (e["model"], e["precision"], e["activation"]) == same
        ]
        if eager and eager[0]["peak_bytes"]:
            out.append(
                f"{label}: {r['model']} {r['precision']} training step with {r['activation']}: peak memory with "
                f"{r['provider']} {fx(r['peak_bytes'] / eager[0]['peak_bytes'], 3)} of torch.nn's "
                f"({fmib(r['peak_bytes'])} vs {fmib(eager[0]['peak_bytes'])}), step "
                f"{fnum(r['step_ms'])} ms vs {fnum(eager[0]['step_ms'])} ms."
            )
    blocks = ok(results, "blocks")
    for act in ordered({r["activation"] for r in blocks}, results.meta["plan"]["activations"]):
        by = {r["provider"]: r["saved_x_feature"] for r in blocks if r["activation"] == act}
        if OURS in by and "eager" in by and by[OURS] < by["eager"] - 0.5:
            out.append(
                f"{act}: an interior Conv-BN-{act} block keeps {by[OURS]:.1f} feature maps for backward with ours, "
                f"{by['eager']:.1f} with torch.nn."
            )
    return out + results.notes


LOG_WIDTH = 1000
"""Columns when stdout is no terminal: rich would cut tables and findings at 80, and a log has room."""


def stdout_console() -> Console:
    """A terminal's own width; a log's (stdout not a terminal) wide enough for every table at full width."""
    return Console() if Console().is_terminal else Console(width=LOG_WIDTH)


def print_tables(results: Results, console: Console) -> None:
    for t in tables(results):
        table = RichTable(title=t.title, title_justify="left")
        for h in t.headers:
            table.add_column(h)
        for row in t.rows:
            table.add_row(*row)
        console.print(table)
    for line in findings(results):
        console.print(f"- {line}")


def _md_table(t: Table) -> str:
    cells = lambda row: "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"  # noqa: E731
    return "\n".join([f"### {t.title}", "", cells(t.headers), cells(["---"] * len(t.headers)), *map(cells, t.rows)])


def markdown(results: Results, plots: list[str]) -> str:
    m = results.meta
    head = [
        f"# rtdetr-fused benchmark: {m['device_label']}",
        "",
        f"- Date: {m['created']}; device: {m['device_name']}"
        + (f", driver {m['driver']}, CUDA {m['cuda_runtime']}" if m["device_label"] != "CPU" else ""),
        f"- Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items() if v)}; Python {m['python']}",
        f"- Commit: {m['git_commit'] or 'unknown'}{' (uncommitted changes)' if m['git_dirty'] else ''}",
        f"- Command: `{m['command']}`; wall time {m.get('wall_s', 0):.0f} s",
        "",
        "## Findings",
        "",
        *[f"- {line}" for line in findings(results)],
        "",
        "## Sections",
        "",
        *[f"- {name}: {s.status}{' (' + s.reason + ')' if s.reason else ''}" for name, s in results.sections.items()],
        "",
    ]
    body = [_md_table(t) + "\n" for t in tables(results)]
    pictures = ["## Plots", "", *[f"![{p}]({p})" for p in plots], ""] if plots else []
    tail = ["Every number, with its unit, is in results.json; one row per measurement in results.csv.", ""]
    return "\n".join(head + body + pictures + tail)


def write_json(results: Results, path: Path) -> None:
    path.write_text(json.dumps(results.to_dict(), indent=1, default=str) + "\n")


def write_csv(results: Results, path: Path) -> None:
    """One row per measurement of every section; a column is empty where a section lacks it."""
    fields = ["section"] + list(dict.fromkeys(f for names in ROW_FIELDS.values() for f in names))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for name, section in results.sections.items():
            for row in section.rows:
                writer.writerow({"section": name, **row})
