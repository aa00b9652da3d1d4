"""A real daemon process (`python -m edge.cli.main run`) on free loopback ports, and the sockets a
test talks to it with: a listening SUB socket on its own thread, and XPUB cameras."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

from edge.protocol import STATUS_TOPIC_PREFIX, parse_event
from tests.conftest import free_port


def camera(
    context: zmq.Context, endpoint: str, *, wait_s: float | None = 10.0, **sockopts: int
) -> zmq.Socket:
    """An XPUB camera connected to a daemon's bound source (sockopts by name: SNDHWM=100).

    XPUB rather than PUB: it sees the daemon's subscription arrive, so nothing sent afterwards
    is lost to ZeroMQ's slow-joiner window. Returns once the subscription came, unless wait_s
    is None (the caller waits for it itself).
    """
    sock = context.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in sockopts.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(endpoint)
    if wait_s is not None:
        try:
            subscribed(sock, wait_s)
        except BaseException:
            sock.close(0)
            raise
    return sock


def subscribed(sock: zmq.Socket, wait_s: float = 10.0) -> None:
    """Wait for the daemon's subscription on a camera socket, and take it."""
    assert sock.poll(int(wait_s * 1000)), "the daemon never subscribed"
    sock.recv()  # the subscription message


class Listener:
    """A SUB socket (RCVHWM 0: it never sheds what the daemon published) read on its own thread.

    Every (topic, body) is kept in order in ``messages``, and split into ``events`` and
    ``statuses``. ``keep`` may replace an event's body by what to keep of it, or None to drop it.
    """

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        keep: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.connect(endpoint)
        self.messages: list[tuple[str, Any]] = []
        self.events: list[Any] = []
        self.statuses: list[dict[str, Any]] = []
        self.heard = threading.Event()  # set at every status
        self._keep = keep
        self._stop = threading.Event()
        self._exited = threading.Event()
        self._quiet_s = 1.0
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def start(self, first_within_s: float | None = None) -> Listener:
        """Read on from now; with first_within_s, once the daemon's first message is there."""
        if first_within_s is not None:
            assert self.socket.poll(int(first_within_s * 1000)), "daemon did not start"
        self._thread.start()
        return self

    def _listen(self) -> None:
        quiet_since = None
        while not self._stop.is_set():
            if self.socket.poll(50):
                topic, body = parse_event(self.socket.recv_multipart())
                quiet_since = None
                if topic.startswith(STATUS_TOPIC_PREFIX):
                    self.messages.append((topic, body))
                    self.statuses.append(body)
                    self.heard.set()
                    continue
                kept = body if self._keep is None else self._keep(body)
                if kept is not None:
                    self.messages.append((topic, kept))
                    self.events.append(kept)
            elif self._exited.is_set():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > self._quiet_s:
                    return

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float) -> bool:
        """Whether predicate() came true within timeout_s, while the thread reads on."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def until_quiet_after_exit(self, quiet_s: float = 1.0, timeout_s: float = 30.0) -> None:
        """Once the daemon has exited: read until nothing more came for quiet_s, so everything
        it published and ZeroMQ delivered is read and nothing is missed by stopping early."""
        self._quiet_s = quiet_s
        self._exited.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def close(self) -> None:
        self.stop()
        self.socket.close(0)


class DaemonProcess:
    """`edge run` in a process of its own, as a context manager: started on entry; on exit
    killed if still running, its sockets here closed and its config file removed.

    Its stderr is read all along into ``stderr_lines`` (and ``stderr_queue``, None at the end):
    a full pipe would stall the daemon's logging. With ``log`` it is appended to that file
    instead.
    """

    def __init__(
        self,
        models: Path,
        *flags: str,
        config: str | None = None,
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.source = f"tcp://127.0.0.1:{free_port()}"
        self.publish = f"tcp://127.0.0.1:{free_port()}"
        self.config: Path | None = None
        if config is not None:
            fd, name = tempfile.mkstemp(prefix="edge-test-", suffix=".toml")
            os.close(fd)
            self.config = Path(name)
            self.config.write_text(config)
        self.args = [
            *(["--config", str(self.config)] if self.config else []),
            "--bind-source", self.source, "--publish", self.publish, "--models", str(models),
            "--threads", "1", "--log-format", "json", *flags,
        ]  # fmt: skip
        self.log = log
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[str] | None = None
        self.stderr_lines: list[str] = []
        self.stderr_queue: queue.Queue[str | None] = queue.Queue()
        self._drain: threading.Thread | None = None
        self._context: zmq.Context | None = None
        self._listeners: list[Listener] = []
        self._sockets: list[zmq.Socket] = []

    # -- the process ----------------------------------------------------------------------------

    def start(self) -> DaemonProcess:
        """Start it (again, once the previous process exited: same ports, same arguments)."""
        assert self.process is None or self.process.poll() is not None, "already running"
        command = [sys.executable, "-m", "edge.cli.main", "run", *self.args]
        if self.log is not None:
            with open(self.log, "a") as err:
                self.process = subprocess.Popen(command, stderr=err, text=True, env=self.env)
            return self
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=self.env)
        self._drain = threading.Thread(target=self._read_stderr, args=(self.process,), daemon=True)
        self._drain.start()
        return self

    def _read_stderr(self, process: subprocess.Popen[str]) -> None:
        for line in process.stderr or []:
            self.stderr_lines.append(line)
            self.stderr_queue.put(line)
        self.stderr_queue.put(None)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        assert self.process is not None
        return self.process.returncode

    def poll(self) -> int | None:
        assert self.process is not None
        return self.process.poll()

    def send_signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM: what systemd sends."""
        assert self.process is not None
        self.process.terminate()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def wait(self, timeout_s: float | None = None) -> int:
        """Its exit status, once it exited and (with a pipe) its stderr is read to the end."""
        assert self.process is not None
        code = self.process.wait(timeout_s)
        if self._drain is not None:
            self._drain.join(10)
        return code

    def rss_mb(self, field: str = "VmRSS") -> float:
        """A memory figure of the process from /proc (VmRSS, VmHWM: its peak), in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no {field} for process {self.pid}")

    # -- sockets on it, closed on exit ------------------------------------------------------------

    @property
    def context(self) -> zmq.Context:
        if self._context is None:
            self._context = zmq.Context()
        return self._context

    def listener(self, keep: Callable[[dict[str, Any]], Any] | None = None) -> Listener:
        """A Listener on its publish endpoint (not started)."""
        listener = Listener(self.context, self.publish, keep)
        self._listeners.append(listener)
        return listener

    def camera(self, *, wait_s: float | None = 10.0, **sockopts: int) -> zmq.Socket:
        """A camera (see camera()) connected to its bound source."""
        sock = camera(self.context, self.source, wait_s=None, **sockopts)
        self._sockets.append(sock)
        if wait_s is not None:
            subscribed(sock, wait_s)
        return sock

    def __enter__(self) -> DaemonProcess:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            for listener in self._listeners:
                listener.close()
            for sock in self._sockets:
                sock.close(0)
            if self._context is not None:
                self._context.term()
            if self._drain is not None:
                self._drain.join(10)
        finally:
            if self.config is not None:
                self.config.unlink(missing_ok=True)
