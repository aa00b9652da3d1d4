"""Where frames come from: the SUB socket that cameras publish to, its connections, and parsing.

A source the daemon connects to (``--source``) can go away without a word from ZeroMQ: a
camera that restarts, a cable pulled, or a message over ``max_message_bytes``, after which
libzmq ends the connection for good (a protocol error: it never reconnects by itself). A
socket monitor follows each connection; ``SourceWatch`` turns its events into "lost" and
"restored", and says when the daemon must reconnect itself.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from edge.daemon.frames import Frame, decode_pixels
from edge.protocol import FrameHeader, ProtocolError, parse_frame_parts
from edge.protocol.sockets import bind_when_free

# After a disconnect libzmq either retries by itself (it says so with CONNECT_RETRIED or
# CONNECT_DELAYED within its reconnect interval, 100 ms) or has ended the session (a
# protocol error). Silence this long means the latter: the daemon reconnects.
REVIVE_AFTER_S = 0.5
# How often the receiver reads the socket monitor: well within REVIVE_AFTER_S, and rare
# enough to cost nothing per frame.
MONITOR_EVERY_S = 0.05
_MONITORED = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_CONNECT_DELAYED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_RETRYING = (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CONNECT_DELAYED)
_REFUSED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
)


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """The largest frame the daemon takes; bigger ones are rejected before decoding."""

    pixels: int
    height: int
    width: int

    @classmethod
    def of(cls, config: Any) -> FrameLimits:
        return cls(config.max_frame_pixels, config.max_frame_height, config.max_frame_width)


def check_limits(header: FrameHeader, limits: FrameLimits) -> None:
    """Raise ProtocolError if the header's frame is bigger than ``limits`` allow."""

    def over(what: str, value: int, key: str, limit: int) -> ProtocolError:
        return ProtocolError(
            f"frame {what} {value} is over {key} = {limit} (shape {list(header.shape)})",
            header.camera,
            header.seq,
        )

    if header.height > limits.height:
        raise over("height", header.height, "max_frame_height", limits.height)
    if header.width > limits.width:
        raise over("width", header.width, "max_frame_width", limits.width)
    if header.height * header.width > limits.pixels:
        raise over("pixels", header.height * header.width, "max_frame_pixels", limits.pixels)


def read_frame(
    parts: list[zmq.Frame] | list[bytes],
    limits: FrameLimits | None = None,
    admit: Callable[[FrameHeader], None] | None = None,
) -> Frame:
    """Validate and decode one message; raises protocol.ProtocolError naming what is wrong.

    The header, ``admit`` (the daemon's camera table), the payload's size and the frame limits
    are all checked before any decoder runs, so a frame costs at most what its shape, within
    the limits, calls for.
    """
    buffers = [p.buffer if isinstance(p, zmq.Frame) else memoryview(p) for p in parts]
    header, payload = parse_frame_parts(buffers)
    if admit is not None:
        admit(header)
    if limits is not None:
        check_limits(header, limits)
    return Frame(header, decode_pixels(header, payload))


@dataclass(slots=True)
class Source:
    """What the daemon knows of one endpoint it connects to."""

    endpoint: str
    up: bool = False
    since: float = field(default_factory=time.monotonic)  # when ``up`` last changed
    losses: int = 0
    ever_up: bool = False
    revive_at: float | None = None  # reconnect then, unless libzmq says it retries itself
    refused: str = ""  # why the last handshake failed, if it did

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "up": self.up,
            "since_s": round(now - self.since, 3),
            "losses": self.losses,
            **({"refused": self.refused} if self.refused and not self.up else {}),
        }


@dataclass(frozen=True, slots=True)
class Transition:
    kind: str  # "lost" or "restored"
    source: Source
    down_s: float  # for "restored": how long it was away


class SourceWatch:
    """Follows the connect-side endpoints from socket monitor events (pure: no sockets)."""

    def __init__(self, endpoints: list[str], clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.sources = {endpoint: Source(endpoint, since=clock()) for endpoint in endpoints}

    def on_event(self, event: int, endpoint: str, value: int = 0) -> Transition | None:
        source = self.sources.get(endpoint)
        if source is None:  # a bound endpoint's peers: cameras that reconnect themselves
            return None
        now = self._clock()
        if event in _RETRYING:
            source.revive_at = None
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            source.revive_at = None
            source.refused = ""
            if not source.up:
                down_s = now - source.since
                source.up, source.since, was_up = True, now, source.ever_up
                source.ever_up = True
                if was_up:
                    return Transition("restored", source, down_s)
        elif event in _REFUSED:
            source.refused = _REFUSAL.get(event, "handshake failed") + f" (errno {value})"
        elif event == zmq.EVENT_DISCONNECTED:
            source.revive_at = now + REVIVE_AFTER_S
            if source.up:
                source.up, source.since = False, now
                source.losses += 1
                return Transition("lost", source, 0.0)
        return None

    def due(self) -> list[Source]:
        """Sources libzmq has given up on: the caller reconnects them."""
        now = self._clock()
        due = [s for s in self.sources.values() if s.revive_at is not None and s.revive_at <= now]
        for source in due:
            source.revive_at = None
        return due

    def reset(self) -> list[Transition]:
        """The socket is being replaced: every source must connect again ("lost" until then)."""
        now = self._clock()
        lost = []
        for source in self.sources.values():
            source.revive_at = None
            if source.up:
                source.up, source.since = False, now
                source.losses += 1
                lost.append(Transition("lost", source, 0.0))
        return lost

    def down(self) -> list[Source]:
        return [s for s in self.sources.values() if not s.up]


_REFUSAL = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "CURVE authentication failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "ZMTP handshake failed",
}


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
        bound: list[str] | None = None,
    ) -> None:
        """``bound``: the endpoints an earlier receiver bound (ports resolved), to bind again."""
        self._connect = connect
        self.socket = context.socket(zmq.SUB)
        if secure is not None:
            secure(self.socket)  # CURVE must be set before any bind or connect
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        # A peer that sends more than this is disconnected before the message is buffered.
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.socket.setsockopt(zmq.LINGER, 0)
        # Everything is received, even topics that are not frame/: those become rejects.
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.monitor = self.socket.get_monitor_socket(_MONITORED)
        try:
            self.bound = [self._bind(endpoint) for endpoint in (bound or bind)]
            for endpoint in connect:
                self.socket.connect(endpoint)
        except zmq.ZMQError:
            # An open socket would make Context.term() wait forever: the error must surface.
            self.close()
            raise
        self._timeout_ms = -1  # RCVTIMEO as last set
        self._monitor_due = 0.0  # events() reads the monitor from then on

    def _bind(self, endpoint: str) -> str:
        # A replaced socket rebinds the port its predecessor held a moment ago.
        return bind_when_free(self.socket, endpoint)

    def receive(self, timeout_ms: int) -> list[zmq.Frame] | None:
        """The next message's parts (zero-copy frames), or None if none came in time.

        One at a time: what the daemon holds beyond ZeroMQ's buffer stays one message
        (edge.daemon.memory). A blocking receive in libzmq, not a poll over this socket and the
        monitor's: a frame then costs one release of the GIL and a few system calls instead of
        a Python poller's round of them (measured on 2 vCPUs at 300 frames/s: the receiver
        made ~8 poll() calls a frame). The monitor is read by ``events`` at most every
        MONITOR_EVERY_S instead, which the source watch's half-second revival allows.
        """
        if timeout_ms != self._timeout_ms:
            self.socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
            self._timeout_ms = timeout_ms
        try:
            return self.socket.recv_multipart(copy=False)
        except zmq.Again:
            return None

    def receive_now(self) -> list[zmq.Frame] | None:
        """A message already buffered, or None: what is left before the socket is replaced."""
        try:
            return self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None

    def events(self) -> list[tuple[int, str, int]]:
        """Socket monitor events that arrived: (event, endpoint, value); the monitor is asked
        at most every MONITOR_EVERY_S (none found until then)."""
        found: list[tuple[int, str, int]] = []
        now = time.monotonic()
        if now < self._monitor_due:
            return found
        self._monitor_due = now + MONITOR_EVERY_S
        while True:
            try:
                message = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return found
            event = parse_monitor_message(message)
            found.append((event["event"], event["endpoint"].decode(), event["value"]))

    def reconnect(self, endpoint: str) -> None:
        """Connect again to an endpoint libzmq gave up on (e.g. after an oversized message)."""
        with contextlib.suppress(zmq.ZMQError):  # already gone from the socket: fine
            self.socket.disconnect(endpoint)
        self.socket.connect(endpoint)

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)
