"""The wire protocol, version 1: what crosses ZeroMQ between cameras, the daemon and subscribers.

This module is the contract a bridge author reads (docs/protocol.md says the same in prose). It
depends only on msgpack; image decoding lives in ``edge.daemon.frames``.

Camera -> daemon, a multipart message of three frames:
    1. topic   ``frame/<camera_id>`` (UTF-8)
    2. header  msgpack map ``{v, camera, seq, ts_ns, encoding, shape, dtype[, meta]}``
    3. payload raw C-order pixels, or the encoded JPEG/PNG bytes

Daemon -> subscribers, a multipart message of two frames:
    1. topic   ``event/<camera_id>`` or ``status/<daemon_id>``
    2. body    msgpack map with ``v`` and ``kind``
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

VERSION: Final = 1
FRAME_TOPIC_PREFIX: Final = "frame/"
EVENT_TOPIC_PREFIX: Final = "event/"
STATUS_TOPIC_PREFIX: Final = "status/"
ENCODINGS: Final = ("raw", "jpeg", "png")
DTYPES: Final = ("uint8",)
CHANNELS: Final = (1, 3)
# A header may not claim more pixels than this; checked before any allocation so a forged
# 2 GB shape costs nothing. 64 Mpx is 160x a nominal 256x1600 strip.
MAX_PIXELS: Final = 64 * 1024 * 1024
# A header, its meta included, is a few hundred bytes. Checked before unpacking: msgpack objects
# take up to ~70 times their wire size in Python, and every queued frame and event holds its meta.
MAX_HEADER_BYTES: Final = 8 * 1024
# Used in reject events when the camera cannot be read from the message at all.
UNKNOWN_CAMERA: Final = "unknown"
UNKNOWN_SEQ: Final = -1

KIND_RESULT: Final = "result"
KIND_REJECT: Final = "reject"
KIND_DROP: Final = "drop"
KIND_GAP: Final = "gap"
KIND_CAMERA_RESTART: Final = "camera_restart"
KIND_STATUS: Final = "status"
KIND_SOURCE_LOST: Final = "source_lost"
KIND_SOURCE_RESTORED: Final = "source_restored"


class ProtocolError(ValueError):
    """A message that breaks the protocol. ``str(err)`` is the reject reason sent to subscribers.

    ``camera`` and ``seq`` are whatever could be read before the problem was found, so the reject
    event can still be matched to the frame that caused it.
    """

    def __init__(self, reason: str, camera: str = UNKNOWN_CAMERA, seq: int = UNKNOWN_SEQ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.camera = camera
        self.seq = seq


@dataclass(frozen=True, slots=True)
class FrameHeader:
    camera: str
    seq: int
    ts_ns: int
    encoding: str
    shape: tuple[int, ...]
    dtype: str = "uint8"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def channels(self) -> int:
        return self.shape[2] if len(self.shape) == 3 else 1

    @property
    def raw_size(self) -> int:
        """Bytes a raw payload of this shape and dtype must have."""
        return math.prod(self.shape)  # uint8 is the only dtype in v1

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "v": VERSION,
            "camera": self.camera,
            "seq": self.seq,
            "ts_ns": self.ts_ns,
            "encoding": self.encoding,
            "shape": list(self.shape),
            "dtype": self.dtype,
        }
        if self.meta:
            body["meta"] = self.meta
        return body


def frame_topic(camera: str) -> bytes:
    return (FRAME_TOPIC_PREFIX + camera).encode()


def event_topic(camera: str) -> bytes:
    return (EVENT_TOPIC_PREFIX + camera).encode()


def status_topic(daemon_id: str) -> bytes:
    return (STATUS_TOPIC_PREFIX + daemon_id).encode()


def pack(body: dict[str, Any]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    # strict_map_key=False: a forged header with non-str keys must give a reject, not a crash.
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode_frame(header: FrameHeader, payload: bytes | memoryview) -> list[bytes | memoryview]:
    """The three parts a camera sends for one strip."""
    return [frame_topic(header.camera), pack(header.to_wire()), payload]


def parse_frame_parts(parts: list[bytes] | list[memoryview]) -> tuple[FrameHeader, memoryview]:
    """Validate one received multipart message; return its header and a view of its payload.

    Raises ProtocolError naming the first thing that is wrong, filed under the camera and seq as
    far as readable (see ``_address``). Nothing is decoded or allocated in proportion to what
    the header claims.
    """
    if len(parts) != 3:
        raise ProtocolError(
            f"expected 3 message parts (topic, header, payload), got {len(parts)}",
            *_address(parts[0] if parts else None, parts[1] if len(parts) >= 2 else None),
        )
    topic_camera = _parse_topic(bytes(parts[0]), parts[1])
    if len(parts[1]) > MAX_HEADER_BYTES:
        raise ProtocolError(
            f"header is {len(parts[1])} bytes, more than {MAX_HEADER_BYTES} (meta included)",
            topic_camera,
        )
    try:
        raw_header = unpack(parts[1])
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
        raise ProtocolError(f"header is not valid msgpack ({detail})", topic_camera) from exc
    header = parse_header(raw_header, topic_camera)
    payload = memoryview(parts[2])
    if header.encoding == "raw" and payload.nbytes != header.raw_size:
        raise ProtocolError(
            f"payload size mismatch: shape {list(header.shape)} {header.dtype} needs "
            f"{header.raw_size} bytes, got {payload.nbytes}",
            header.camera,
            header.seq,
        )
    if header.encoding != "raw" and payload.nbytes == 0:
        raise ProtocolError(f"empty {header.encoding} payload", header.camera, header.seq)
    return header, payload


def _parse_topic(topic: bytes, header: bytes | memoryview | None = None) -> str:
    """The camera a ``frame/<id>`` topic names.

    ``header`` is the message's header part: a bad topic's reject is still filed under the
    header's camera and seq when those are readable.
    """
    try:
        text = topic.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"topic is not UTF-8: {topic[:64]!r}"
        raise ProtocolError(reason, *_address(None, header)) from exc
    if not text.startswith(FRAME_TOPIC_PREFIX) or len(text) == len(FRAME_TOPIC_PREFIX):
        reason = f"topic must be 'frame/<camera_id>', got {text[:64]!r}"
        raise ProtocolError(reason, *_address(None, header))
    return text[len(FRAME_TOPIC_PREFIX) :]


def _address(
    topic: bytes | memoryview | None, header: bytes | memoryview | None
) -> tuple[str, int]:
    """(camera, seq) of a rejected message as far as readable; never raises.

    Camera: the header's, else the topic's, else "unknown"; seq: the header's, else -1. Only
    called once a message is already rejected, so a good frame's header is unpacked once.
    """
    camera = UNKNOWN_CAMERA
    if topic is not None:
        with contextlib.suppress(ProtocolError):
            camera = _parse_topic(bytes(topic))
    if header is None or len(header) > MAX_HEADER_BYTES:
        return camera, UNKNOWN_SEQ
    try:
        # Bounded by the part's own size: msgpack caps every claimed length at the buffer's.
        raw = unpack(header)
    except Exception:  # not msgpack: simply unreadable; the reason is another problem
        return camera, UNKNOWN_SEQ
    if not isinstance(raw, dict):
        return camera, UNKNOWN_SEQ
    return _header_address(raw, camera)


def _header_address(raw: dict[Any, Any], fallback_camera: str) -> tuple[str, int]:
    # The same rule as parse_header's, which inlines it: a good frame pays no extra call.
    camera, seq = raw.get("camera"), raw.get("seq")
    camera_ok = isinstance(camera, str) and camera != ""
    seq_ok = isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0
    return (camera if camera_ok else fallback_camera, seq if seq_ok else UNKNOWN_SEQ)


def parse_header(raw: Any, topic_camera: str | None = None) -> FrameHeader:
    """Check a decoded header map field by field; raise ProtocolError naming the bad field.

    ``topic_camera`` is the camera named in the topic, which the header must match. A reject is
    filed under the header's camera (else the topic's) and the header's seq, when valid.
    """
    fallback_camera = UNKNOWN_CAMERA if topic_camera is None else topic_camera
    if not isinstance(raw, dict):
        raise ProtocolError(
            f"header must be a msgpack map, got {type(raw).__name__}", fallback_camera
        )
    camera = raw.get("camera")
    camera_ok = isinstance(camera, str) and camera != ""
    seq = raw.get("seq")
    seq_ok = isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0
    where = (camera if camera_ok else fallback_camera, seq if seq_ok else UNKNOWN_SEQ)

    def fail(reason: str) -> ProtocolError:
        return ProtocolError(reason, *where)

    version = raw.get("v")
    if type(version) is not int or version != VERSION:  # True and 1.0 equal 1 in Python
        raise fail(f"unknown protocol version v={version!r}; this daemon speaks v={VERSION}")
    if not camera_ok:
        raise fail(f"header field 'camera' must be a non-empty string, got {camera!r}")
    if topic_camera is not None and camera != topic_camera:
        raise fail(f"topic camera {topic_camera!r} does not match header camera {camera!r}")
    if not seq_ok:
        raise fail(f"header field 'seq' must be an integer >= 0, got {seq!r}")
    ts_ns = raw.get("ts_ns")
    if not isinstance(ts_ns, int) or isinstance(ts_ns, bool):
        raise fail(f"header field 'ts_ns' must be an integer, got {ts_ns!r}")
    encoding = raw.get("encoding")
    if encoding not in ENCODINGS:
        raise fail(f"header field 'encoding' must be one of {list(ENCODINGS)}, got {encoding!r}")
    dtype = raw.get("dtype")
    if dtype not in DTYPES:
        raise fail(f"header field 'dtype' must be one of {list(DTYPES)}, got {dtype!r}")
    shape = _parse_shape(raw.get("shape"), fail)
    meta = raw.get("meta", {})
    if not isinstance(meta, dict):
        raise fail(f"header field 'meta' must be a map, got {type(meta).__name__}")
    return FrameHeader(camera, seq, ts_ns, encoding, shape, dtype, meta)


def _parse_shape(shape: Any, fail: Any) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or len(shape) not in (2, 3):
        raise fail(f"header field 'shape' must be [h, w] or [h, w, c], got {shape!r}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise fail(f"header field 'shape' must hold positive integers, got {shape!r}")
    if len(shape) == 3 and shape[2] not in CHANNELS:
        raise fail(f"bad shape {list(shape)}: channels must be one of {list(CHANNELS)}")
    if math.prod(shape[:2]) > MAX_PIXELS:
        raise fail(f"bad shape {list(shape)}: more than {MAX_PIXELS} pixels per frame")
    return tuple(shape)


# -- events: daemon -> subscribers -----------------------------------------------------------


def result_event(
    header: FrameHeader,
    *,
    defective: bool,
    scores: list[float],
    defects: list[dict[str, Any]],
    latency_ms: float,
    model: dict[str, str],
) -> dict[str, Any]:
    """``defects`` entries: ``{class_id, name, score, area_px, mask_rle, components}``."""
    return {
        "v": VERSION,
        "kind": KIND_RESULT,
        "camera": header.camera,
        "seq": header.seq,
        "ts_ns": header.ts_ns,
        "shape": [header.height, header.width],
        "defective": defective,
        "scores": scores,
        "defects": defects,
        "latency_ms": latency_ms,
        "model": model,
        "meta": header.meta,
    }


def reject_event(camera: str, seq: int, reason: str, ts_ns: int | None = None) -> dict[str, Any]:
    return {
        "v": VERSION,
        "kind": KIND_REJECT,
        "camera": camera,
        "seq": seq,
        "ts_ns": ts_ns,
        "reason": reason,
    }


def drop_event(header: FrameHeader, reason: str = "overload") -> dict[str, Any]:
    return {
        "v": VERSION,
        "kind": KIND_DROP,
        "camera": header.camera,
        "seq": header.seq,
        "ts_ns": header.ts_ns,
        "reason": reason,
        "meta": header.meta,
    }


def gap_event(camera: str, first_seq: int, last_seq: int) -> dict[str, Any]:
    return {
        "v": VERSION,
        "kind": KIND_GAP,
        "camera": camera,
        "first_seq": first_seq,
        "last_seq": last_seq,
        "missing": last_seq - first_seq + 1,
    }


def camera_restart_event(camera: str, previous_seq: int, seq: int) -> dict[str, Any]:
    return {
        "v": VERSION,
        "kind": KIND_CAMERA_RESTART,
        "camera": camera,
        "previous_seq": previous_seq,
        "seq": seq,
    }


def status_event(
    daemon_id: str,
    uptime_s: float,
    cameras: dict[str, dict[str, int]],
    final: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """``cameras`` maps camera id to counters: received, results, rejects, drops, gaps, restarts.

    ``final``: the one sent at shutdown, after every per-frame event; only its counters are
    sure to balance (a periodic one counts frames still queued or in flight as received).
    """
    return {
        "v": VERSION,
        "kind": KIND_STATUS,
        "daemon": daemon_id,
        "uptime_s": uptime_s,
        "cameras": cameras,
        "final": final,
        **extra,
    }


def parse_event(parts: list[bytes]) -> tuple[str, dict[str, Any]]:
    """Decode one daemon message into (topic, body) — what a subscriber does first."""
    if len(parts) != 2:
        raise ProtocolError(f"expected 2 message parts (topic, body), got {len(parts)}")
    try:
        topic = bytes(parts[0]).decode("utf-8")
        body = unpack(parts[1])
    except Exception as exc:  # msgpack and UTF-8 errors alike mean "not a daemon message"
        raise ProtocolError(f"not a daemon message: {type(exc).__name__}: {exc}") from exc
    if not isinstance(body, dict) or body.get("v") != VERSION:
        raise ProtocolError(f"event body is not a v{VERSION} map")
    return topic, body


def source_event(
    kind: str, daemon_id: str, endpoint: str, *, losses: int, down_s: float | None = None
) -> dict[str, Any]:
    """``source_lost`` / ``source_restored``: a camera endpoint the daemon connects to went away
    or came back (published on ``status/<daemon_id>``: it is about the daemon's inputs)."""
    body: dict[str, Any] = {
        "v": VERSION,
        "kind": kind,
        "daemon": daemon_id,
        "endpoint": endpoint,
        "losses": losses,
    }
    if down_s is not None:
        body["down_s"] = round(down_s, 3)
    return body
