"""Publishing strips as a camera would: a stand-in camera for tests, demos and replays.

A ``FramePublisher`` binds an XPUB socket, where a real camera binds its PUB socket. XPUB
delivers subscription messages to the publisher, so it can wait until the daemon has actually
subscribed before sending; a plain PUB silently drops everything sent during ZeroMQ's
connection handshake (the "slow joiner" problem) and the first frames of a run would be lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import cv2
import numpy as np
import structlog
import zmq

from edge.line.recording import read_info, read_recording
from edge.line.stamping import MetaStamp, stamp_frame_parts
from edge.protocol import ENCODINGS, FrameHeader, encode_frame
from edge.protocol.sockets import bind_when_free

IMAGE_SUFFIXES: Final = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Slice for waits that must notice a stop request without spinning.
_SLICE_S: Final = 0.1
# A pacer that falls further behind than this restarts its schedule from now instead of
# sending the whole backlog in one burst (which no real camera does).
RESYNC_AFTER_S: Final = 1.0

log = structlog.get_logger(__name__)


class ImageLoadError(ValueError):
    """An image file or folder that cannot be used; the message names the path."""


class FramePublisher:
    """One bound XPUB socket that sends frame messages. Use from one thread only."""

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context | None = None,
        sndhwm: int = 1000,
        curve: tuple[Path, Path] | None = None,
    ) -> None:
        """``curve``: the daemon's public server.key and this camera's .key_secret."""
        ctx = context if context is not None else zmq.Context.instance()
        self._socket = ctx.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.SNDHWM, sndhwm)
        if curve is not None:
            from edge.protocol.curve import make_client

            try:
                make_client(self._socket, *curve)
            except Exception:
                self._socket.close(linger=0)
                raise
        try:
            bind_when_free(self._socket, endpoint)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            raise zmq.ZMQError(exc.errno, f"cannot bind camera to {endpoint}: {exc}") from exc
        self._endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        # Topics with at least one subscriber. XPUB (non-verbose) reports the first subscribe
        # and the last unsubscribe per topic, so this is exactly "someone is listening".
        self._topics: set[bytes] = set()
        self._closed = False

    @property
    def endpoint(self) -> str:
        """The endpoint really bound (a port given as 0 or * resolved)."""
        return self._endpoint

    @property
    def has_subscriber(self) -> bool:
        self._drain_subscriptions()
        return bool(self._topics)

    def wait_for_subscriber(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a subscriber; True once one has subscribed."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.has_subscriber:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._socket.poll(max(1, int(left * 1000)), zmq.POLLIN)

    def _drain_subscriptions(self) -> None:
        while True:
            try:
                msg = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            # First byte 1 = subscribe, 0 = unsubscribe; the rest is the topic prefix.
            if msg[:1] == b"\x01":
                self._topics.add(msg[1:])
            elif msg[:1] == b"\x00":
                self._topics.discard(msg[1:])

    def send_parts(self, parts: Sequence[bytes | memoryview]) -> None:
        """Send one multipart message as is (any number of parts, valid or not)."""
        # bytes are immutable, so ZeroMQ may send them without copying; a memoryview could be
        # changed by the caller while still queued, so it is copied.
        zero_copy = all(isinstance(p, bytes) for p in parts)
        self._socket.send_multipart(list(parts), copy=not zero_copy)

    def send_image(
        self,
        camera: str,
        seq: int,
        image: np.ndarray,
        *,
        encoding: str = "raw",
        ts_ns: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Encode ``image`` (H x W gray, or H x W x 3 RGB, uint8) and send it as one frame."""
        header = FrameHeader(
            camera=camera,
            seq=seq,
            ts_ns=time.time_ns() if ts_ns is None else ts_ns,
            encoding=encoding,
            shape=tuple(int(d) for d in image.shape),
            meta=dict(meta) if meta else {},
        )
        self.send_parts(encode_frame(header, encode_payload(image, encoding)))

    def close(self, linger_ms: int = 1000) -> None:
        """Close the socket, giving queued frames up to ``linger_ms`` to go out."""
        if not self._closed:
            self._closed = True
            self._socket.close(linger=linger_ms)

    def __enter__(self) -> FramePublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def encode_payload(image: np.ndarray, encoding: str) -> bytes:
    """The payload bytes for ``image`` in ``encoding`` (raw, jpeg or png)."""
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ValueError(f"images must be H x W or H x W x 1|3, got shape {list(image.shape)}")
    if encoding == "raw":
        return image.tobytes(order="C")
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {list(ENCODINGS)}")
    # The protocol's 3-channel order is RGB; OpenCV encodes BGR.
    pixels = (
        cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 and image.shape[2] == 3 else image
    )
    ok, buf = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", pixels)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {list(image.shape)} image as {encoding}")
    return buf.tobytes()


def load_strip(path: Path, *, gray: bool = True) -> np.ndarray:
    """Read an image file as the protocol's pixels: H x W if ``gray``, else H x W x 3 RGB.

    Strip images are usually stored as 3-channel files with R=G=B (the Severstal set is); those
    become exactly their one channel. A truly coloured file given with ``gray`` is converted
    with OpenCV's luma weights.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such image file")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageLoadError(f"{path}: not a readable image (OpenCV could not decode it)")
    if image.dtype != np.uint8:
        raise ImageLoadError(f"{path}: {image.dtype} pixels; the protocol carries uint8 only")
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image if gray else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if not gray:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    first = image[:, :, 0]
    if np.array_equal(first, image[:, :, 1]) and np.array_equal(first, image[:, :, 2]):
        return np.ascontiguousarray(first)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (png, jpg/jpeg, bmp, tif/tiff), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageLoadError(f"{folder}: no such folder")
    found = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not found:
        raise ImageLoadError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return found


class Pacer:
    """Sleeps to an absolute schedule: slot n is due at (first call) + n / fps, so time spent
    between calls never accumulates into drift. ``fps=None`` never waits.

    ``wait_until_offset`` paces by recorded timestamps instead: each call is due at the time of
    the first call plus ``offset_ns`` minus the first call's ``offset_ns``, so raw recorded
    timestamps can be passed directly.

    A caller late by more than ``resync_after_s`` restarts the schedule from now rather than
    catching up with a burst. ``clock`` (monotonic ns) and ``sleep`` (seconds) are injectable
    for tests; pass ``threading.Event.wait`` as ``sleep`` to make waits interruptible.
    """

    def __init__(
        self,
        fps: float | None,
        *,
        resync_after_s: float = RESYNC_AFTER_S,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self._resync_ns = int(resync_after_s * 1e9)
        self._clock = clock
        self._sleep = sleep
        self._start_ns: int | None = None
        self._slot = 0
        self._base_offset_ns = 0

    def wait(self) -> None:
        """Return at the next slot of the fps schedule (at once on the first call)."""
        if self.fps is None:
            return
        if self._start_ns is None:
            self._start_ns = self._clock()
            self._slot = 0
            return
        self._slot += 1
        self._wait_until(round(self._slot * 1e9 / self.fps))

    def wait_until_offset(self, offset_ns: int) -> None:
        """Return ``offset_ns`` after the first call's offset, measured from the first call."""
        if self._start_ns is None:
            self._start_ns = self._clock()
            self._base_offset_ns = offset_ns
            return
        self._wait_until(offset_ns - self._base_offset_ns)

    def _wait_until(self, due_after_start_ns: int) -> None:
        assert self._start_ns is not None
        due = self._start_ns + due_after_start_ns
        now = self._clock()
        if now - due > self._resync_ns:
            # Shift the whole schedule so this slot is now; later slots keep their spacing.
            self._start_ns += now - due
            return
        if due > now:
            self._sleep((due - now) / 1e9)


def run_camera(
    to: str,
    images: Iterable[np.ndarray | tuple[np.ndarray, dict[str, Any]]],
    *,
    camera: str = "cam1",
    fps: float | None = 20.0,
    encoding: str = "raw",
    count: int | None = None,
    start_seq: int = 0,
    wait_subscriber_s: float = 5.0,
    stop: threading.Event | None = None,
    on_sent: Callable[[int], None] | None = None,
    curve: tuple[Path, Path] | None = None,
    on_waiting: Callable[[str, float], None] | None = None,
) -> int:
    """Bind at ``to`` and publish ``images`` as camera ``camera``; return the frames sent.

    Frames carry seq ``start_seq``, ``start_seq + 1``, ... and ``ts_ns`` = wall clock at send.
    An item may be ``(image, meta)`` to send header meta. Stops when ``images`` is exhausted,
    ``count`` frames are sent, or ``stop`` is set. Waits up to ``wait_subscriber_s`` for a
    subscriber first, then publishes regardless (as a real camera would). ``on_sent`` gets the
    running count after each frame. ``on_waiting(endpoint, timeout_s)`` is called once, before
    the wait, when no subscriber is there yet. To loop over a folder, pass
    ``itertools.cycle(...)``.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {list(ENCODINGS)}")
    sent = 0
    with FramePublisher(to, curve=curve) as pub:
        _wait_subscriber(pub, wait_subscriber_s, stop, on_waiting)
        pacer = Pacer(fps, sleep=_sleeper(stop))
        items = iter(images)
        # Checked before pulling the next item, so a lazy loader never reads one image too many.
        while (count is None or sent < count) and not _stopped(stop):
            item = next(items, None)
            if item is None:
                break
            image, meta = item if isinstance(item, tuple) else (item, None)
            pacer.wait()
            if _stopped(stop):
                break
            pub.send_image(camera, start_seq + sent, image, encoding=encoding, meta=meta)
            sent += 1
            if on_sent is not None:
                on_sent(sent)
    return sent


def replay(
    path: Path,
    to: str,
    *,
    fps: float | None = None,
    as_fast_as_possible: bool = False,
    wait_subscriber_s: float = 5.0,
    stop: threading.Event | None = None,
    allow_truncated: bool = False,
    curve: tuple[Path, Path] | None = None,
    stamp: MetaStamp | None = None,
    on_sent: Callable[[int], None] | None = None,
    on_waiting: Callable[[str, float], None] | None = None,
) -> int:
    """Bind at ``to`` and publish every message of the recording at ``path``, parts unchanged.

    With ``stamp``, frames get the line meta stamped into their header (``stamp_frame_parts``).

    Pacing follows the recorded receive times unless ``fps`` is given; ``as_fast_as_possible``
    sends without waiting. Returns the messages sent. A truncated recording raises
    RecordingError after its complete records are sent, unless ``allow_truncated``.
    ``on_sent`` and ``on_waiting`` are called as by ``run_camera``.
    """
    read_info(path)  # a bad file fails here, before anything is bound or waited for
    sent = 0
    with FramePublisher(to, curve=curve) as pub:
        _wait_subscriber(pub, wait_subscriber_s, stop, on_waiting)
        pacer = Pacer(fps, sleep=_sleeper(stop))
        for rec in read_recording(path, allow_truncated=allow_truncated):
            if _stopped(stop):
                break
            if as_fast_as_possible:
                pass
            elif fps is not None:
                pacer.wait()
            else:
                pacer.wait_until_offset(rec.recv_ts_ns)
            if _stopped(stop):
                break
            pub.send_parts(rec.parts if stamp is None else stamp_frame_parts(rec.parts, stamp))
            sent += 1
            if on_sent is not None:
                on_sent(sent)
    return sent


def _stopped(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _sleeper(stop: threading.Event | None) -> Callable[[float], Any]:
    # Event.wait returns early when the event is set, so a stop cuts a long pause short.
    return time.sleep if stop is None else stop.wait


def _wait_subscriber(
    pub: FramePublisher,
    timeout_s: float,
    stop: threading.Event | None,
    on_waiting: Callable[[str, float], None] | None = None,
) -> bool:
    """Wait for a subscriber; without one in time, warn and go on, as a real camera would."""
    if on_waiting is not None and timeout_s > 0 and not pub.has_subscriber:
        on_waiting(pub.endpoint, timeout_s)
    deadline = time.monotonic() + timeout_s
    while not _stopped(stop):
        left = deadline - time.monotonic()
        if pub.wait_for_subscriber(max(0.0, min(left, _SLICE_S))):
            return True
        if left <= 0:
            break
    log.warning("no subscriber, publishing anyway", endpoint=pub.endpoint, waited_s=timeout_s)
    return False
