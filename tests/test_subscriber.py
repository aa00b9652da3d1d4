"""The bridges' subscriber core against a real PUB socket: what it hands its sink, and what it
still hands over when told to stop."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import zmq

from edge.line.bridges.loss import TransitLoss
from edge.line.bridges.subscriber import EventSubscriber
from edge.protocol import event_topic, pack


class BlockingSink:
    """Records what it takes; holds its first message until ``release`` is set."""

    def __init__(self) -> None:
        self.taken: list[int] = []
        self.invalid_reasons: list[str] = []
        self.release = threading.Event()
        self.first = threading.Event()

    def take(self, topic: str, body: dict[str, Any]) -> None:
        if not self.taken:
            self.first.set()
            self.release.wait(10)
        self.taken.append(body["seq"])

    def invalid(self, reason: str) -> None:
        self.invalid_reasons.append(reason)


def result(seq: int) -> list[bytes]:
    return [event_topic("cam1"), pack({"v": 1, "kind": "result", "camera": "cam1", "seq": seq})]


@pytest.mark.parametrize("drain_s", [0.0, 2.0])
def test_stop_drains_what_already_reached_the_socket_only_when_asked(drain_s: float) -> None:
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sink = BlockingSink()
    subscriber = EventSubscriber(f"tcp://127.0.0.1:{port}", sink, name="test-sub").start()
    try:
        deadline = time.monotonic() + 10
        while not sink.first.is_set():  # the slow joiner: send until one arrives
            assert time.monotonic() < deadline, "the subscriber never connected"
            pub.send_multipart(result(0))
            time.sleep(0.05)
        for seq in range(1, 51):
            pub.send_multipart(result(seq))
        time.sleep(0.5)  # in the subscriber's socket now, behind the message being taken
        threading.Timer(0.3, sink.release.set).start()
        drained = subscriber.stop(drain_s=drain_s)
    finally:
        sink.release.set()
        pub.close(0)
    # Repeats of seq 0 (sent until one arrived) may queue too; 1..50 came after it.
    later = [seq for seq in sink.taken[1:] if seq > 0]
    if drain_s:
        assert later == list(range(1, 51)) and drained == len(sink.taken) - 1
    else:
        assert later == [] and drained == 0
    assert sink.invalid_reasons == []


# -- events lost on the way from the daemon ----------------------------------------------------


def status(uptime_s: float, counted: int) -> dict[str, Any]:
    cameras = {"cam1": {"results": counted, "rejects": 0, "drops": 0}}
    return {"v": 1, "kind": "status", "daemon": "d1", "uptime_s": uptime_s, "cameras": cameras}


def test_transit_loss_finds_what_the_daemon_counted_and_never_came() -> None:
    transit = TransitLoss()
    found = [transit.take(status(0.0, 0))]
    found += [transit.take({"kind": "result", "camera": "cam1", "seq": s}) for s in range(5)]
    found.append(transit.take(status(1.0, 8)))  # 8 counted by then, 5 came: 3 lost...
    found.append(transit.take(status(2.0, 8)))  # ...known once LOSS_LAG_S has passed
    found.append(transit.take(status(4.1, 8)))
    found.append(transit.take(status(5.0, 8)))  # the same 3: not found again
    assert found == [0] * 6 + [0, 0, 3, 0] and transit.lost == 3


def test_transit_loss_starts_again_when_the_daemon_restarts_and_bounds_its_cameras() -> None:
    transit = TransitLoss(max_cameras=2)
    for camera in ("a", "b", "c", "d"):
        transit.take({"kind": "result", "camera": camera, "seq": 0})
    assert len(transit._cameras) == 2
    transit.take(status(100.0, 50))
    transit.take(status(0.5, 0))  # uptime went back: a new daemon, new counters
    assert transit.take(status(4.0, 0)) == 0


class AccountingSink:
    def __init__(self) -> None:
        self.taken: list[str] = []
        self.losses: list[tuple[int, str]] = []

    def take(self, topic: str, body: dict[str, Any]) -> None:
        self.taken.append(body["kind"])

    def invalid(self, reason: str) -> None:
        pass

    def lost_on_the_way(self, count: int, reason: str) -> None:
        self.losses.append((count, reason))


def test_a_sink_that_keeps_account_is_told_what_was_lost_before_it() -> None:
    sink = AccountingSink()
    subscriber = EventSubscriber("tcp://127.0.0.1:1", sink, name="edge store")  # never started
    try:
        subscriber.handle([b"status/d1", pack(status(0.0, 0))])
        for seq in range(5):
            subscriber.handle(result(seq))
        for uptime in (1.0, 4.1):
            subscriber.handle([b"status/d1", pack(status(uptime, 8))])
    finally:
        subscriber.stop()
    assert sink.taken == ["status"] + ["result"] * 5 + ["status"] * 2
    assert sink.losses == [
        (3, "lost between the daemon and edge store (ZeroMQ: a queue overflowed)")
    ]


def test_a_sink_without_an_account_gets_no_loss_check() -> None:
    sink = BlockingSink()
    sink.release.set()
    subscriber = EventSubscriber("tcp://127.0.0.1:1", sink)
    try:
        assert subscriber._transit is None  # the PLC bridges' state runs its own LossCheck
    finally:
        subscriber.stop()
