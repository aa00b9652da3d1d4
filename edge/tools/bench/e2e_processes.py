"""The e2e mode's three child processes: started in order, spoken to, stopped whatever happens.

A camera process (``edge.tools.bench.agents camera``) -> a real `edge run` process -> a
subscriber process (``edge.tools.bench.agents subscriber``), all on 127.0.0.1. Each is stopped
by the bench (terminate, then kill) whatever happens; every wait on them has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edge.tools.bench.e2e_results import Step
from edge.tools.bench.stats import rss_mb

# The 'daemon ready' keys a report carries: what `auto` and the defaults came to on this machine.
DAEMON_CHOSE = ("backend", "workers", "threads_per_worker", "cpu_scheduling")
START_TIMEOUT_S = 60.0  # model loading and self-test of a slow machine included
REPLY_TIMEOUT_S = 15.0


class E2EError(RuntimeError):
    """A helper process or the daemon did not do its part; the message says which and why."""


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


@dataclass
class Line:
    """The three processes, running, and (once stopped) the daemon's 'daemon stopped' entry."""

    camera: Agent
    daemon: Daemon
    subscriber: Agent
    sampler: RssSampler
    ready: dict[str, Any] = field(default_factory=dict)  # its 'daemon ready' entry
    stopped: dict[str, Any] | None = None

    @property
    def daemon_chose(self) -> dict[str, Any]:
        """What the daemon settled on for itself (auto values resolved), as it logged at start."""
        return {key: self.ready.get(key) for key in DAEMON_CHOSE}


@contextlib.contextmanager
def start_line(strips: Path, cameras: int, daemon_options: list[str], work: Path) -> Iterator[Line]:
    """Camera, then `edge run` with ``daemon_options``, then subscriber; all stopped on exit.

    Yields once the daemon serves, the subscriber has seen a status message and the camera's
    socket has the daemon subscribed; logs of the helpers go to ``work``.
    """
    py = sys.executable
    camera = subscriber = daemon = sampler = None
    line: Line | None = None
    try:
        camera = Agent(
            "camera",
            [
                py,
                "-m",
                "edge.tools.bench.agents",
                "camera",
                "--strips",
                str(strips),
                "--cameras",
                str(cameras),
            ],
            work / "camera.log",
        )
        endpoints = camera.reply(START_TIMEOUT_S)["endpoints"]
        argv = [py, "-m", "edge.cli.main", "run"]
        for endpoint in endpoints:
            argv += ["--source", endpoint]
        daemon = Daemon(argv + daemon_options)
        ready = daemon.wait_log("daemon ready", START_TIMEOUT_S)
        subscriber = Agent(
            "subscriber",
            [py, "-m", "edge.tools.bench.agents", "subscriber", "--source", ready["publish"]],
            work / "subscriber.log",
        )
        subscriber.reply(START_TIMEOUT_S)  # {"ready": true}: it has seen a status message
        if not camera.ask(cmd="wait_subscriber", seconds=REPLY_TIMEOUT_S)["subscribed"]:
            raise E2EError("the daemon never subscribed to the camera")
        sampler = RssSampler(daemon.proc.pid)
        line = Line(camera, daemon, subscriber, sampler, ready)
        yield line
    finally:
        if sampler is not None:
            sampler.stop()
        if camera is not None:
            camera.stop()
        stopped = daemon.stop(grace_s=30.0) if daemon is not None else None
        if line is not None:
            line.stopped = stopped
        if subscriber is not None:
            subscriber.stop()
