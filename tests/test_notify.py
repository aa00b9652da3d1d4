"""sd_notify over a real unix datagram socket: readiness, status, a watchdog that stalls with the
inference loop, and the stop notice."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.daemon.notify import Notifier, serving_status
from tests.conftest import gray_strip, hold_models
from tests.test_server import frame_parts, per_frame


class NotifySocket:
    """What systemd listens on: a bound datagram socket that collects every message."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.backlog: list[dict[str, str]] = []

    def collect(self, seconds: float) -> list[dict[str, str]]:
        messages, self.backlog = self.backlog, []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        return messages

    def wait_for(self, key: str, timeout_s: float = 10.0) -> dict[str, str]:
        """The next message holding ``key``; the messages before it are consumed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.backlog = self.collect(0.05)  # what was left, then what came
            while self.backlog:
                message = self.backlog.pop(0)
                if key in message:
                    return message
        raise AssertionError(f"no {key} notification within {timeout_s}s")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, NotifySocket]]:
    path = str(tmp_path / "notify.sock")
    listener = NotifySocket(path)
    yield path, listener
    listener.sock.close()


def test_messages_arrive_on_a_path_socket(notify_socket: tuple[str, NotifySocket]) -> None:
    path, listener = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("ready: models loaded")
    assert notifier.reloading()
    notifier.close()
    ready, reloading = listener.collect(0.3)
    assert ready == {"READY": "1", "STATUS": "ready: models loaded"}
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0


def test_abstract_namespace_socket() -> None:
    name = f"edge-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifySocket("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog()
        assert listener.collect(0.2) == [{"WATCHDOG": "1"}]
    finally:
        listener.sock.close()


def test_without_systemd_every_call_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.watchdog() and not notifier.stopping()
    assert notifier.watchdog_s is None


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.send(STATUS="x") is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier(env).watchdog_s == expected


def test_serving_status_reports_throughput() -> None:
    before = {"cam1": {"received": 10, "results": 8, "rejects": 1, "drops": 1}}
    after = {"cam1": {"received": 30, "results": 28, "rejects": 1, "drops": 1}}
    text = serving_status((0.0, before), (2.0, after), 3)
    assert text.startswith("serving 1 camera(s): 10.0 results/s")
    assert "received 30, results 28, rejects 1, drops 1; queue 3" in text


def test_daemon_is_ready_pings_only_while_inference_progresses_and_says_stopping(
    start_daemon: Any,
    camera_socket: Any,
    notify_socket: tuple[str, NotifySocket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, listener = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "300000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    daemon = start_daemon(stall_timeout_s=0.5)
    ready = listener.wait_for("READY")
    assert ready["READY"] == "1" and "ready: models" in ready["STATUS"]
    assert listener.wait_for("WATCHDOG")["WATCHDOG"] == "1"
    assert "results/s" in listener.wait_for("STATUS")["STATUS"]

    # A model that hangs: the inference loop stops going round, so the pings stop.
    release = hold_models(daemon, monkeypatch)
    camera_socket(daemon.source).send_multipart(frame_parts("cam1", 0, gray_strip()))
    listener.collect(1.0)  # pings sent before the stall timeout ran out
    stalled = listener.collect(1.0)
    assert not [m for m in stalled if "WATCHDOG" in m], "pinged while inference was stuck"
    assert not daemon.server.progressing()

    release.set()
    assert listener.wait_for("WATCHDOG", 5.0)
    daemon.subscriber.wait_for(lambda ev: per_frame(ev))
    daemon.stop()
    assert "draining" in listener.wait_for("STOPPING")["STATUS"]


def test_edge_run_speaks_to_systemd_as_a_real_process(
    tiny_repo: Path, notify_socket: tuple[str, NotifySocket]
) -> None:
    """What systemd sees of `edge run`: READY, pings, RELOADING/READY on SIGHUP, STOPPING."""
    import signal

    from tests.daemon_process import DaemonProcess

    path, listener = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"}
    with DaemonProcess(tiny_repo, env=env) as daemon:
        assert listener.wait_for("READY", 60)["READY"] == "1"
        assert listener.wait_for("WATCHDOG")["WATCHDOG"] == "1"
        daemon.send_signal(signal.SIGHUP)
        assert listener.wait_for("RELOADING")["RELOADING"] == "1"
        assert "reloaded" in listener.wait_for("READY", 30)["STATUS"]
        daemon.terminate()
        assert listener.wait_for("STOPPING", 30)["STOPPING"] == "1"
        assert daemon.wait(30) == 0


def test_watchdog_pings_go_on_while_a_slow_reload_loads_models(
    start_daemon: Any, notify_socket: tuple[str, NotifySocket], monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge.daemon.server

    path, listener = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "300000")
    daemon = start_daemon()
    listener.wait_for("READY")
    real_prepare = edge.daemon.server.prepare

    def slow_prepare(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.5)  # a TensorRT engine can take far longer than WatchdogSec to load
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(edge.daemon.server, "prepare", slow_prepare)
    daemon.server.handle_reload(1, None)  # what SIGHUP does
    listener.wait_for("RELOADING")
    during = listener.collect(1.0)
    assert [m for m in during if "WATCHDOG" in m], "no watchdog ping while reloading"
    assert not [m for m in during if "READY" in m]
    assert "reloaded" in listener.wait_for("READY", 30)["STATUS"]
