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
