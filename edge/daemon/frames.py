"""Turning a validated frame message into pixels: a zero-copy view for raw, a decode for JPEG/PNG.

Pixels are H x W (grayscale) or H x W x 3 in RGB order, uint8, whatever the encoding.

No decoder sees an encoded frame before its structure is checked in pure Python (lengths, CRCs,
frame headers): what a decode may allocate is then bounded by the payload's own size and the shape
the header declares, not by whatever a length field claims.
"""

from __future__ import annotations

import re
import struct
import time
import zlib
from collections.abc import Callable
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


_Fail = Callable[[str], ProtocolError]


def encoded_size(header: FrameHeader, payload: memoryview) -> tuple[int, int]:
    """(height, width) from the image's own header, without decoding it.

    Raises ProtocolError when the payload is not a whole image of ``header.encoding``, or when
    decoding it could cost more memory than that size and the payload's length imply: every
    length field is checked against the bytes that are really there before a decoder trusts it.
    """

    def fail(reason: str) -> ProtocolError:
        return ProtocolError(f"{header.encoding} image {reason}", header.camera, header.seq)

    if header.encoding == "png":
        return _png_size(payload, fail)
    return _jpeg_size(payload, fail)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
_PNG_CHUNK_HEAD = struct.Struct(">I4s")
# The bit depths the PNG specification allows for each colour type.
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# APNG chunks switch OpenCV to its animation reader: three more full frames, CRC errors ignored.
_PNG_ANIMATION = frozenset({b"acTL", b"fcTL", b"fdAT"})
# libpng inflates these and keeps the result (up to 8 MB each, 1000 chunks): a 387 KB PNG of 50
# zTXt chunks measured +395 MB. What all compressed metadata of one frame may inflate to:
_PNG_INFLATE_BUDGET = 1 << 20


def _png_size(payload: memoryview, fail: _Fail) -> tuple[int, int]:
    """(height, width) of a PNG whose every chunk is whole, CRC-checked and in order.

    The memory bound this gives: OpenCV copies each chunk before the first IDAT into a buffer of
    the chunk's claimed length (which now fits in the payload); libpng keeps a few rows, zlib's
    window and the text it reads, which OpenCV copies once more (plain text: at most the payload
    twice; inflated: at most ``_PNG_INFLATE_BUDGET``, three times counting the inflate buffer);
    the output is h x w x at most 4 bytes, palette and grey+alpha images included (expanded as
    they are read), interlaced ones too (de-interlaced into the output rows). So a decode costs
    at most 4 x h x w + 3 x payload + 3 MiB + fixed library state, decode_pixels' RGB copy adds
    3 x h x w, and h x w is what decode_pixels requires to equal the header's shape.
    """
    head = bytes(payload[:16])
    if not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise fail(f"does not start like a PNG (first bytes {head[:8].hex()})")
    if bytes(payload[-8:]) != _PNG_END:
        raise fail(f"is truncated: no IEND chunk at the end of its {payload.nbytes} bytes")
    ihdr = _png_walk_chunks(payload, fail)
    _check_png_ihdr(ihdr, fail)
    return int.from_bytes(ihdr[4:8], "big"), int.from_bytes(ihdr[0:4], "big")


def _png_walk_chunks(payload: memoryview, fail: _Fail) -> bytes:
    """The IHDR fields, once every chunk from IHDR to IEND is checked; raises on the first flaw."""
    size = payload.nbytes
    inflate_left = _PNG_INFLATE_BUDGET
    ihdr = b""
    seen_idat = False
    pos = len(_PNG_SIGNATURE)
    while True:
        if size - pos < 12:
            raise fail(f"is corrupt: {size - pos} bytes at byte {pos} are too few for a chunk")
        length, kind = _PNG_CHUNK_HEAD.unpack_from(payload, pos)
        name = kind.decode("latin-1")
        left = size - pos - 12  # what the data can have once length, type and CRC are counted
        if length > left:
            raise fail(
                f"is corrupt: chunk {name!r} at byte {pos} claims {length} bytes but only "
                f"{left} remain"
            )
        end = pos + 8 + length
        if zlib.crc32(payload[pos + 4 : end]) != int.from_bytes(payload[end : end + 4], "big"):
            raise fail(f"is corrupt: CRC mismatch in chunk {name!r} at byte {pos}")
        if kind == b"IHDR":
            if pos != len(_PNG_SIGNATURE):
                raise fail(f"is corrupt: a second IHDR chunk at byte {pos}")
            if length != 13:
                raise fail(f"is corrupt: IHDR chunk has length {length}, not 13")
            ihdr = bytes(payload[pos + 8 : end])
        elif kind == b"IDAT":
            seen_idat = True
        elif kind == b"IEND":
            if end + 4 != size:
                raise fail(
                    f"is corrupt: IEND chunk at byte {pos} is not the last: {size - end - 4} bytes follow"
                )
            if not seen_idat:
                raise fail("is corrupt: no IDAT chunk before IEND")
            return ihdr
        elif kind in _PNG_ANIMATION:
            raise fail(
                f"is animated (chunk {name!r} at byte {pos}): only single images are supported"
            )
        elif kind in (b"zTXt", b"iTXt", b"iCCP"):
            inflate_left -= _png_inflated_size(
                kind, bytes(payload[pos + 8 : end]), inflate_left, pos, fail
            )
        pos = end + 4


def _check_png_ihdr(ihdr: bytes, fail: _Fail) -> None:
    depth, colour, compression, filtering, interlace = ihdr[8:13]
    if depth not in _PNG_DEPTHS.get(colour, ()):
        raise fail(
            f"is corrupt: IHDR gives bit depth {depth} with colour type {colour}, which PNG does not allow"
        )
    if depth == 16:
        # It would decode to uint16 (twice the memory) only to be rejected afterwards. Depths
        # 1, 2 and 4 stay: libpng expands them to uint8 within the same bound.
        raise fail(
            "has 16-bit samples: only 8-bit images are supported (it would decode to uint16)"
        )
    if compression or filtering or interlace > 1:
        raise fail(
            f"is corrupt: IHDR gives compression {compression}, filter {filtering}, interlace "
            f"{interlace}; PNG defines only 0, 0 and 0 or 1"
        )


def _png_inflated_size(kind: bytes, data: bytes, limit: int, pos: int, fail: _Fail) -> int:
    """What libpng would inflate this zTXt, iTXt or iCCP chunk to; raises past ``limit``."""
    stream = _png_zlib_stream(kind, data)
    if stream is None:
        return 0
    try:
        # max_length stops at limit + 1 bytes: checking a bomb costs no more than the budget.
        inflated = len(zlib.decompressobj().decompress(stream, limit + 1))
    except zlib.error:
        raise fail(
            f"is corrupt: chunk {kind.decode()!r} at byte {pos} holds no valid zlib data"
        ) from None
    if inflated > limit:
        raise fail(
            f"has compressed metadata that inflates past {_PNG_INFLATE_BUDGET} bytes (chunk "
            f"{kind.decode()!r} at byte {pos})"
        )
    return inflated


def _png_zlib_stream(kind: bytes, data: bytes) -> bytes | None:
    """The compressed part of a zTXt, iCCP or iTXt chunk; None when it has none.

    Layouts: zTXt and iCCP are keyword NUL method stream; iTXt is keyword NUL flag method
    language NUL translated-keyword NUL text, compressed only when flag is 1. A chunk without
    its NULs is one libpng refuses before inflating anything.
    """
    keyword_end = data.find(b"\x00")
    if keyword_end < 0:
        return None
    if kind != b"iTXt":
        return data[keyword_end + 2 :]
    if data[keyword_end + 1 : keyword_end + 2] != b"\x01":
        return None
    language_end = data.find(b"\x00", keyword_end + 3)
    translated_end = data.find(b"\x00", language_end + 1) if language_end >= 0 else -1
    return data[translated_end + 1 :] if translated_end >= 0 else None


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# In entropy-coded data an 0xFF is followed by 0x00 (stuffing), a restart marker or more 0xFF
# fill: anything else is the next marker.
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Every progressive scan is a pass over the whole coefficient buffer, and one can be ~20 bytes:
# 10000 repeated scans of a 1600 x 256 strip measured 0.58 s to decode. libjpeg's own
# progressive scripts use 6 (grey) or 10 (colour) scans; 256 is nvImageCodec's limit.
_JPEG_MAX_SCANS = 256


def _jpeg_size(payload: memoryview, fail: _Fail) -> tuple[int, int]:
    """(height, width) from a JPEG's one frame header (SOF), after walking all its markers.

    The memory bound this relies on: libjpeg(-turbo) sizes every buffer from the SOF. A
    single-scan decode keeps one row of MCUs; a multi-scan (progressive) one keeps each
    component's DCT coefficients, 2 bytes per sample, padded to whole MCUs (at most 31 pixels
    more per side). With 8-bit samples and 1 or 3 components that is at most
    6 x (h + 31) x (w + 31) bytes, plus the h x w x c output, the marker segments OpenCV keeps
    (no more than the payload) and fixed tables of a few hundred KB; h and w are what
    decode_pixels requires to equal the header's shape (so neither is 0). A second SOF (a
    decoder could resize to it) and a flood of scans (CPU, not memory) are refused.
    """
    data = bytes(payload)
    if not data.startswith(b"\xff\xd8\xff"):
        raise fail(f"does not start like a JPEG (first bytes {data[:4].hex()})")
    end = len(data.rstrip(b"\x00"))  # some cameras pad to a block size with zeros
    if not data.endswith(b"\xff\xd9", 0, end):
        raise fail(f"is truncated: no end-of-image marker in its {payload.nbytes} bytes")
    size: tuple[int, int] | None = None
    scans = 0
    pos = 2
    while pos + 2 <= end:
        if data[pos] != 0xFF:
            if size is None:
                raise fail(f"is corrupt: expected a marker at byte {pos}")
            # Damage after the frame header is the decoder's to report; only find what follows.
            found = _JPEG_NEXT_MARKER.search(data, pos, end)
            pos = found.start() if found else end
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image: the decoder reads no further
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            raise fail(f"is corrupt: segment of length {length} at byte {pos}")
        if marker in _JPEG_SOF:
            if size is not None:
                raise fail(f"is corrupt: a second frame header (SOF) at byte {pos}")
            size = _jpeg_frame_size(data[pos + 2 : pos + 2 + length], pos, fail)
        elif marker == 0xDA:  # start of scan
            if size is None:
                break
            scans += 1
            if scans > _JPEG_MAX_SCANS:
                raise fail(f"has more than {_JPEG_MAX_SCANS} scans (the next at byte {pos})")
            found = _JPEG_NEXT_MARKER.search(data, pos + 2 + length, end)
            pos = found.start() if found else end
            continue
        pos += 2 + length
    if size is None:
        raise fail("has no frame header (SOF) giving its size")
    return size


def _jpeg_frame_size(segment: bytes, pos: int, fail: _Fail) -> tuple[int, int]:
    """(height, width) from a SOF segment (length, precision, height, width, components...)."""
    length = int.from_bytes(segment[:2], "big")
    if length < 8:
        raise fail(f"is corrupt: frame header (SOF) at byte {pos} has length {length}, less than 8")
    if len(segment) < length:
        raise fail(
            f"is corrupt: frame header (SOF) at byte {pos} claims {length} bytes but only "
            f"{len(segment)} remain"
        )
    components = segment[7]
    if length != 8 + 3 * components:
        raise fail(
            f"is corrupt: frame header (SOF) at byte {pos} has length {length}, but "
            f"{components} components need {8 + 3 * components}"
        )
    if segment[2] != 8:
        raise fail(f"has {segment[2]}-bit samples: only 8-bit images are supported")
    if components not in (1, 3):
        raise fail(f"has {components} components: only 1 (greyscale) or 3 (colour) are supported")
    return int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[5:7], "big")
