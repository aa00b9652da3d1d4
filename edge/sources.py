"""Where frames come from: the SUB socket that cameras publish to, and frame parsing."""

from __future__ import annotations

from collections.abc import Callable

import zmq

from edge.frames import Frame, decode_pixels
from edge.protocol import parse_frame_parts


class FrameReceiver:
    """One SUB socket connected to every camera (or bound, for cameras that connect).

    Only the thread that created it may use it: ZeroMQ sockets are not thread-safe.
    """

    def __init__(
        self,
        context: zmq.Context,
        *,
        connect: list[str],
        bind: list[str],
        rcvhwm: int,
        max_message_bytes: int,
        secure: Callable[[zmq.Socket], None] | None = None,
    ) -> None:
        self.socket = context.socket(zmq.SUB)
        if secure is not None:
            secure(self.socket)  # CURVE must be set before any bind or connect
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        # A peer that sends more than this is disconnected before the message is buffered.
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.socket.setsockopt(zmq.LINGER, 0)
        # Everything is received, even topics that are not frame/: those become rejects.
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            self.bound = [self._bind(endpoint) for endpoint in bind]
            for endpoint in connect:
                self.socket.connect(endpoint)
        except zmq.ZMQError:
            # An open socket would make Context.term() wait forever: the error must surface.
            self.socket.close(linger=0)
            raise
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)

    def _bind(self, endpoint: str) -> str:
        self.socket.bind(endpoint)
        return self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def receive(self, timeout_ms: int) -> list[zmq.Frame] | None:
        """The next message's parts (zero-copy frames), or None if none came in time."""
        if not self._poller.poll(timeout_ms):
            return None
        return self.socket.recv_multipart(copy=False)

    def close(self) -> None:
        self.socket.close(linger=0)


def read_frame(parts: list[zmq.Frame] | list[bytes]) -> Frame:
    """Validate and decode one message; raises protocol.ProtocolError naming what is wrong."""
    buffers = [p.buffer if isinstance(p, zmq.Frame) else memoryview(p) for p in parts]
    header, payload = parse_frame_parts(buffers)
    return Frame(header, decode_pixels(header, payload))
