"""The bridges' subscriber core against a real PUB socket: what it hands its sink, and what it
still hands over when told to stop."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import zmq

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
