"""The receiver thread: the SUB socket, and every frame's first steps into the daemon.

It owns the camera socket (ZeroMQ sockets are not thread-safe): it reads each message, checks
it (header, frame limits, camera table) and decodes it, reports gaps and camera restarts from
the seqs, queues the frame for inference, and turns whatever cannot go on into its event right
here: a ``reject`` for a bad frame, a ``drop`` for one the full queue pushed out. It also
follows the sources the daemon connects to (``edge.daemon.sources.SourceWatch``): a lost one is logged,
counted and published (``source_lost``), reconnected if libzmq gave up on it, and published
again when it is back (``source_restored``). Events go to the publisher thread through the
outbox.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from edge import protocol
from edge.daemon.config import Config
from edge.daemon.frames import Frame
from edge.daemon.ledger import Ledger
from edge.daemon.metrics import Metrics
from edge.daemon.models import step
from edge.daemon.sources import FrameLimits, FrameReceiver, SourceWatch, Transition, read_frame
from edge.daemon.workqueue import WorkQueue
from edge.protocol import FrameHeader, ProtocolError
from edge.protocol.sockets import bind_when_free

log = structlog.get_logger(__name__)


class Receiver:
    def __init__(
        self,
        open_socket: Callable[[list[str] | None], FrameReceiver],
        queue: WorkQueue[Frame],
        outbox: Any,
        ledger: Ledger,
        metrics: Metrics,
        config: Callable[[], Config],
    ) -> None:
        """``open_socket(bound)`` makes the SUB socket; ``bound``: endpoints to bind again."""
        self._open_socket = open_socket
        self._queue = queue
        self._outbox = outbox
        self._ledger = ledger
        self._metrics = metrics
        self._config = config  # read per frame: a reload may change the limits
        self.stop = threading.Event()
        self._rebuild = threading.Event()
        self.socket = open_socket(None)  # in the caller's thread: a bad address fails startup
        self.watch = SourceWatch(config().sources)
        for endpoint in config().sources:
            metrics.source_up.labels(endpoint).set(0)

    @property
    def bound(self) -> list[str]:
        return self.socket.bound

    def run(self) -> None:
        """Until ``stop``: receive, and follow the sources. Closes the socket on the way out."""
        try:
            while not self.stop.is_set():
                parts = self.socket.receive(timeout_ms=100)
                if parts is not None:
                    self.accept(parts)
                self._follow_sources()
                if self._rebuild.is_set():
                    self._rebuild.clear()
                    self._replace_socket()
        finally:
            self.socket.close()

    def request_rebuild(self) -> None:
        """Make every camera connect and authenticate again (a CURVE key was revoked)."""
        self._rebuild.set()

    def _replace_socket(self) -> None:
        # Frames already in ZeroMQ's buffer came in before the revocation: they are served.
        while (parts := self.socket.receive_now()) is not None:
            self.accept(parts)
        bound = self.socket.bound
        self.socket.close()
        for transition in self.watch.reset():
            self._announce(transition, "the socket is replaced to re-authenticate every camera")
        self.socket = self._open_socket(bound)
        log.info("camera socket replaced: every camera authenticates again",
                 bound=bound, sources=self._config().sources)  # fmt: skip

    # -- sources -------------------------------------------------------------------------

    def _follow_sources(self) -> None:
        for event, endpoint, value in self.socket.events():
            transition = self.watch.on_event(event, endpoint, value)
            if transition is not None:
                self._announce(transition)
        for source in self.watch.due():
            log.info("reconnecting to source", endpoint=source.endpoint)
            try:
                self.socket.reconnect(source.endpoint)
            except zmq.ZMQError as err:
                log.error("cannot reconnect to source", endpoint=source.endpoint,
                          error=str(err), throttle=source.endpoint)  # fmt: skip

    def _announce(self, transition: Transition, why: str = "") -> None:
        source = transition.source
        kind = protocol.KIND_SOURCE_LOST
        if transition.kind == "lost":
            self._metrics.source_losses.labels(source.endpoint).inc()
            self._metrics.source_up.labels(source.endpoint).set(0)
            log.warning("source lost: its frames will show as a gap when it is back",
                        endpoint=source.endpoint, losses=source.losses,
                        throttle=source.endpoint,
                        why=why or "disconnected (camera gone, or a message over "
                        "max_message_bytes)")  # fmt: skip
        else:
            kind = protocol.KIND_SOURCE_RESTORED
            self._metrics.source_up.labels(source.endpoint).set(1)
            log.info("source restored", endpoint=source.endpoint,
                     down_s=round(transition.down_s, 3))  # fmt: skip
        event = protocol.source_event(
            kind,
            self._config().daemon_id,
            source.endpoint,
            losses=source.losses,
            down_s=transition.down_s if kind == protocol.KIND_SOURCE_RESTORED else None,
        )
        self._outbox.put((protocol.status_topic(self._config().daemon_id), event))

    # -- frames --------------------------------------------------------------------------

    def accept(self, parts: list[zmq.Frame] | list[bytes]) -> None:
        """One message: its frame queued, or its reject (or an evicted frame's drop) emitted."""
        start = time.perf_counter()
        cfg = self._config()
        try:
            frame = read_frame(parts, FrameLimits.of(cfg), self._admit)
        except ProtocolError as err:
            self._received(err.camera, err.seq)
            self.reject(err.camera, err.seq, err.reason)
            return
        self._metrics.stage("decode", time.perf_counter() - start)
        header = frame.header
        self._received(header.camera, header.seq)
        left_over = self._queue.put(frame, stop=self.stop)
        if left_over is frame:  # blocked until shutdown: never queued
            self.drop(frame, "shutdown")
        elif left_over is not None:
            self.drop(left_over, "overload")

    def _admit(self, header: FrameHeader) -> None:
        if not self._ledger.admit(header.camera):
            raise ProtocolError(
                f"camera table full: {self._ledger.max_cameras} camera ids seen already "
                f"(max_cameras); frames from {header.camera[:64]!r} are refused",
                header.camera,
                header.seq,
            )

    def _received(self, camera: str, seq: int) -> None:
        self._ledger.count(camera, "received")
        self._metrics.frame_received(camera)
        if seq == protocol.UNKNOWN_SEQ:
            return
        # A rejected frame with a readable seq has its event: it must not be in a gap too.
        for event in self._ledger.observe_seq(camera, seq):
            if event["kind"] == protocol.KIND_GAP:
                self._metrics.gap(camera, event["missing"])
            self._emit(camera, event)

    def _emit(self, camera: str, event: dict[str, Any]) -> None:
        self._outbox.put((protocol.event_topic(camera), event))

    def reject(self, camera: str, seq: int, reason: str) -> None:
        self._ledger.count(camera, "rejects")
        self._metrics.reject(camera, reason)
        log.warning("frame rejected", camera=camera, seq=seq, reason=reason)
        self._emit(camera, protocol.reject_event(camera, seq, reason))

    def drop(self, frame: Frame, reason: str) -> None:
        """A valid frame that will not be inspected: its ``drop`` event (any thread may)."""
        self._ledger.count(frame.header.camera, "drops")
        self._metrics.drop(frame.header.camera, reason)
        self._emit(frame.header.camera, protocol.drop_event(frame.header, reason))


def open_frame_socket(
    context: zmq.Context,
    cfg: Config,
    secure: Callable[[zmq.Socket], None] | None,
    bound: list[str] | None,
) -> FrameReceiver:
    """The camera socket, bound and connected one endpoint at a time, so a failure names its
    endpoint; ``bound``: what the socket it replaces had bound (ports resolved). Only
    ``bind_sources`` and ``sources`` are read from ``cfg``, with the socket options: their
    keys need a restart, so a reload's config gives the same socket."""
    made = FrameReceiver(
        context, connect=[], bind=[], rcvhwm=cfg.rcvhwm,
        max_message_bytes=cfg.max_message_bytes, secure=secure,
    )  # fmt: skip
    try:
        for endpoint in bound or cfg.bind_sources:
            with step(f"cannot bind camera socket {endpoint}"):
                made.bound.append(bind_when_free(made.socket, endpoint))
        for endpoint in cfg.sources:
            with step(f"cannot connect to source {endpoint}"):
                made.socket.connect(endpoint)
    except BaseException:
        made.close()  # an open socket would make Context.term() wait forever
        raise
    return made
