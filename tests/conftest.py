"""Shared fixtures: real model repositories, a real daemon on loopback, real sample data."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
import zmq

from edge.daemon.config import load_config
from edge.daemon.server import Server
from edge.protocol import STATUS_TOPIC_PREFIX, parse_event
from tests.tiny_models import write_tiny_repository

SEVERSTAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "severstal_dev"
# The 148-strip sample the shipped reference models are trained and held out on (issue 15).
SEVERSTAL_TRAIN = SEVERSTAL.parent / "severstal_train"


@pytest.fixture(autouse=True)
def default_logging() -> Iterator[None]:
    """A command run in-process (CliRunner) configures structlog for the whole process: put the
    defaults back, so a later test's captured logs do not depend on the order tests run in."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def severstal() -> Path:
    if not (SEVERSTAL / "labels.csv").is_file():
        pytest.skip(f"real Severstal samples not found at {SEVERSTAL} (../shared/data is absent)")
    return SEVERSTAL


@pytest.fixture(scope="session")
def severstal_train() -> Path:
    if not (SEVERSTAL_TRAIN / "labels.csv").is_file():
        pytest.skip(f"the 148-strip sample is not at {SEVERSTAL_TRAIN} (../shared/data is absent)")
    return SEVERSTAL_TRAIN


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_repository(tmp_path_factory.mktemp("tiny_models"))


@dataclass
class Subscriber:
    """A real SUB socket on the daemon's publish endpoint that collects decoded events."""

    socket: zmq.Socket
    events: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)

    def pump(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.socket.poll(20):
                topic, body = parse_event(self.socket.recv_multipart())
                (self.statuses if topic.startswith(STATUS_TOPIC_PREFIX) else self.events).append(
                    body
                )
            elif self.events and timeout_s == 0:
                return

    def wait_for(self, predicate: Any, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Collect until predicate(events) is true; fail the test with what was seen if not."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self.events):
            if time.monotonic() > deadline:
                kinds = [e.get("kind") for e in self.events]
                raise AssertionError(f"timed out after {timeout_s}s; events so far: {kinds}")
            self.pump(0.05)
        return self.events

    def wait_for_status(self, timeout_s: float = 10.0) -> dict[str, Any]:
        seen = len(self.statuses)
        deadline = time.monotonic() + timeout_s
        while len(self.statuses) == seen:
            if time.monotonic() > deadline:
                raise AssertionError("no status message from the daemon")
            self.pump(0.05)
        return self.statuses[-1]


@dataclass
class Daemon:
    server: Server
    thread: threading.Thread
    subscriber: Subscriber

    @property
    def source(self) -> str:
        return self.server.bound_sources[0]

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "daemon did not stop"


@pytest.fixture
def start_daemon(tiny_repo: Path) -> Iterator[Any]:
    """Start a real daemon (in a thread) that binds its source; returns it with a live subscriber."""
    started: list[Daemon] = []
    context = zmq.Context()

    def start(**overrides: Any) -> Daemon:
        settings: dict[str, Any] = {
            "bind_sources": ["tcp://127.0.0.1:*"],
            "publish": "tcp://127.0.0.1:*",
            "models": tiny_repo,
            "status_interval_s": 0.2,
            "threads": 1,
            "max_wait_ms": 2.0,
        }
        settings.update(overrides)
        server = Server(load_config(None, **settings))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        assert server.started.wait(30), "daemon did not start"
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(server.publish_endpoint)
        subscriber = Subscriber(sock)
        subscriber.wait_for_status()  # the subscription is live: no event can be missed now
        daemon = Daemon(server, thread, subscriber)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.thread.is_alive():
            daemon.stop()
        daemon.subscriber.socket.close()
    context.term()


def hold_models(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make every inference worker's models hang until the returned event is set (30 s at most)."""
    release = threading.Event()
    for cascade in daemon.server.replicas.cascades:
        real = cascade.infer
        monkeypatch.setattr(
            cascade, "infer", lambda images, real=real: (release.wait(30), real(images))[1]
        )
    return release


@pytest.fixture
def camera_socket() -> Iterator[Any]:
    """A camera socket that connects to the daemon's bound source, ready to send.

    XPUB rather than PUB: it sees the daemon's subscription arrive, so nothing sent afterwards
    can be lost to ZeroMQ's slow-joiner window.
    """
    context = zmq.Context()
    sockets: list[zmq.Socket] = []

    def connect(endpoint: str) -> zmq.Socket:
        sock = context.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, 100000)
        sock.connect(endpoint)
        sockets.append(sock)
        assert sock.poll(10000), "the daemon never subscribed"
        sock.recv()  # the subscription message
        return sock

    yield connect
    for sock in sockets:
        sock.close()
    context.term()


def gray_strip(value: int = 128, height: int = 256, width: int = 1600) -> np.ndarray:
    return np.full((height, width), value, np.uint8)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
