"""Runs the chosen modes in order and puts their sections together into the report.

The ratios, the targets and the JSON file are in ``summary``; ``write_json`` is importable from
here too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from edge.daemon import inference
from edge.tools.bench import inproc
from edge.tools.bench.agreement import agreement_section
from edge.tools.bench.e2e import E2ESettings, run_e2e, step_seconds
from edge.tools.bench.host import HostSettings, run_host
from edge.tools.bench.report import render
from edge.tools.bench.stats import CpuMeter, gate_counts, gate_pass_share, machine_info, peak_rss_mb
from edge.tools.bench.summary import backend_in_strips, ratios, targets, write_json
from edge.tools.bench.workload import StripPool, image_pool, synthetic_pool
from edge.vision.backends.openvino import OpenVinoOptions
from edge.vision.cascade import Cascade
from edge.vision.replicas import WorkerPlan, load_replicas, plan_for, serial_opencv

__all__ = ["MODES", "BenchSettings", "run_bench", "worker_plan", "write_json"]

MODES: Final = ("backend", "pipeline", "naive", "e2e", "host", "agreement")
FORMAT_VERSION: Final = 2
DAEMON_MAX_BATCH: Final = 32  # edge.daemon.config.Config.max_batch
BACKEND_BETWEEN_STEPS_S: Final = 1.0  # bare-model sampling after each e2e step


@dataclass
class BenchSettings:
    models: Path
    modes: Sequence[str] = MODES
    backend: str = "onnxruntime"
    engines: Path | None = None  # TensorRT engine folder
    openvino_device: str = "CPU"
    openvino_precision: str = "auto"
    batches: Sequence[int] = (1, 8, 32)
    defect_rate: float = 0.2
    duration_s: float = 20.0
    memory_s: float | None = None  # the 2x-saturation step; default: duration_s
    images: Path | None = None
    pool_size: int = 100
    seed: int = 0
    workers: int = 0  # as the daemon's `workers`: 0 = auto
    threads: int = 0  # per worker, as the daemon's `threads`
    max_batch: int = 0  # the daemon's max_batch in pipeline and e2e; 0: the backend's best
    rounds: int = 4  # slices the in-process modes are interleaved in
    max_wait_ms: float = 5.0
    queue_size: int = 16
    cameras: int = 2
    command: list[str] = field(default_factory=lambda: list(sys.argv))


def _pool(settings: BenchSettings) -> StripPool:
    if settings.images is not None:
        return image_pool(settings.images, settings.pool_size)
    return synthetic_pool(settings.pool_size, settings.defect_rate, settings.seed)


def _line(settings: BenchSettings, plan: WorkerPlan, max_batch: int) -> E2ESettings:
    """The camera -> daemon -> subscriber line the e2e and host modes run, as told."""
    return E2ESettings(
        models=settings.models,
        backend=settings.backend,
        engines=settings.engines,
        openvino_device=settings.openvino_device,
        openvino_precision=settings.openvino_precision,
        workers=plan.workers,
        threads=plan.threads,
        max_batch=max_batch,
        max_wait_ms=settings.max_wait_ms,
        queue_size=settings.queue_size,
        cameras=settings.cameras,
        **step_seconds(settings.duration_s),
        memory_s=settings.memory_s or settings.duration_s,
        estimate=0.0,  # placed by the caller, from the pipeline mode or a quick estimate
    )


def worker_plan(settings: BenchSettings) -> WorkerPlan:
    """The daemon's plan for these settings on this machine (``edge.vision.replicas``)."""
    return plan_for(
        settings.backend,  # type: ignore[arg-type]
        settings.workers,
        settings.threads,
        engines=settings.engines,
        openvino=_openvino(settings),
    )


def _openvino(settings: BenchSettings) -> OpenVinoOptions:
    """OpenVINO's device and precision as told (load_replicas sets a stream per worker)."""
    return OpenVinoOptions(
        device=settings.openvino_device,
        precision=settings.openvino_precision,  # type: ignore[arg-type]
    )


def _load(settings: BenchSettings, max_batch: int, threads: int) -> Cascade:
    return Cascade.load(
        settings.models,
        settings.backend,  # type: ignore[arg-type]
        max_batch=max_batch,
        threads=threads,
        engines=settings.engines,
        openvino=_openvino(settings),
    )


def _load_cascades(
    settings: BenchSettings, max_batch: int, plan: WorkerPlan, loaded: list[Cascade]
) -> list[Cascade]:
    """One cascade per inference worker, as the daemon loads them (also put on ``loaded``)."""
    cascades = load_replicas(
        settings.models,
        settings.backend,  # type: ignore[arg-type]
        plan=plan,
        max_batch=max_batch,
        engines=settings.engines,
        openvino=_openvino(settings),
    ).cascades
    loaded.extend(cascades)
    return cascades


def _in_process(
    settings: BenchSettings,
    pool: StripPool,
    sections: dict[str, dict[str, Any]],
    cpu: dict[str, Any],
    progress: Progress,
    tasks: dict[str, Any],
    loaded: list[Cascade],
    plan: WorkerPlan,
) -> tuple[int, str, inproc.BackendBench | None]:
    """backend, pipeline and naive, interleaved in rounds.

    Returns the daemon's max_batch, where it came from, and the backend bench (the e2e mode
    samples it again between its steps). The backend mode has its own copies of the models,
    one per worker (sized for its largest batch); pipeline gets one per worker with the
    max_batch the daemon gets, as `edge run` would load them; naive one on all cores, as the
    seed scripts ran. Cascades go on ``loaded`` for the caller to close.
    """
    modes = [m for m in ("backend", "pipeline", "naive") if m in settings.modes]
    rounds = max(1, settings.rounds)
    benches: dict[str, Any] = {}
    load: dict[str, dict[str, float]] = {m: {} for m in modes}
    max_batch, source = settings.max_batch, "--max-batch"
    cascades: list[Cascade] = []
    for mode in modes:
        progress.start_task(tasks[mode])
    for r in range(rounds):
        for mode in modes:
            if mode not in benches:
                if mode == "backend":
                    backend_lanes = _load_cascades(settings, max(settings.batches), plan, loaded)
                    benches[mode] = inproc.BackendBench(backend_lanes, pool, settings.batches)
                else:
                    if not max_batch:
                        max_batch, source = _auto_max_batch(benches.get("backend"))
                    if mode == "pipeline":
                        cascades = _load_cascades(settings, max_batch, plan, loaded)
                        benches[mode] = inproc.PipelineBench(
                            cascades, pool, max_batch=max_batch, cameras=settings.cameras
                        )
                    else:
                        # The seed scripts' way: one session, ONNX Runtime's default threads.
                        loaded.append(_load(settings, max_batch, 0))
                        benches[mode] = inproc.NaiveBench(
                            loaded[-1], pool, cameras=settings.cameras
                        )
            meter = CpuMeter()
            benches[mode].run_for(settings.duration_s / rounds)
            for key, value in meter.stop().items():
                load[mode][key] = load[mode].get(key, 0.0) + (value or 0.0) / rounds
            progress.update(tasks[mode], completed=(r + 1) / rounds)
    for mode in modes:
        sections[mode] = benches[mode].section()
        sections[mode]["settings"].update(seconds=settings.duration_s, rounds=rounds)
        cpu[mode] = {key: round(value, 1) for key, value in load[mode].items()}
    if not max_batch:
        max_batch, source = _auto_max_batch(benches.get("backend"))
    return max_batch, source, benches.get("backend")


def _quick_estimate(
    cascades: list[Cascade], pool: StripPool, max_batch: int, settings: BenchSettings
) -> float:
    """Strips/s of a short pipeline run: where the e2e ramp starts when nothing else ran."""
    bench = inproc.PipelineBench(cascades, pool, max_batch=max_batch, cameras=settings.cameras)
    bench.run_for(min(3.0, settings.duration_s))
    return float(bench.section()["strips_per_s"])


def _auto_max_batch(backend: inproc.BackendBench | None) -> tuple[int, str]:
    if backend is None:
        return DAEMON_MAX_BATCH, "the daemon's default (no backend mode to choose from)"
    best = backend.best_batch()
    return best, (
        f"auto: batch size {best} had the lowest classifier + segmenter cost per tile in the "
        "backend mode's first round"
    )


def run_bench(settings: BenchSettings, console: Console | None = None) -> dict[str, Any]:
    # Piped to a file (a log, CI), Rich would wrap the tables at 80 columns into unreadable
    # fragments; a terminal keeps its own width.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    unknown = [m for m in settings.modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode {unknown[0]!r}; expected one of {[*MODES, 'all']}")
    serial_opencv()  # as the daemon runs it: the in-process modes measure the daemon's work
    started = time.monotonic()
    report: dict[str, Any] = {
        "edge_bench": FORMAT_VERSION,
        "command": " ".join(settings.command),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
    }
    cpu: dict[str, Any] = {}
    progress = Progress(
        TextColumn("[bold]{task.description:<9}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=Console(stderr=True),
        transient=False,
    )
    tasks = {m: progress.add_task(m, total=1.0, note="", start=False) for m in settings.modes}

    def tick(mode: str):
        def update(fraction: float, note: str = "") -> None:
            progress.update(tasks[mode], completed=fraction, note=note)

        return update

    loaded: list[Cascade] = []
    plan = worker_plan(settings)
    with progress:
        try:
            pool = _pool(settings)
            sections: dict[str, dict[str, Any]] = {}
            max_batch, max_batch_source, backend = _in_process(
                settings, pool, sections, cpu, progress, tasks, loaded, plan
            )
            cascade = _load(settings, max_batch, plan.threads)
            loaded.append(cascade)
            report["machine"]["backend"] = cascade.classifier.backend.describe()
            if "agreement" in settings.modes:
                progress.start_task(tasks["agreement"])
                sections["agreement"] = agreement_section(
                    settings.models, settings.backend, cascade, pool, loaded, tick("agreement")
                )
            tiles_per_strip = inference.tiles_per_strip(cascade)
            # One classifier pass over the pool: the events carry no tile counts, so the share
            # of tiles passing the gate (the pool's, with these models) comes from here.
            gate = gate_counts(cascade, pool)
            gate_share = gate_pass_share(gate)
            if "pipeline" in sections:
                sections["pipeline"]["gate_pass_share"] = gate_share
                seg_per_strip = sections["pipeline"]["segmented_tiles_per_strip"]
                seg_source = (
                    "measured in the pipeline run: segmenter tiles / strips processed "
                    "(the whole strip pool, cycled)"
                )
            else:
                seg_per_strip = round(gate["segmenter_tiles"] / gate["strips"], 4)
                seg_source = (
                    "one classifier pass over the strip pool: gated segmenter windows / strips"
                )
            if "e2e" in settings.modes:
                progress.start_task(tasks["e2e"])
                meter = CpuMeter()
                estimate = sections.get("pipeline", {}).get("strips_per_s")
                if not estimate:
                    progress.update(tasks["e2e"], note="estimating")
                    cascades = _load_cascades(settings, max_batch, plan, loaded)
                    estimate = _quick_estimate(cascades, pool, max_batch, settings)

                between_s = min(BACKEND_BETWEEN_STEPS_S, settings.duration_s / 8)

                def between_steps() -> None:
                    # The machine's speed drifts over minutes: sampling the bare models
                    # between e2e steps too measures the ceiling when e2e runs, not only
                    # a minute before.
                    if backend is not None:
                        backend.run_for(between_s, best_only=True)

                sections["e2e"] = run_e2e(
                    pool,
                    replace(_line(settings, plan, max_batch), estimate=float(estimate)),
                    tick("e2e"),
                    between_steps,
                )
                sections["e2e"]["tiles_per_s"] = round(
                    sections["e2e"]["strips_per_s"] * (tiles_per_strip + seg_per_strip), 2
                )
                sections["e2e"]["gate_pass_share"] = gate_share
                cpu["e2e"] = meter.stop()
                progress.update(tasks["e2e"], completed=1.0, note="")
                if backend is not None:
                    sections["backend"] = backend.section()
                    sections["backend"]["settings"].update(
                        seconds=settings.duration_s,
                        rounds=settings.rounds,
                        between_e2e_steps_s=between_s,
                    )
            if "host" in settings.modes:
                progress.start_task(tasks["host"])
                meter = CpuMeter()
                # The stand-ins cost next to nothing, as models on a GPU do: the daemon's own
                # max_batch, not the one the bare models on this CPU ran best at. Their
                # e2e runs on synthetic strips (issue 14's figure: 20 % defective), whatever
                # the other modes run on: on real strips the contrast stand-in flags most tiles.
                null_pool = (
                    pool
                    if pool.source == "synthetic"
                    else synthetic_pool(settings.pool_size, settings.defect_rate, settings.seed)
                )
                sections["host"] = run_host(
                    pool,
                    HostSettings(
                        _line(settings, plan, settings.max_batch or DAEMON_MAX_BATCH),
                        settings.duration_s,
                    ),
                    tick("host"),
                    null_pool=null_pool,
                )
                cpu["host"] = meter.stop()
        finally:
            for each in loaded:
                each.close()
        if "backend" in sections:
            backend_in_strips(sections["backend"], tiles_per_strip, seg_per_strip)

    report["ratios"] = ratios(sections)
    report["targets"] = targets(report["ratios"], sections)
    report["settings"] = {
        **{k: v for k, v in asdict(settings).items() if k != "command"},
        "models": str(settings.models),
        "images": str(settings.images) if settings.images else None,
        "modes": list(settings.modes),
        "batches": list(settings.batches),
        "strip_source": pool.source,
        "strips_in_pool": len(pool),
        "defective_share_of_pool": pool.defective_share,
        "tiles_per_strip": tiles_per_strip,
        "max_batch_used": max_batch,
        "workers_used": plan.workers,
        "threads_per_worker_used": plan.threads,
        "workers_source": plan.reason,
        "max_batch_source": max_batch_source,
        "segmented_tiles_per_strip": seg_per_strip,
        "segmented_tiles_per_strip_source": seg_source,
        "gate_pass_share": gate_share,
        "gate_pass_share_source": "one classifier pass over the strip pool: classifier tiles "
        "scoring at least the gate for some class / classifier tiles",
        "backend_strips_per_s_is": "1 / (tiles_per_strip / classifier best tiles/s "
        "+ segmented_tiles_per_strip / segmenter best tiles/s)",
    }
    for mode in MODES:
        report[mode] = sections.get(mode)
    report["cpu_load"] = cpu
    report["bench_peak_rss_mb"] = round(peak_rss_mb(), 1)
    report["seconds_total"] = round(time.monotonic() - started, 1)
    render(report, console)
    return report
