"""The tables `edge bench` prints at the end."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _hist(hist: Any) -> str:
    if not isinstance(hist, dict) or not hist:
        return "-"
    if all(isinstance(v, dict) for v in hist.values()):
        first = next(iter(hist))
        return f"{first}: " + _hist(hist[first])
    return " ".join(f"{size}x{count}" for size, count in hist.items())


def render(report: dict[str, Any], console: Console) -> None:
    modes = Table(title="edge bench", title_justify="left")
    for column in ("mode", "strips/s", "tiles/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "drops"):
        modes.add_column(column, justify="left" if column == "mode" else "right")
    modes.add_column("batch sizes (size x count)", overflow="fold")
    for mode in ("backend", "pipeline", "naive", "e2e"):
        section = report.get(mode)
        if not section:
            continue
        latency = section.get("latency") or {}
        label = {"backend": "backend (ceiling)", "e2e": "e2e (saturation)"}.get(mode, mode)
        modes.add_row(
            label,
            _num(section.get("strips_per_s")),
            _num(section.get("tiles_per_s")),
            _num(latency.get("p50_ms")),
            _num(latency.get("p95_ms")),
            _num(latency.get("p99_ms")),
            _num(latency.get("max_ms")),
            _num(section.get("drops")),
            _hist(section.get("batch_size_histogram")),
        )
    if modes.row_count:
        console.print(modes)

    backend = report.get("backend")
    if backend:
        models = Table(title="backend: bare models, tiles/s by batch size", title_justify="left")
        models.add_column("model")
        sizes = [r["batch"] for r in backend["classifier"]["runs"]]
        for size in sizes:
            models.add_column(f"batch {size}", justify="right")
        for role in ("classifier", "segmenter"):
            runs = {r["batch"]: r["tiles_per_s"] for r in backend[role]["runs"]}
            models.add_row(role, *(_num(runs.get(size)) for size in sizes))
        console.print(models)

    e2e = report.get("e2e")
    if e2e:
        steps = Table(title="e2e: offered load steps", title_justify="left")
        for column in ("step", "offered/s", "results/s", "p50 ms", "p99 ms", "max ms", "drops"):
            steps.add_column(column, justify="left" if column == "step" else "right")
        for step in e2e["steps"]:
            latency = step["latency"]
            steps.add_row(
                step["name"],
                _num(step["offered_strips_per_s"]),
                _num(step["strips_per_s"]),
                _num(latency.get("p50_ms")),
                _num(latency.get("p99_ms")),
                _num(latency.get("max_ms")),
                _num(step["drops"] + step["missing_in_transport"]),
            )
        console.print(steps)
        memory = e2e["memory"]
        console.print(
            f"memory at 2x saturation for {memory['seconds']:.0f} s: daemon RSS "
            f"{_num(memory['rss_mb_start'])} -> {_num(memory['rss_mb_end'])} MiB "
            f"(max {_num(memory['rss_mb_max'])}), {memory['drops']} drops"
        )

    host = report.get("host")
    if host:
        _host_table(host, console)

    agreement = report.get("agreement")
    if agreement and "per_class" in agreement:
        _agreement_table(agreement, console)

    ratios = Table(title="ratios", title_justify="left")
    for column in ("ratio", "value", "target", "met"):
        ratios.add_column(column, justify="left" if column == "ratio" else "right")
    for key, target in report["targets"].items():
        met = target["met"]
        mark = "-" if met is None else ("[green]yes[/]" if met else "[red]no[/]")
        ratios.add_row(key, _num(target["value"], 3), target["target"], mark)
    console.print(ratios)
    load = report.get("cpu_load") or {}
    busy = {m: v.get("other_pct") for m, v in load.items() if v.get("other_pct") is not None}
    if busy and max(busy.values()) > 10:
        console.print(
            "[yellow]other work used the CPU during the run "
            + ", ".join(f"{m}: {v:.0f}%" for m, v in busy.items())
            + " of all cores; figures are lower than on an idle machine[/]"
        )


def _agreement_table(agreement: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"agreement with FP32 ONNX Runtime on {agreement['strips']} strips "
        f"(same verdict: {agreement['same_verdict']})",
        title_justify="left",
    )
    for column in ("class", "masks IoU", "shared px", "either px"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, figures in agreement["per_class"].items():
        table.add_row(
            name, _num(figures["iou"], 4), _num(figures["shared_px"]), _num(figures["either_px"])
        )
    console.print(table)
    pairs = agreement["pairs_at_iou"]
    console.print(
        f"strip and class pairs with IoU >= {pairs['iou']}: {pairs['count']} of "
        f"{agreement['strip_class_pairs']}"
    )


def _host_table(host: dict[str, Any], console: Console) -> None:
    table = Table(
        title="host: the daemon's own work, on null models with the pair's I/O",
        title_justify="left",
    )
    columns = ("run", "offered/s", "results/s", "results", "CPU ms/strip", "its parts", "drops",
               "gate pass")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "run" else "right")
    for verdict in ("clean", "defective"):
        run = host[verdict]
        table.add_row(
            verdict,
            _num(run["offered_per_s"]),
            _num(run["results"] / run["seconds"] if run["seconds"] else None),
            _num(run["results"]),
            _num(run["cpu_ms_per_strip"], 3),
            " ".join(_num(part, 3) for part in run.get("cpu_ms_per_strip_parts", [])) or "-",
            _num(run["dropped"]),
            _num(run["gate_pass_share"], 3),
        )
    null = host["e2e_null"]
    table.add_row(
        "e2e null (saturation; drops at 80 %)",
        "-",
        _num(null["strips_per_s"]),
        "-",
        "-",
        "-",
        _num(null["drops_at_80"]),
        _num(null["gate_pass_share"], 3),
    )
    console.print(table)
    for verdict in ("clean", "defective"):
        if not host[verdict]["kept_up"]:
            console.print(f"[yellow]host {verdict}: {host[verdict]['note']}[/]")
