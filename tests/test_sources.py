"""Sources the daemon connects to: a lost one is noticed, announced, reconnected and restored."""

from __future__ import annotations

import time
from typing import Any

import pytest
import zmq

from edge.daemon.sources import REVIVE_AFTER_S, SourceWatch
from tests.conftest import free_port, gray_strip
from tests.test_server import frame_parts, per_frame

ENDPOINT = "tcp://cam1:5555"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_lost_source_is_announced_once_and_restored_after_it_connects_again() -> None:
    clock = Clock()
    watch = SourceWatch([ENDPOINT], clock)
    assert [s.endpoint for s in watch.down()] == [ENDPOINT]  # not connected yet
    assert watch.on_event(zmq.EVENT_HANDSHAKE_SUCCEEDED, ENDPOINT) is None  # the first connect
    assert watch.down() == []
    clock.now += 5
    lost = watch.on_event(zmq.EVENT_DISCONNECTED, ENDPOINT)
    assert lost is not None and lost.kind == "lost" and lost.source.losses == 1
    assert watch.on_event(zmq.EVENT_DISCONNECTED, ENDPOINT) is None  # once per loss
    clock.now += 2
    restored = watch.on_event(zmq.EVENT_HANDSHAKE_SUCCEEDED, ENDPOINT)
    assert restored is not None and restored.kind == "restored" and restored.down_s == 2
    assert watch.on_event(zmq.EVENT_HANDSHAKE_SUCCEEDED, ENDPOINT) is None


def test_the_daemon_reconnects_only_where_libzmq_gave_up() -> None:
    clock = Clock()
    watch = SourceWatch([ENDPOINT, "tcp://cam2:5555"], clock)
    for endpoint in watch.sources:
        watch.on_event(zmq.EVENT_HANDSHAKE_SUCCEEDED, endpoint)
        watch.on_event(zmq.EVENT_DISCONNECTED, endpoint)
    # libzmq retries cam2 by itself (a camera gone away); cam1's session ended (oversized
    # message, a protocol error): no retry event comes for it.
    watch.on_event(zmq.EVENT_CONNECT_RETRIED, "tcp://cam2:5555")
    assert watch.due() == []
    clock.now += REVIVE_AFTER_S
    assert [s.endpoint for s in watch.due()] == [ENDPOINT]
    assert watch.due() == []  # once


def test_events_of_bound_endpoints_are_not_sources() -> None:
    watch = SourceWatch([ENDPOINT])
    assert watch.on_event(zmq.EVENT_DISCONNECTED, "tcp://127.0.0.1:6000") is None
    assert list(watch.sources) == [ENDPOINT]


@pytest.fixture
def camera_pub() -> Any:
    """A camera as the README has it: it binds a PUB, the daemon connects (--source)."""
    context = zmq.Context()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sock = context.socket(zmq.XPUB)  # XPUB: it sees when the daemon's subscription is live
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    yield sock, endpoint
    sock.close()
    context.term()


def wait_subscribed(sock: zmq.Socket, timeout_s: float = 15.0) -> None:
    assert sock.poll(int(timeout_s * 1000)), "the daemon never (re)subscribed to the camera"
    sock.recv()


def statuses_of(daemon: Any, kind: str) -> list[dict[str, Any]]:
    return [s for s in daemon.subscriber.statuses if s["kind"] == kind]


def wait_status(daemon: Any, kind: str, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while not statuses_of(daemon, kind):
        assert time.monotonic() < deadline, f"no {kind} message from the daemon"
        daemon.subscriber.pump(0.05)
    return statuses_of(daemon, kind)[-1]


def test_an_oversized_message_no_longer_cuts_a_camera_off_for_good(
    start_daemon, camera_pub
) -> None:
    cam, endpoint = camera_pub
    daemon = start_daemon(bind_sources=[], sources=[endpoint], max_message_bytes=1_000_000)
    wait_subscribed(cam)
    cam.send_multipart(frame_parts("cam1", 0, gray_strip()))
    daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) == 1)
    # Over max_message_bytes: libzmq drops the connection and, left alone, never reconnects.
    cam.send_multipart(frame_parts("cam1", 1, gray_strip(height=4000)))
    lost = wait_status(daemon, "source_lost")
    assert (lost["endpoint"], lost["losses"]) == (endpoint, 1)
    wait_subscribed(cam)  # the daemon reconnected by itself
    restored = wait_status(daemon, "source_restored")
    assert restored["endpoint"] == endpoint and restored["down_s"] >= 0
    for seq in range(2, 6):
        cam.send_multipart(frame_parts("cam1", seq, gray_strip()))
    events = daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) == 5)
    assert [(e["seq"], e["kind"]) for e in per_frame(events)] == [
        (seq, "result") for seq in (0, 2, 3, 4, 5)
    ]
    (gap,) = [e for e in events if e["kind"] == "gap"]
    assert (gap["first_seq"], gap["last_seq"]) == (1, 1)  # the refused frame is not silent
    status = daemon.subscriber.wait_for_status()
    assert status["sources"][endpoint]["up"] is True
    assert status["sources"][endpoint]["losses"] == 1
    metrics = daemon.server.metrics
    assert metrics.source_losses.labels(endpoint)._value.get() == 1
    assert metrics.source_up.labels(endpoint)._value.get() == 1


def test_readiness_names_a_source_that_is_down(start_daemon, camera_pub) -> None:
    cam, endpoint = camera_pub
    absent = f"tcp://127.0.0.1:{free_port()}"  # nothing ever listens here
    daemon = start_daemon(bind_sources=[], sources=[endpoint, absent])
    wait_subscribed(cam)
    ready, why = daemon.server.readiness()
    assert not ready and why.startswith("source down: ") and absent in why
    assert "not connected yet" in why and endpoint not in why
    cam.close()  # the camera goes away
    wait_status(daemon, "source_lost")
    ready, why = daemon.server.readiness()
    assert not ready and f"{endpoint} (lost, " in why
