"""Where events go: the PUB socket subscribers connect to, and the result events themselves."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from edge import protocol
from edge.daemon.frames import Frame
from edge.protocol import pack
from edge.protocol.sockets import bind_when_free
from edge.vision.cascade import Cascade, StripResult
from edge.vision.crops import defect_crop
from edge.vision.postprocess import strip_defects

REBIND_FLUSH_MS = 500
REBIND_GRACE_S = 0.5


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
        self._context, self._sndhwm, self._secure = context, sndhwm, secure
        self.socket = self._open(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _open(self, endpoint: str, patience_s: float = 0.0) -> zmq.Socket:
        socket = self._context.socket(zmq.PUB)
        if self._secure is not None:
            self._secure(socket)  # CURVE must be set before the bind
        # PUB never blocks: past the high-water mark a slow subscriber loses messages, which it
        # can see from the per-camera seq in events; the daemon itself is never stalled.
        socket.setsockopt(zmq.SNDHWM, self._sndhwm)
        try:
            bind_when_free(socket, endpoint, patience_s)
        except zmq.ZMQError:
            # An open socket would make Context.term() wait forever: the error must surface.
            socket.close(linger=0)
            raise
        return socket

    def rebind(self, grace_s: float = REBIND_GRACE_S) -> None:
        """A new socket on the same endpoint: every subscriber connects and authenticates again.

        What was queued for the old peers is flushed to them first (it was made before the
        revocation), and events wait ``grace_s`` so that subscribers reconnecting at ZeroMQ's
        100 ms interval miss nothing.
        """
        self.socket.close(linger=REBIND_FLUSH_MS)
        self.socket = self._open(self.endpoint, patience_s=2.0)
        time.sleep(grace_s)

    def send(self, topic: bytes, body: dict[str, Any]) -> None:
        self.socket.send_multipart([topic, pack(body)])

    def close(self, linger_ms: int) -> None:
        self.socket.close(linger=linger_ms)


def result_events(
    cascade: Cascade,
    frames: Sequence[Frame],
    results: Sequence[StripResult],
    *,
    crops: bool = False,
) -> list[tuple[str, dict[str, Any]]]:
    """(camera, result event) for each frame of a batch the cascade ran, in order.

    ``crops``: each defect gets ``crop``, a bounded JPEG of the frame about its largest
    component (``publish_crops``; ``edge.vision.crops``).

    The daemon's own post-processing; ``edge bench`` runs it too, so what it measures is this.
    """
    seg_spec = cascade.segmenter.spec
    model = cascade.model_ids
    events = []
    for frame, result in zip(frames, results, strict=True):
        defects = strip_defects(result, seg_spec)
        if crops:
            for defect in defects:
                crop = defect_crop(frame.pixels, defect)
                if crop is not None:
                    defect["crop"] = crop
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
