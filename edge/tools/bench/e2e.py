"""The e2e mode: a camera process -> a real `edge run` process -> a subscriber process.

Everything crosses ZeroMQ on 127.0.0.1, as on a line. The offered load is stepped up until the
daemon saturates (it sheds load: drop events), then held at 10 % of that (the latency the strips
cost on their own), at 80 % for latency under load (``tail_inflation`` is the ratio of the two
p99s), then at 2x for the memory check. Latency is the camera's capture ``ts_ns`` (its header) to the moment
the subscriber receives the event, on this machine's one wall clock.

Here: the load steps. The processes are started and stopped by ``e2e_processes``; each step's
figures and the report section are worked out in ``e2e_results``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.tools.bench.e2e_processes import REPLY_TIMEOUT_S, Agent, E2EError, Line, start_line
from edge.tools.bench.e2e_results import (
    Step,
    between_rate,
    e2e_section,
    low_rate,
    saturated,
    step_figures,
)
from edge.tools.bench.workload import StripPool

__all__ = ["E2EError", "E2ESettings", "daemon_options", "offer", "run_e2e"]


@dataclass
class E2ESettings:
    models: Path
    backend: str
    workers: int
    threads: int
    max_batch: int
    max_wait_ms: float
    queue_size: int
    cameras: int
    step_s: float  # seconds of each ramp step and of the low-load step
    latency_s: float  # seconds at 80 % of saturation
    memory_s: float  # seconds at 2x saturation; 0: no such step (no memory figures)
    estimate: float  # expected saturation, strips/s, to place the ramp
    engines: Path | None = None  # TensorRT engine folder (--backend tensorrt/auto)
    openvino_device: str = "CPU"  # --backend openvino/auto
    openvino_precision: str = "auto"


def step_seconds(duration_s: float) -> dict[str, float]:
    """The ramp/low-load step and the 80 % step, scaled from the bench's ``--duration``."""
    return {"step_s": max(duration_s / 4, 1.0), "latency_s": max(duration_s, 2.0)}


def daemon_options(settings: E2ESettings) -> list[str]:
    """`edge run`'s options after its --source list."""
    return [
        "--publish", "tcp://127.0.0.1:*",
        "--models", str(settings.models),
        "--backend", settings.backend,
        *(["--engines", str(settings.engines)] if settings.engines else []),
        "--openvino-device", settings.openvino_device,
        "--openvino-precision", settings.openvino_precision,
        "--workers", str(settings.workers),
        "--threads", str(settings.threads),
        "--max-batch", str(settings.max_batch),
        "--max-wait-ms", str(settings.max_wait_ms),
        "--queue-size", str(settings.queue_size),
        "--overload", "drop-oldest",
        "--daemon-id", "bench",
        "--log-format", "json",
        "--log-level", "info",
    ]  # fmt: skip


def offer(line: Line, snapshot: Path, step: Step) -> Step:
    """Offer ``step``'s load, wait until its frames are answered; its figures filled in."""
    line.sampler.enter(step)
    reply = line.camera.ask(
        timeout_s=step.seconds + REPLY_TIMEOUT_S,
        cmd="offer",
        rate=step.offered,
        seconds=step.seconds,
    )
    line.sampler.enter(None)
    step.sent, step.start_ns, step.end_ns = reply["sent"], reply["start_ns"], reply["end_ns"]
    _drain(line.subscriber, snapshot, step)
    step.figures = step_figures(step, np.load(snapshot))
    return step


def run_e2e(
    pool: StripPool,
    settings: E2ESettings,
    progress: Callable[[float, str], None],
    between_steps: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Start the three processes, step the load, stop them; the e2e section of the report.

    ``between_steps`` runs after each step has drained, while the daemon is idle.
    """
    planned = (
        2 * settings.step_s + 4 * settings.step_s + settings.latency_s + settings.memory_s + 10
    )
    done = 0.0

    def advance(seconds: float, what: str) -> None:
        nonlocal done
        done += seconds
        progress(min(done / planned, 1.0), what)

    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        strips = pool.save(work / "strips.npy")
        with start_line(strips, settings.cameras, daemon_options(settings), work) as line:
            advance(5, "started")
            snapshot = work / "events.npy"

            def step(name: str, rate: float, seconds: float) -> Step:
                done = offer(line, snapshot, Step(name, rate, seconds))
                advance(seconds, name)
                between_steps()
                return done

            estimate = max(settings.estimate, 0.5)

            def ramp_step(rate: float) -> Step:
                return step(f"ramp {rate / estimate:.3g}x", rate, settings.step_s)

            # Warm-up: first batches of each size allocate; not part of any figure.
            warm = step("warm-up", 0.5 * estimate, min(2.0, settings.step_s))
            ramp = [ramp_step(f * estimate) for f in (0.5, 1.0, 1.5)]
            # Still keeping up: the estimate was low. Go on up, bounded in steps and so in time.
            while not saturated(ramp[-1].figures) and len(ramp) < 6:
                ramp.append(ramp_step(ramp[-1].offered * 1.5))
            if (rate := between_rate(ramp)) is not None:
                ramp.append(ramp_step(rate))
            saturation = max(s.figures["strips_per_s"] for s in ramp)
            # The reference of tail_inflation: hardly any queueing, the strips' own latency.
            low = step("10% of saturation", low_rate(saturation), settings.step_s)
            at80 = step("80% of saturation", 0.8 * saturation, settings.latency_s)
            over = None
            if settings.memory_s > 0:
                over = step("2x saturation", 2.0 * saturation, settings.memory_s)
        records = np.load(snapshot)
    advance(5, "stopped")
    return e2e_section(
        {**_settings_section(settings), "daemon": line.daemon_chose},
        warm,
        ramp,
        saturation,
        low,
        at80,
        over,
        records,
        line.stopped,
        line.sampler.samples,
    )


def _drain(subscriber: Agent, snapshot: Path, step: Step) -> None:
    """Wait (bounded) until every frame of the step has its event, then snapshot the events."""
    deadline = time.monotonic() + 10.0
    while True:
        subscriber.ask(cmd="snapshot", path=str(snapshot))
        records = np.load(snapshot)
        mine = records[(records["ts_ns"] >= step.start_ns) & (records["ts_ns"] <= step.end_ns)]
        if len(mine) >= step.sent or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def _openvino_settings(settings: E2ESettings) -> dict[str, str]:
    if settings.backend not in ("openvino", "auto"):
        return {}
    return {
        "openvino_device": settings.openvino_device,
        "openvino_precision": settings.openvino_precision,
    }


def _settings_section(settings: E2ESettings) -> dict[str, Any]:
    """What the run was told, as the report's e2e ``settings`` says it."""
    return {
        "backend": settings.backend,
        **_openvino_settings(settings),
        "cameras": settings.cameras,
        "max_batch": settings.max_batch,
        "max_wait_ms": settings.max_wait_ms,
        "queue_size": settings.queue_size,
        "workers": settings.workers,
        "threads": settings.threads,
        "overload": "drop-oldest",
        "ramp_step_s": settings.step_s,
        "low_load_step_s": settings.step_s,
        "latency_step_s": settings.latency_s,
        "memory_step_s": settings.memory_s,
        "ramp_estimate_strips_per_s": round(settings.estimate, 3),
        "processes": "camera (python -m edge.tools.bench.agents camera) -> daemon "
        "(python -m edge.cli.main run) -> subscriber "
        "(python -m edge.tools.bench.agents subscriber), ZeroMQ over tcp://127.0.0.1",
        "latency_is": "camera header ts_ns -> event received by the subscriber (wall clock)",
        "strips_per_s_is": "results received per second in the best ramp step",
    }
