"""Where events go: the PUB socket subscribers connect to, and the result events themselves."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from edge import protocol
from edge.cascade import Cascade, StripResult
from edge.frames import Frame
from edge.postprocess import strip_defects
from edge.protocol import pack


class EventPublisher:
    """The daemon's PUB socket. Only the publisher thread uses it."""

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        *,
        sndhwm: int = 10000,
        secure: Callable[[zmq.Socket], None] | None = None,
    ) -> None:
        self.socket = context.socket(zmq.PUB)
        if secure is not None:
            secure(self.socket)  # CURVE must be set before the bind
        # PUB never blocks: past the high-water mark a slow subscriber loses messages, which it
        # can see from the per-camera seq in events; the daemon itself is never stalled.
        self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError:
            # An open socket would make Context.term() wait forever: the error must surface.
            self.socket.close(linger=0)
            raise
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, topic: bytes, body: dict[str, Any]) -> None:
        self.socket.send_multipart([topic, pack(body)])

    def close(self, linger_ms: int) -> None:
        self.socket.close(linger=linger_ms)


def result_events(
    cascade: Cascade, frames: Sequence[Frame], results: Sequence[StripResult]
) -> list[tuple[str, dict[str, Any]]]:
    """(camera, result event) for each frame of a batch the cascade ran, in order.

    The daemon's own post-processing; ``edge bench`` runs it too, so what it measures is this.
    """
    seg_spec = cascade.segmenter.spec
    model = cascade.model_ids
    events = []
    for frame, result in zip(frames, results, strict=True):
        defects = strip_defects(result, seg_spec)
        latency_ms = (time.monotonic_ns() - frame.received_ns) / 1e6
        event = protocol.result_event(
            frame.header,
            defective=bool(defects),
            scores=[round(float(s), 4) for s in result.scores],
            defects=defects,
            latency_ms=round(latency_ms, 3),
            model=model,
        )
        events.append((frame.header.camera, event))
    return events
