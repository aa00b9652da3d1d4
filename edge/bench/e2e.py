"""The e2e mode: a camera process -> a real `edge run` process -> a subscriber process.

Everything crosses ZeroMQ on 127.0.0.1, as on a line. The offered load is stepped up until the
daemon saturates (it sheds load: drop events), then held at 80 % of that for latency, then at
2x for the memory check. Latency is the camera's capture ``ts_ns`` (its header) to the moment
the subscriber receives the event, on this machine's one wall clock.

Exactly three child processes, each stopped by the bench (terminate, then kill) whatever
happens; every wait on them has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from edge.bench.agents import KINDS
from edge.bench.stats import latency_summary, rss_mb
from edge.bench.workload import StripPool

START_TIMEOUT_S = 60.0  # model loading and self-test of a slow machine included
REPLY_TIMEOUT_S = 15.0
SETTLE_S = 1.0  # the start of each step is left out: the queue is still filling or draining
RESULT, REJECT, DROP, GAP = (KINDS.index(k) for k in ("result", "reject", "drop", "gap"))


class E2EError(RuntimeError):
    """A helper process or the daemon did not do its part; the message says which and why."""


@dataclass
class Step:
    name: str
    offered: float  # strips/s, all cameras together
    seconds: float
    sent: int = 0
    start_ns: int = 0
    end_ns: int = 0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (s into the step, MiB)
    figures: dict[str, Any] = field(default_factory=dict)


class Agent:
    """A child process spoken to in JSON lines over its stdin/stdout."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        self._replies: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with contextlib.suppress(json.JSONDecodeError), self._cond:
                self._replies.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise E2EError(f"the {self.name} process exited ({self._why()})") from None

    def reply(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._replies:
                left = deadline - time.monotonic()
                if self.proc.poll() is not None:
                    raise E2EError(f"the {self.name} process exited ({self._why()})")
                if left <= 0:
                    raise E2EError(f"the {self.name} process did not answer in {timeout_s:.0f} s")
                self._cond.wait(min(left, 0.2))
            return self._replies.pop(0)

    def ask(self, timeout_s: float = REPLY_TIMEOUT_S, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.reply(timeout_s)

    def _why(self) -> str:
        code = self.proc.poll()
        self._log.flush()
        tail = Path(self._log.name).read_text(errors="replace").strip().splitlines()[-3:]
        return f"exit code {code}: " + " | ".join(tail) if tail else f"exit code {code}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.send(cmd="quit")
        _end(self.proc, 5.0)
        self._log.close()


def _end(proc: subprocess.Popen, grace_s: float) -> None:
    """Wait for ``proc`` to exit; terminate it after ``grace_s``, kill it if that fails too."""
    try:
        proc.wait(grace_s)
        return
    except subprocess.TimeoutExpired:
        proc.terminate()
    try:
        proc.wait(5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5.0)


class Daemon:
    """`edge run` in its own process, as a plant runs it; its JSON log lines are kept."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.logs: list[dict[str, Any]] = []
        self.other_lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True, name="daemon-log")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            with self._cond:
                try:
                    self.logs.append(json.loads(line))
                except json.JSONDecodeError:
                    self.other_lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_log(self, event: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for entry in self.logs:
                    if entry.get("event") == event:
                        return entry
                if self.proc.poll() is not None and not self._reader.is_alive():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
        tail = [e.get("event", "") for e in self.logs[-3:]] + self.other_lines[-3:]
        raise E2EError(
            f"the daemon did not log {event!r} in {timeout_s:.0f} s "
            f"(exit code {self.proc.poll()}; last lines: {tail})"
        )

    def stop(self, grace_s: float) -> dict[str, Any] | None:
        """SIGTERM (the daemon drains and exits 0); its 'daemon stopped' log entry."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _end(self.proc, grace_s)
        with contextlib.suppress(E2EError):
            return self.wait_log("daemon stopped", 2.0)
        return None


class RssSampler:
    """Samples the daemon's resident memory twice a second into the step that is running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.step: Step | None = None
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            value = rss_mb(self.pid)
            now = time.monotonic()
            self.samples.append((round(now - self._t0, 2), round(value, 2)))
            step = self.step
            if step is not None:
                step.rss_mb.append((round(now - self._step_t0, 2), round(value, 2)))

    def enter(self, step: Step | None) -> None:
        self._step_t0 = time.monotonic()
        self.step = step

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


def _step_figures(step: Step, records: np.ndarray) -> dict[str, Any]:
    """Throughput, latency and load shed for the frames captured during ``step``."""
    settle_ns = int(min(SETTLE_S, step.seconds / 4) * 1e9)
    window_s = max((step.end_ns - step.start_ns - settle_ns) / 1e9, 1e-9)
    mine = records[(records["ts_ns"] >= step.start_ns) & (records["ts_ns"] <= step.end_ns)]
    results = mine[mine["kind"] == RESULT]
    # Throughput counts results as they reached the subscriber during the step (after the
    # settle time), whatever their capture time: under overload that is the daemon's pace.
    received = records[
        (records["kind"] == RESULT)
        & (records["recv_ns"] >= step.start_ns + settle_ns)
        & (records["recv_ns"] <= step.end_ns)
    ]
    steady = results[results["ts_ns"] >= step.start_ns + settle_ns]
    latencies = (steady["recv_ns"] - steady["ts_ns"]) / 1e6
    gaps = records[
        (records["kind"] == GAP)
        & (records["recv_ns"] >= step.start_ns)
        & (records["recv_ns"] <= step.end_ns + int(2e9))
    ]
    drops = int((mine["kind"] == DROP).sum())
    missing = int(gaps["missing"].sum())
    answered = len(mine)
    return {
        "offered_strips_per_s": round(step.offered, 3),
        "sent": step.sent,
        "seconds": round((step.end_ns - step.start_ns) / 1e9, 3),
        "strips_per_s": round(len(received) / window_s, 3),
        "results": len(results),
        "defective_results": int(results["defective"].sum()),
        "drops": drops,
        "rejects": int((mine["kind"] == REJECT).sum()),
        "missing_in_transport": missing,
        "unanswered": max(step.sent - answered - missing, 0),
        "latency": latency_summary(latencies),
        # Defective strips also go through the segmenter and post-processing: the tail.
        "latency_clean": latency_summary(latencies[steady["defective"] == 0]),
        "latency_defective": latency_summary(latencies[steady["defective"] == 1]),
        # The daemon's own part (frame received -> result event built), from the events.
        "daemon_latency": latency_summary(steady["daemon_ms"]),
    }


def _saturated(fig: dict[str, Any]) -> bool:
    shed = fig["drops"] + fig["missing_in_transport"]
    return shed > 0 or fig["strips_per_s"] < 0.9 * fig["offered_strips_per_s"]


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
    step_s: float  # seconds of each ramp step
    latency_s: float  # seconds at 80 % of saturation
    memory_s: float  # seconds at 2x saturation
    estimate: float  # expected saturation, strips/s, to place the ramp
    engines: Path | None = None  # TensorRT engine folder (--backend tensorrt/auto)


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
        2 * settings.step_s + 3 * settings.step_s + settings.latency_s + settings.memory_s + 10
    )
    done = 0.0

    def advance(seconds: float, what: str) -> None:
        nonlocal done
        done += seconds
        progress(min(done / planned, 1.0), what)

    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        strips = pool.save(work / "strips.npy")
        py = sys.executable
        camera = subscriber = daemon = sampler = None
        try:
            camera = Agent(
                "camera",
                [
                    py,
                    "-m",
                    "edge.bench.agents",
                    "camera",
                    "--strips",
                    str(strips),
                    "--cameras",
                    str(settings.cameras),
                ],
                work / "camera.log",
            )
            endpoints = camera.reply(START_TIMEOUT_S)["endpoints"]
            argv = [py, "-m", "edge.main", "run"]
            for endpoint in endpoints:
                argv += ["--source", endpoint]
            argv += [
                "--publish", "tcp://127.0.0.1:*",
                "--models", str(settings.models),
                "--backend", settings.backend,
                *(["--engines", str(settings.engines)] if settings.engines else []),
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
            daemon = Daemon(argv)
            ready = daemon.wait_log("daemon ready", START_TIMEOUT_S)
            subscriber = Agent(
                "subscriber",
                [py, "-m", "edge.bench.agents", "subscriber", "--source", ready["publish"]],
                work / "subscriber.log",
            )
            subscriber.reply(START_TIMEOUT_S)  # {"ready": true}: it has seen a status message
            if not camera.ask(cmd="wait_subscriber", seconds=REPLY_TIMEOUT_S)["subscribed"]:
                raise E2EError("the daemon never subscribed to the camera")
            sampler = RssSampler(daemon.proc.pid)
            advance(5, "started")
            snapshot = work / "events.npy"

            def offer(step: Step) -> Step:
                sampler.enter(step)
                reply = camera.ask(
                    timeout_s=step.seconds + REPLY_TIMEOUT_S,
                    cmd="offer",
                    rate=step.offered,
                    seconds=step.seconds,
                )
                sampler.enter(None)
                step.sent, step.start_ns, step.end_ns = (
                    reply["sent"],
                    reply["start_ns"],
                    reply["end_ns"],
                )
                _drain(subscriber, snapshot, step)
                step.figures = _step_figures(step, np.load(snapshot))
                advance(step.seconds, step.name)
                between_steps()
                return step

            estimate = max(settings.estimate, 0.5)
            # Warm-up: first batches of each size allocate; not part of any figure.
            warm = offer(Step("warm-up", 0.5 * estimate, min(2.0, settings.step_s)))
            ramp = [
                offer(Step(f"ramp {f:g}x", f * estimate, settings.step_s)) for f in (0.5, 1.0, 1.5)
            ]
            # Still keeping up: the estimate was low. Go on up, bounded in steps and so in time.
            while not _saturated(ramp[-1].figures) and len(ramp) < 6:
                rate = ramp[-1].offered * 1.5
                ramp.append(offer(Step(f"ramp {rate / estimate:.3g}x", rate, settings.step_s)))
            saturation = max(s.figures["strips_per_s"] for s in ramp)
            at80 = offer(Step("80% of saturation", 0.8 * saturation, settings.latency_s))
            over = offer(Step("2x saturation", 2.0 * saturation, settings.memory_s))
        finally:
            if sampler is not None:
                sampler.stop()
            if camera is not None:
                camera.stop()
            stopped = daemon.stop(grace_s=30.0) if daemon is not None else None
            if subscriber is not None:
                subscriber.stop()
        records = np.load(snapshot)
    advance(5, "stopped")
    return _section(settings, warm, ramp, saturation, at80, over, records, stopped, sampler.samples)


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


def _section(
    settings: E2ESettings,
    warm: Step,
    ramp: list[Step],
    saturation: float,
    at80: Step,
    over: Step,
    records: np.ndarray,
    stopped: dict[str, Any] | None,
    rss_samples: list[tuple[float, float]],
) -> dict[str, Any]:
    counts = (stopped or {}).get("counts", {})
    memory = [v for _, v in over.rss_mb]
    # The first seconds of the overload step fill the queue and ZeroMQ's buffers: growth is
    # measured from there, so "flat" means what a plant cares about (no leak, no creep).
    head = memory[: max(1, len(memory) // 5)]
    tail = memory[-max(1, len(memory) // 5) :]
    sent = sum(s.sent for s in (warm, *ramp, at80, over))
    kinds = records["kind"]
    answered = int(np.isin(kinds, (RESULT, REJECT, DROP)).sum())
    missing = int(records[kinds == GAP]["missing"].sum())
    return {
        "strips_per_s": round(saturation, 3),
        # False when no ramp step shed load: the daemon was never pushed past what it can do,
        # and strips_per_s is a lower bound of its saturation throughput.
        "saturated": any(_saturated(s.figures) for s in ramp),
        "tiles_per_s": None,  # filled in by the caller from the tiles per strip
        "latency": at80.figures["latency"],
        "latency_at": "80% of saturation",
        "drops": int((kinds == DROP).sum()),
        "missing_in_transport": missing,
        "steps": [{"name": s.name, **s.figures} for s in (*ramp, at80, over)],
        "memory": {
            "offered_strips_per_s": round(over.offered, 3),
            "seconds": over.figures["seconds"],
            "drops": over.figures["drops"],
            "rss_mb_samples": over.rss_mb,
            "rss_mb_start": round(float(np.median(head)), 2) if memory else None,
            "rss_mb_end": round(float(np.median(tail)), 2) if memory else None,
            "rss_mb_max": round(max(memory), 2) if memory else None,
            "rss_growth_mb": round(float(np.median(tail) - np.median(head)), 2) if memory else None,
        },
        "batch_size_histogram": (stopped or {}).get("batch_sizes"),
        # Every frame sent gets one result, reject or drop, or is reported missing in a gap.
        "accounting": {
            "sent": sent,
            "events": answered,
            "missing_in_transport": missing,
            "unaccounted": sent - answered - missing,
            "daemon_counts": counts,
        },
        "settings": {
            "cameras": settings.cameras,
            "max_batch": settings.max_batch,
            "max_wait_ms": settings.max_wait_ms,
            "queue_size": settings.queue_size,
            "workers": settings.workers,
            "threads": settings.threads,
            "overload": "drop-oldest",
            "ramp_step_s": settings.step_s,
            "latency_step_s": settings.latency_s,
            "memory_step_s": settings.memory_s,
            "ramp_estimate_strips_per_s": round(settings.estimate, 3),
            "processes": "camera (python -m edge.bench.agents camera) -> daemon "
            "(python -m edge.main run) -> subscriber (python -m edge.bench.agents subscriber), "
            "ZeroMQ over tcp://127.0.0.1",
            "latency_is": "camera header ts_ns -> event received by the subscriber (wall clock)",
            "strips_per_s_is": "results received per second in the best ramp step",
        },
        "rss_mb_all_samples": rss_samples,
    }
