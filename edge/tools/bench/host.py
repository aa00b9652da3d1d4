"""The host mode: the daemon's own CPU per strip, on null models with the configured pair's I/O.

The models are replaced by near-free stand-ins (``null_models``) with the very inputs and
outputs of the pair in ``--models``, so what is left is the daemon's work around them: receive,
check, tile and normalise, gate, stitch, threshold, components, RLE, publish. That is the part
a GPU does not make cheaper, and the part that decides how many cameras one box can serve.

- ``clean`` and ``defective``: the line of the e2e mode (camera process -> `edge run` ->
  subscriber process) on the null pair of that verdict, at a fixed rate the daemon keeps up
  with; the daemon's utime + stime (``/proc/<pid>/stat``) over the measured window / the results
  answered for the frames of that window. ``clean`` is the floor (no tile passes the gate),
  ``defective`` the worst case (every pixel of every class a defect).
- ``e2e_null``: the e2e load ramp on the ``contrast`` null pair (a verdict of the pixels, so the
  bench's pool gives a realistic mix): the throughput the daemon's own work allows.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from edge.tools.bench.e2e import E2ESettings, daemon_options, offer, run_e2e
from edge.tools.bench.e2e_processes import start_line
from edge.tools.bench.e2e_results import Step, shed, step_figures
from edge.tools.bench.null_models import Verdict, write_null_repository
from edge.tools.bench.stats import (
    ThreadUse,
    gate_counts,
    gate_pass_share,
    process_cpu_s,
    thread_use,
)
from edge.tools.bench.summary import TARGETS
from edge.tools.bench.workload import StripPool
from edge.vision.cascade import Cascade

__all__ = ["RATES", "HostSettings", "run_host"]

# Offered strips/s (all cameras together): well under what the daemon does on null models
# here, so the figure is the cost of a strip, not of overload handling (checked: `dropped`).
RATES: Final[dict[str, float]] = {"clean": 300.0, "defective": 40.0}
WARM_S: Final = 1.0  # first batches allocate; before the measured window
IDLE_S: Final = 0.5  # the daemon's CPU with no frames coming, after the warm-up
# The measured window is offered in this many parts, each drained before the next, and each
# part's CPU per strip is reported beside the whole's: on a shared VM the same build measures
# 15-35 % apart from one run to the next (docs/performance.md); the spread says how far one
# figure carries.
WINDOW_PARTS: Final = 3
NULL_E2E_ESTIMATE: Final = 1000.0  # strips/s: where the null e2e ramp starts
BACKEND: Final = "onnxruntime"  # the null models are ONNX; they cost next to nothing anywhere


@dataclass
class HostSettings:
    line: E2ESettings  # the daemon's settings as the e2e mode runs it; models: the pair to mimic
    duration_s: float  # the measured window of clean and defective; scales the null ramp


def _e2e_settings(settings: HostSettings, models: Path) -> E2ESettings:
    """The e2e line on the stand-ins in ``models``: ONNX Runtime, no 2x step."""
    return replace(
        settings.line,
        models=models,
        backend=BACKEND,
        engines=None,
        memory_s=0.0,  # no 2x step: memory is the e2e mode's check
        estimate=NULL_E2E_ESTIMATE,
    )


def _gate(models: Path, pool: StripPool, max_batch: int) -> tuple[float | None, dict[str, str]]:
    """Share of classifier tiles passing the gate on the pool, in process; the pair's ids."""
    cascade = Cascade.load(models, BACKEND, max_batch=max_batch, threads=1)
    try:
        return gate_pass_share(gate_counts(cascade, pool)), cascade.model_ids
    finally:
        cascade.close()


def _per_name(
    before: dict[int, ThreadUse], after: dict[int, ThreadUse], results: int
) -> dict[str, dict[str, Any]]:
    """CPU and context switches over the window per OS thread name (threads of one name
    summed), most CPU first."""
    names: dict[str, dict[str, Any]] = {}
    for tid, use in after.items():
        start = before.get(tid, ThreadUse(use.comm, 0.0, 0))
        entry = names.setdefault(use.comm, {"threads": 0, "cpu_s": 0.0, "switches": 0})
        entry["threads"] += 1
        entry["cpu_s"] += use.cpu_s - start.cpu_s
        entry["switches"] += use.switches - start.switches
    for entry in names.values():
        entry["cpu_ms_per_strip"] = round(entry["cpu_s"] * 1000 / results, 4) if results else None
        entry["switches_per_strip"] = round(entry["switches"] / results, 2) if results else None
        entry["cpu_s"] = round(entry["cpu_s"], 3)
    return dict(sorted(names.items(), key=lambda item: -item[1]["cpu_s"]))


def _cpu_s(pid: int) -> float:
    cpu = process_cpu_s(pid)
    if cpu is None:
        raise RuntimeError(f"could not read the daemon's CPU time from /proc/{pid}/stat")
    return cpu


def _cpu_per_strip(
    verdict: Verdict, models: Path, strips: Path, settings: HostSettings, work: Path
) -> dict[str, Any]:
    """The daemon on this null pair at RATES[verdict] for ``duration_s``: its CPU per result."""
    rate = RATES[verdict]
    work.mkdir()
    options = daemon_options(_e2e_settings(settings, models))
    with start_line(strips, settings.line.cameras, options, work) as line:
        pid = line.daemon.proc.pid
        snapshot = work / "events.npy"
        offer(line, snapshot, Step("warm-up", rate, WARM_S))
        # What the daemon costs with nothing to do (status messages, polling), for reference.
        idle0, idle_wall0 = _cpu_s(pid), time.monotonic()
        time.sleep(IDLE_S)
        idle1, idle_wall1 = _cpu_s(pid), time.monotonic()
        threads0, wall0 = thread_use(pid), time.monotonic()
        parts: list[tuple[Step, float, float]] = []  # (part, daemon CPU s before, after)
        for n in range(WINDOW_PARTS):
            before = _cpu_s(pid)
            # Until every frame of the part is answered (offer drains): all their work is in.
            part = Step(
                f"{verdict} {n + 1}/{WINDOW_PARTS}", rate, settings.duration_s / WINDOW_PARTS
            )
            parts.append((offer(line, snapshot, part), before, _cpu_s(pid)))
        threads1, wall1 = thread_use(pid), time.monotonic()
        records = np.load(snapshot)
    cpu0, cpu1 = parts[0][1], parts[-1][2]
    # The whole window's figures, from the events of all its parts (none came between them).
    step = Step(verdict, rate, settings.duration_s, sent=sum(p.sent for p, _, _ in parts),
                start_ns=parts[0][0].start_ns, end_ns=parts[-1][0].end_ns)  # fmt: skip
    step.figures = step_figures(step, records)
    fig = step.figures
    results = fig["results"]
    cpu_s = cpu1 - cpu0
    dropped = shed(fig) + fig["unanswered"]
    section: dict[str, Any] = {
        "cpu_ms_per_strip": round(cpu_s * 1000 / results, 4) if results else None,
        # The same figure for each part of the window, in order: how much it moves.
        "cpu_ms_per_strip_parts": [
            round((after - before) * 1000 / p.figures["results"], 4)
            if p.figures["results"]
            else None
            for p, before, after in parts
        ],
        "cpu_s": round(cpu_s, 3),
        "results": results,
        "defective_results": fig["defective_results"],
        "dropped": dropped,
        "dropped_as": {
            "drop_events": fig["drops"],
            "missing_in_transport": fig["missing_in_transport"],
            "unanswered": fig["unanswered"],
        },
        "rejects": fig["rejects"],
        "kept_up": dropped == 0 and fig["rejects"] == 0,
        "offered_per_s": rate,
        "sent": fig["sent"],
        "seconds": fig["seconds"],
        "cpu_window_s": round(wall1 - wall0, 3),
        # Of one core, over the window (the offer and the wait for its last events).
        "daemon_cpu_pct": round(100 * cpu_s / max(wall1 - wall0, 1e-9), 1),
        # Not taken off cpu_ms_per_strip: a daemon pays it on a line too.
        "idle_cpu_pct": round(100 * (idle1 - idle0) / max(idle_wall1 - idle_wall0, 1e-9), 1),
        "latency": fig["latency"],
        "daemon_latency": fig["daemon_latency"],
        # The daemon names its threads in the OS (receiver, inference-N, finishing-N,
        # publisher); ZeroMQ's are ZMQbg/*; its main thread keeps the process's name.
        "threads_by_name": _per_name(threads0, threads1, results),
        "daemon": line.daemon_chose,
    }
    if not section["kept_up"]:
        section["note"] = (
            f"{dropped} frames shed and {fig['rejects']} rejected at {rate:g} strips/s: the "
            "daemon did not keep up, so the figure includes overload handling"
        )
    return section


def _null_e2e(section: dict[str, Any], gate_share: float | None) -> dict[str, Any]:
    """The parts of an e2e section that the host report carries."""
    return {
        "strips_per_s": section["strips_per_s"],
        "saturated": section["saturated"],
        "gate_pass_share": gate_share,
        "latency": section["latency"],
        "latency_at": section["latency_at"],
        "tail_inflation": section["tail_inflation"],
        "drops_at_80": section["drops_at_80"],
        "drop_share_at_80": section["drop_share_at_80"],
        "steps": section["steps"],
        "accounting": section["accounting"],
        "batch_size_histogram": section["batch_size_histogram"],
        "settings": section["settings"],
    }


def run_host(
    pool: StripPool,
    settings: HostSettings,
    progress: Callable[[float, str], None] = lambda fraction, note: None,
    null_pool: StripPool | None = None,
) -> dict[str, Any]:
    """The host section of the report: clean, defective, e2e_null and the targets.

    ``null_pool``: the strips of the e2e on the contrast stand-ins (default: ``pool``)."""
    null_pool = pool if null_pool is None else null_pool
    section: dict[str, Any] = {}
    models: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-bench-host-") as tmp:
        work = Path(tmp)
        strips = pool.save(work / "strips.npy")
        for n, verdict in enumerate(("clean", "defective")):
            progress(n / 4, verdict)
            repo = write_null_repository(settings.line.models, work / f"null-{verdict}", verdict)
            share, models[verdict] = _gate(repo, pool, settings.line.max_batch)
            section[verdict] = _cpu_per_strip(verdict, repo, strips, settings, work / verdict)
            section[verdict]["gate_pass_share"] = share
        repo = write_null_repository(settings.line.models, work / "null-contrast", "contrast")
        share, models["contrast"] = _gate(repo, null_pool, settings.line.max_batch)
        e2e = run_e2e(
            null_pool,
            _e2e_settings(settings, repo),
            lambda fraction, note: progress(0.5 + fraction / 2, f"null e2e: {note}"),
        )
        section["e2e_null"] = _null_e2e(e2e, share)
    section["targets"] = {
        "clean_ms": TARGETS["host_clean_cpu_ms"][1],
        "defective_ms": TARGETS["host_defective_cpu_ms"][1],
        "e2e_null_strips_per_s": TARGETS["e2e_null_strips_per_s"][1],
    }
    section["settings"] = {
        "like": str(settings.line.models),
        "null_models": models,
        "backend": BACKEND,
        "offered_per_s": dict(RATES),
        "warm_up_s": WARM_S,
        "window_parts": WINDOW_PARTS,
        "idle_s": IDLE_S,
        "seconds": settings.duration_s,
        "e2e_null_estimate_strips_per_s": NULL_E2E_ESTIMATE,
        "e2e_null_pool": null_pool.source,
        "e2e_null_pool_defective_share": null_pool.defective_share,
        "workers": settings.line.workers,
        "threads": settings.line.threads,
        "max_batch": settings.line.max_batch,
        "cameras": settings.line.cameras,
        "cpu_ms_per_strip_is": "the daemon's utime + stime (/proc/<pid>/stat) from the start "
        "of the measured window until its frames were answered, / results for those frames",
    }
    progress(1.0, "")
    return section
