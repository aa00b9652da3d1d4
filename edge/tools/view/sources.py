"""The view's two inputs: the daemon's events (an EventSink on the bridges' subscriber core)
and the cameras' frames, for the pixels the events do not carry.

Frames are decoded with the daemon's own hardened decoder (``edge.daemon.frames``): a camera
that sends a decode bomb to the daemon sends it to the view too. A frame the view cannot or will
not keep (malformed, over VIEW_MAX_PIXELS) costs only its strip's picture: the strip still
shows, outlined, from its event.
"""

from __future__ import annotations

import threading
from typing import Any, Final

import structlog
import zmq

from edge.daemon.frames import decode_pixels
from edge.line.bridges.subscriber import HEARTBEAT_IVL_MS, HEARTBEAT_TIMEOUT_MS
from edge.protocol import (
    KIND_DROP,
    KIND_GAP,
    KIND_REJECT,
    KIND_RESULT,
    KIND_SOURCE_LOST,
    KIND_SOURCE_RESTORED,
    KIND_STATUS,
    ProtocolError,
    parse_frame_parts,
)
from edge.tools.view.state import VIEW_MAX_PIXELS, ViewState

log = structlog.get_logger("edge.view")

FRAME_RCVHWM: Final = 64  # the view wants the latest strips, not every one: ZeroMQ sheds the rest


class ViewSink:
    """The daemon's events into a ViewState (called on the subscriber's thread)."""

    def __init__(self, state: ViewState) -> None:
        self.state = state

    def take(self, topic: str, body: dict[str, Any]) -> None:
        kind = body["kind"]
        if kind == KIND_RESULT:
            self.state.result(body)
        elif kind == KIND_REJECT:
            self.state.count("rejects")
        elif kind == KIND_DROP:
            self.state.count("drops")
        elif kind == KIND_GAP:
            self.state.count("missing", int(body["missing"]))
        elif kind == KIND_STATUS:
            self.state.status(body)
        elif kind in (KIND_SOURCE_LOST, KIND_SOURCE_RESTORED):
            self.state.source(kind == KIND_SOURCE_LOST, str(body["endpoint"]))

    def invalid(self, reason: str) -> None:
        self.state.invalid += 1


class FrameSubscriber:
    """Subscribes to the cameras' frames in a background thread; each kept frame goes to state."""

    def __init__(self, endpoints: list[str], state: ViewState) -> None:
        self.endpoints = endpoints
        self.state = state
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, FRAME_RCVHWM)
        self._socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        self._socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"frame/")
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
        )
        try:
            for endpoint in endpoints:
                self._socket.connect(endpoint)
                state.camera_link(endpoint, up=False)  # until the connection is up
        except zmq.ZMQError as err:
            self.close()
            raise ValueError(f"cannot connect to camera {endpoint!r}: {err}") from None
        self._thread = threading.Thread(target=self._run, name="view-frames", daemon=True)

    def start(self) -> FrameSubscriber:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.close()

    def close(self) -> None:
        self._socket.disable_monitor()
        self._monitor.close(0)
        self._socket.close(0)
        self._context.term()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(100))
                if self._monitor in ready:
                    self._link(self._monitor.recv_multipart())
                if self._socket in ready:
                    self.handle(self._socket.recv_multipart(copy=False))
            except zmq.ZMQError as err:
                if self._stop.is_set():
                    return
                log.warning("view frame receive failed", error=str(err), throttle=True)

    def _link(self, message: list[bytes]) -> None:
        from zmq.utils.monitor import parse_monitor_message

        event = parse_monitor_message(message)
        endpoint = event["endpoint"].decode() if isinstance(event["endpoint"], bytes) else ""
        if endpoint in self.endpoints:
            self.state.camera_link(endpoint, up=event["event"] == zmq.EVENT_CONNECTED)

    def handle(self, parts: list[Any]) -> None:
        try:
            header, payload = parse_frame_parts([p.buffer if hasattr(p, "buffer") else p
                                                 for p in parts])  # fmt: skip
            if header.height * header.width > VIEW_MAX_PIXELS:
                return  # shown from its event alone: the view keeps strips, not posters
            if not self.state.frame_due(header.camera):
                return  # decoding (or copying) only for a strip that may be drawn
            pixels = decode_pixels(header, payload)
        except ProtocolError as err:
            log.info("view skipped a frame it cannot show", reason=str(err), throttle=True)
            return
        # A raw frame is a view of ZeroMQ's buffer: copied, as the state outlives the message.
        self.state.frame(header.camera, header.seq, pixels.copy())
