"""systemd's service notification protocol (sd_notify), spoken over ``$NOTIFY_SOCKET``.

A dozen lines of socket code rather than a dependency: the protocol is one datagram of
``KEY=value`` lines to a unix socket whose path systemd puts in the environment (a leading ``@``
means Linux's abstract namespace). Outside systemd there is no socket and every call is a no-op,
so the daemon speaks the same way under a terminal, in tests and as a service.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        self._socket: socket.socket | None = None
        if self.address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.watchdog_s = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines (keys as given, e.g. READY=1); False if it could not."""
        if self._socket is None or self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            self._socket.sendto(message, self.address)
        except OSError as err:
            # systemd restarted or the socket went away: the daemon's work matters more.
            log.warning("sd_notify failed", socket=self.address, error=str(err), throttle=True)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 match this to the reload it started.
        return self.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)

    def stopping(self) -> bool:
        return self.send(STOPPING=1, STATUS="draining: finishing frames in flight")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
    """Seconds systemd allows between WATCHDOG=1 pings (``WatchdogSec=``), if it asks for them."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None  # no watchdog, or it was meant for another process
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


def serving_status(
    previous: tuple[float, dict[str, dict[str, int]]],
    current: tuple[float, dict[str, dict[str, int]]],
    queue_depth: int,
) -> str:
    """The one-line STATUS= that `systemctl status` shows: throughput since the last one."""
    (t0, before), (t1, after) = previous, current

    def total(counts: dict[str, dict[str, int]], key: str) -> int:
        return sum(c.get(key, 0) for c in counts.values())

    elapsed = max(t1 - t0, 1e-9)
    rate = (total(after, "results") - total(before, "results")) / elapsed
    return (
        f"serving {len(after)} camera(s): {rate:.1f} results/s; totals "
        f"received {total(after, 'received')}, results {total(after, 'results')}, "
        f"rejects {total(after, 'rejects')}, drops {total(after, 'drops')}; queue {queue_depth}"
    )


class Heartbeat:
    """The main loop's duties towards systemd: watchdog pings while progressing, STATUS=."""

    def __init__(
        self,
        notifier: Notifier,
        counts: Callable[[], dict[str, dict[str, int]]],
        queue_depth: Callable[[], int],
    ) -> None:
        self.notifier = notifier
        self._counts = counts
        self._queue_depth = queue_depth
        now = time.monotonic()
        self._next_ping = self._next_status = now
        self._previous = (now, counts())

    def tick(self, progressing: bool, status_interval_s: float) -> None:
        now = time.monotonic()
        watchdog_s = self.notifier.watchdog_s
        if watchdog_s is not None and now >= self._next_ping and progressing:
            # No ping while stalled: systemd then kills and restarts the daemon.
            self.notifier.watchdog()
            self._next_ping = now + watchdog_s / 3
        if now >= self._next_status:
            current = (now, self._counts())
            self.notifier.status(serving_status(self._previous, current, self._queue_depth()))
            self._previous = current
            self._next_status = now + status_interval_s


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the OS too (15 bytes: Linux's limit), so ``top -H``,
    ``ps -L`` and /proc/<pid>/task/*/comm tell the daemon's threads apart (Python before 3.14
    leaves every thread named after the process). A no-op where prctl is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
