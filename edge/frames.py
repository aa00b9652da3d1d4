"""Turning a validated frame message into pixels: a zero-copy view for raw, a decode for JPEG/PNG.

Pixels are H x W (grayscale) or H x W x 3 in RGB order, uint8, whatever the encoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.protocol import FrameHeader, ProtocolError


@dataclass(slots=True)
class Frame:
    header: FrameHeader
    pixels: np.ndarray
    # Monotonic clock at receipt: the start of the latency the daemon reports.
    received_ns: int = field(default_factory=time.monotonic_ns)


def decode_pixels(header: FrameHeader, payload: memoryview) -> np.ndarray:
    """Pixels of a frame whose header already passed protocol.parse_header."""
    if header.encoding == "raw":
        # A view over the message buffer: no copy on the hot path.
        return np.frombuffer(payload, dtype=np.uint8).reshape(header.shape)
    height, width = encoded_size(header, payload)
    if (height, width) != header.shape[:2]:
        # Checked before decoding: a few bytes can claim 65535 x 65535 pixels (4 GB) and the
        # decoder would allocate them all.
        raise ProtocolError(
            f"{header.encoding} image is {height}x{width} pixels but the header says "
            f"{list(header.shape)}",
            header.camera,
            header.seq,
        )
    encoded = np.frombuffer(payload, dtype=np.uint8)
    try:
        image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        image = None
        detail = f": {exc.msg.strip() if hasattr(exc, 'msg') else exc}"
    else:
        detail = ""
    if image is None:
        raise ProtocolError(
            f"undecodable {header.encoding} image ({payload.nbytes} bytes){detail}",
            header.camera,
            header.seq,
        )
    if image.dtype != np.uint8:
        raise ProtocolError(
            f"{header.encoding} image decodes to {image.dtype}, only uint8 is supported",
            header.camera,
            header.seq,
        )
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape != header.shape:
        raise ProtocolError(
            f"decoded {header.encoding} image has shape {list(image.shape)} but the header "
            f"says {list(header.shape)}",
            header.camera,
            header.seq,
        )
    return image


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def encoded_size(header: FrameHeader, payload: memoryview) -> tuple[int, int]:
    """(height, width) from the image's own header, without decoding it.

    Raises ProtocolError when the payload is not a whole image of ``header.encoding``.
    """
    data = bytes(payload[:65536])  # every marker before the size sits well inside this

    def fail(reason: str) -> ProtocolError:
        return ProtocolError(f"{header.encoding} image {reason}", header.camera, header.seq)

    if header.encoding == "png":
        if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
            raise fail(f"does not start like a PNG (first bytes {data[:8].hex()})")
        if not bytes(payload[-8:]) == _PNG_END:
            raise fail(f"is truncated: no IEND chunk at the end of its {payload.nbytes} bytes")
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if not data.startswith(b"\xff\xd8\xff"):
        raise fail(f"does not start like a JPEG (first bytes {data[:4].hex()})")
    if not bytes(payload).rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise fail(f"is truncated: no end-of-image marker in its {payload.nbytes} bytes")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise fail(f"is corrupt: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _JPEG_SOF:
            if length < 8 or pos + 9 > len(data):
                break
            return (
                int.from_bytes(data[pos + 5 : pos + 7], "big"),
                int.from_bytes(data[pos + 7 : pos + 9], "big"),
            )
        if length < 2:
            raise fail(f"is corrupt: segment of length {length} at byte {pos}")
        pos += 2 + length
    raise fail("has no frame header (SOF) giving its size")
