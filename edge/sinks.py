"""Where events go: the PUB socket subscribers connect to."""

from __future__ import annotations

from typing import Any

import zmq

from edge.protocol import pack


class EventPublisher:
    """The daemon's PUB socket. Only the publisher thread uses it."""

    def __init__(self, context: zmq.Context, endpoint: str, *, sndhwm: int = 10000) -> None:
        self.socket = context.socket(zmq.PUB)
        # PUB never blocks: past the high-water mark a slow subscriber loses messages, which it
        # can see from the per-camera seq in events; the daemon itself is never stalled.
        self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, topic: bytes, body: dict[str, Any]) -> None:
        self.socket.send_multipart([topic, pack(body)])

    def close(self, linger_ms: int) -> None:
        self.socket.close(linger=linger_ms)
