"""The bridges' ZeroMQ side: a thread that subscribes to the daemon and feeds an EventSink.

This is the one subscriber core every output shares: the PLC bridges (a ``BridgeState``),
MQTT, the defect store. A sink must never wait on its own output: it decodes and hands the
event on (a short lock, a bounded queue), so a PLC that polls slowly, a broker or a database
that is away cannot make the daemon's events back up here.
ZeroMQ reconnects on its own, with the backoff set below, whenever the daemon goes away
(restart, crash, cable); it also re-sends the subscriptions, so nothing here has to notice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
import zmq

from edge.line.bridges.loss import TransitLoss
from edge.line.bridges.state import BridgeState, DefectNotice
from edge.protocol import EVENT_TOPIC_PREFIX, STATUS_TOPIC_PREFIX, ProtocolError, parse_event

log = structlog.get_logger("edge.bridge")

RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 5000  # backoff doubles from 0.1 s up to this
# ZMTP heartbeats find a daemon whose host vanished without closing TCP (power loss, cable),
# which would otherwise look like a quiet line forever.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 5000
# Events are tiny; a deep receive buffer rides out a burst while the state lock is contended.
RCVHWM = 100_000


class EventSink(Protocol):
    """Where a subscriber hands the daemon's messages; called on the subscriber's thread."""

    def take(self, topic: str, body: dict[str, Any]) -> None:
        """One parsed v1 message. Raise KeyError/TypeError/ValueError for a malformed one."""

    def invalid(self, reason: str) -> None:
        """A message that is not a v1 event, or one ``take`` refused (counted, never fatal)."""


class LossAware(Protocol):
    """A sink that also keeps account of events lost before they reached it (optional)."""

    def lost_on_the_way(self, count: int, reason: str) -> None:
        """``count`` more events the daemon published never arrived here (``TransitLoss``)."""


class PlcSink:
    """The PLC bridges' sink: events update a BridgeState; defective results notify."""

    def __init__(
        self, state: BridgeState, on_defect: Callable[[DefectNotice], None] | None = None
    ) -> None:
        self.state = state
        self.on_defect = on_defect

    def take(self, topic: str, body: dict[str, Any]) -> None:
        notice = self.state.apply(topic, body)
        if notice is not None and self.on_defect is not None:
            self.on_defect(notice)

    def invalid(self, reason: str) -> None:
        self.state.invalid_message()


class EventSubscriber:
    """Subscribe to ``source`` (the daemon's --publish endpoint) in a background thread."""

    def __init__(
        self,
        source: str,
        sink: EventSink,
        *,
        curve: tuple[Path, Path] | None = None,
        name: str = "bridge-subscriber",
    ) -> None:
        self.source = source
        self.sink = sink
        self.curve = curve
        self.name = name
        # The PLC sinks' BridgeState runs its own LossCheck, per camera slot; the others are
        # told here, if they can keep account (a ``lost_on_the_way`` method: LossAware).
        self._lost: Callable[[int, str], None] | None = getattr(sink, "lost_on_the_way", None)
        self._transit = TransitLoss() if callable(self._lost) else None
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._socket = self._connect()  # in the caller's thread: a bad endpoint fails start-up
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _connect(self) -> zmq.Socket:
        sock = self._context.socket(zmq.SUB)
        if self.curve is not None:
            from edge.protocol.curve import make_client

            make_client(sock, *self.curve)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.SUBSCRIBE, EVENT_TOPIC_PREFIX.encode())
        sock.setsockopt(zmq.SUBSCRIBE, STATUS_TOPIC_PREFIX.encode())
        try:
            sock.connect(self.source)
        except zmq.ZMQError as err:
            sock.close()
            self._context.term()
            raise ValueError(f"cannot connect to {self.source!r}: {err}") from None
        return sock

    def start(self) -> EventSubscriber:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0, *, drain_s: float = 0.0) -> int:
        """Stop the thread; with ``drain_s``, first hand the sink what ZeroMQ already holds.

        A store must not lose silently the events that had reached its socket when it was
        told to stop: those are read (for ``drain_s`` at most) before the socket closes.
        Returns how many messages were drained.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        drained = 0
        if drain_s > 0 and not self._thread.is_alive():
            deadline = time.monotonic() + drain_s
            while time.monotonic() < deadline and self._socket.poll(0):
                self.handle(self._socket.recv_multipart())
                drained += 1
        self._socket.close()
        self._context.term()
        return drained

    def _run(self) -> None:
        log.info("bridge subscribed", source=self.source)
        while not self._stop.is_set():
            try:
                if not self._socket.poll(100):
                    continue
                parts = self._socket.recv_multipart()
            except zmq.ZMQError as err:  # only on shutdown races; keep serving otherwise
                if self._stop.is_set():
                    return
                log.warning("bridge receive failed", error=str(err), throttle=True)
                continue
            self.handle(parts)

    def handle(self, parts: list[Any]) -> None:
        try:
            topic, body = parse_event(parts)
        except ProtocolError as err:
            self.sink.invalid(str(err))
            log.warning(
                "bridge ignored a message that is not a v1 event", reason=str(err), throttle=True
            )
            return
        try:
            self.sink.take(topic, body)
        except (KeyError, TypeError, ValueError) as err:
            # A v1 map with a field of the wrong type: count it, keep serving.
            self.sink.invalid(f"malformed {topic} event: {err!r}")
            log.warning(
                "bridge ignored a malformed event", topic=topic, error=repr(err), throttle=True
            )
        self._account(body)

    def _account(self, body: dict[str, Any]) -> None:
        """Arrived, whatever the sink made of it: LossCheck counts what never came."""
        if self._transit is None or self._lost is None:
            return
        found = self._transit.take(body)
        if found:
            why = f"lost between the daemon and {self.name} (ZeroMQ: a queue overflowed)"
            log.error("events lost on the way from the daemon", subscriber=self.name,
                      events=found, lost_total=self._transit.lost, throttle="transit-loss")  # fmt: skip
            self._lost(found, why)


class Subscriber(EventSubscriber):
    """The PLC bridges' subscriber: feeds ``state`` (and ``on_defect`` for defective results)."""

    def __init__(
        self,
        source: str,
        state: BridgeState,
        *,
        on_defect: Callable[[DefectNotice], None] | None = None,
        curve: tuple[Path, Path] | None = None,
    ) -> None:
        self.state = state
        super().__init__(source, PlcSink(state, on_defect), curve=curve)
