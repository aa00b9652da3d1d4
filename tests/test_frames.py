"""Image payloads: the size is read from the image's own header before decoding, and no byte
sequence makes the decoder do anything but return pixels or raise ProtocolError."""

from __future__ import annotations

import zlib

import cv2
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.daemon.frames import decode_pixels, encoded_size
from edge.protocol import FrameHeader, ProtocolError
from tests.test_server import frame_parts, per_frame

RNG = np.random.default_rng(7)
GRAY = RNG.integers(0, 255, (64, 200), dtype=np.uint8)
COLOR = RNG.integers(0, 255, (64, 200, 3), dtype=np.uint8)


def encode(image: np.ndarray, ext: str, *params: int) -> bytes:
    return cv2.imencode(ext, image, list(params))[1].tobytes()


JPEG = encode(GRAY, ".jpg")
PNG = encode(GRAY, ".png")


def header(encoding: str, shape: tuple[int, ...] = (64, 200)) -> FrameHeader:
    return FrameHeader("cam1", 3, 0, encoding, shape)


@pytest.mark.parametrize(
    ("image", "payload", "encoding"),
    [
        (GRAY, JPEG, "jpeg"),
        (COLOR, encode(COLOR, ".jpg"), "jpeg"),
        (GRAY, encode(GRAY, ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "jpeg"),
        (GRAY, PNG, "png"),
        (COLOR, encode(COLOR, ".png"), "png"),
    ],
)
def test_encoded_size_is_read_without_decoding(
    image: np.ndarray, payload: bytes, encoding: str
) -> None:
    h = header(encoding, image.shape)
    assert encoded_size(h, memoryview(payload)) == (64, 200)
    assert decode_pixels(h, memoryview(payload)).shape == image.shape


def jpeg_claiming(height: int, width: int) -> bytes:
    """A real JPEG whose frame header is rewritten to claim another size."""
    data = bytearray(JPEG)
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def png_claiming(height: int, width: int) -> bytes:
    """A real PNG whose IHDR is rewritten, CRC included, to claim another size.

    Without the new CRC the forgery is caught as corruption (tests/test_decode_bombs.py).
    """
    data = bytearray(PNG)
    data[16:20], data[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(data[12:29]).to_bytes(4, "big")
    return bytes(data)


def png_with_flip(position: int, mask: int, *, fix_crc: bool = False) -> bytes:
    """PNG with one byte of its first IDAT (at byte 33) flipped, the CRC rewritten if asked."""
    data = bytearray(PNG)
    data[position] ^= mask
    if fix_crc:
        end = 41 + int.from_bytes(data[33:37], "big")
        data[end : end + 4] = zlib.crc32(data[37:end]).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize(
    ("encoding", "payload"),
    [("jpeg", jpeg_claiming(65535, 65535)), ("png", png_claiming(60000, 60000))],
)
def test_a_small_file_claiming_a_huge_image_is_rejected_before_decoding(
    encoding: str, payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object) -> None:
        raise AssertionError("the decoder was called on a decompression bomb")

    monkeypatch.setattr(cv2, "imdecode", never)
    with pytest.raises(ProtocolError, match=r"image is 6\d+x6\d+ pixels but the header says") as e:
        decode_pixels(header(encoding), memoryview(payload))
    assert (e.value.camera, e.value.seq) == ("cam1", 3)


@pytest.mark.parametrize(
    ("encoding", "payload", "reason"),
    [
        ("jpeg", JPEG[: len(JPEG) // 2], "jpeg image is truncated"),
        ("jpeg", JPEG[:3], "jpeg image is truncated"),
        ("jpeg", PNG, "does not start like a JPEG (first bytes 89504e47)"),
        ("jpeg", bytes(100), "does not start like a JPEG"),
        ("jpeg", b"\xff\xd8\xff\xd9", "has no frame header"),
        ("jpeg", JPEG[:2] + b"\x00" * 20 + JPEG[-2:], "does not start like a JPEG"),
        ("jpeg", JPEG[:4] + b"\x00\x00" + JPEG[6:], "is corrupt: segment of length 0"),
        ("jpeg", jpeg_claiming(256, 1600), "image is 256x1600 pixels"),
        ("png", PNG[: len(PNG) - 20], "png image is truncated: no IEND"),
        ("png", JPEG, "does not start like a PNG"),
        (
            "png",
            png_with_flip(60, 0x10),
            "png image is corrupt: CRC mismatch in chunk 'IDAT' at byte 33",
        ),
        # Damage the CRC cannot see (an encoder's bug, or a forger's) is still the decoder's.
        ("png", png_with_flip(60, 0x10, fix_crc=True), "undecodable png image"),
    ],
)
def test_corrupt_files_are_named(encoding: str, payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        decode_pixels(header(encoding), memoryview(payload))


def test_jpeg_padded_with_zeros_after_its_end_still_decodes() -> None:
    assert decode_pixels(header("jpeg"), memoryview(JPEG + bytes(16))).shape == (64, 200)


def _decode_or_reject(encoding: str, payload: bytes, shape: tuple[int, ...] = (64, 200)) -> None:
    try:
        pixels = decode_pixels(header(encoding, shape), memoryview(payload))
    except ProtocolError as err:
        assert err.reason and err.camera == "cam1" and err.seq == 3
    else:
        assert pixels.shape == shape and pixels.dtype == np.uint8


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["jpeg", "png"]), st.binary(min_size=1, max_size=2048))
def test_fuzz_arbitrary_payloads(encoding: str, payload: bytes) -> None:
    _decode_or_reject(encoding, payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([("jpeg", JPEG), ("png", PNG)]),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(1, 10**6),
)
def test_fuzz_mutated_and_truncated_real_images(
    file: tuple[str, bytes], flips: list[tuple[int, int]], keep: int
) -> None:
    encoding, original = file
    data = bytearray(original[: max(1, keep % (len(original) + 1))])
    for position, byte in flips:
        data[position % len(data)] = byte
    _decode_or_reject(encoding, bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 2**16 - 1), st.integers(1, 2**16 - 1))
def test_fuzz_jpeg_headers_with_any_claimed_size(tail: bytes, height: int, width: int) -> None:
    # A frame header and then anything: never an allocation of the claimed size, never a crash.
    sof = b"\xff\xc0\x00\x0b\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big") + b"\x01"
    _decode_or_reject("jpeg", b"\xff\xd8" + sof + b"\x01\x11\x00" + tail + b"\xff\xd9")


def corrupt_jpeg_corpus() -> list[tuple[str, bytes]]:
    """(expected reason, payload): damaged copies of a real 256 x 1600 JPEG strip."""
    strip = np.random.default_rng(3).integers(0, 255, (256, 1600), dtype=np.uint8)
    good = encode(strip, ".jpg")
    sof = good.index(b"\xff\xc0")
    sos = good.index(b"\xff\xda")
    flipped_sof = bytearray(good)
    flipped_sof[sof + 5] ^= 0x01  # height 256 -> 0: a bit flip in the frame header
    flipped_marker = bytearray(good)
    flipped_marker[sos + 1] ^= 0x04  # start-of-scan marker becomes another marker
    return [
        ("jpeg image is truncated", good[: len(good) // 2]),
        ("jpeg image is truncated", good[:sos]),
        ("does not start like a JPEG (first bytes ff)", good[:1]),
        ("does not start like a JPEG", b"GIF89a" + good[6:]),
        ("does not start like a JPEG", encode(strip, ".png")),
        ("does not start like a JPEG", bytes(len(good))),
        ("pixels but the header says", bytes(flipped_sof)),
        ("pixels but the header says", jpeg_claiming(65535, 65535)),
        ("undecodable jpeg image", bytes(flipped_marker)),
        ("undecodable jpeg image", good[:sos] + bytes(5000) + b"\xff\xd9"),
    ]


def test_corrupt_jpeg_corpus_gives_one_reject_each_over_real_sockets(
    start_daemon, camera_socket
) -> None:
    daemon = start_daemon()
    cam = camera_socket(daemon.source)
    template = frame_parts("cam1", 0, np.zeros((256, 1600), np.uint8), "jpeg")
    corpus = corrupt_jpeg_corpus()
    header = msgpack.unpackb(template[1])
    for seq, (_, payload) in enumerate(corpus):
        cam.send_multipart([template[0], msgpack.packb({**header, "seq": seq}), payload])
    good = np.full((256, 1600), 128, np.uint8)
    cam.send_multipart(frame_parts("cam1", len(corpus), good, "jpeg"))
    events = per_frame(daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= len(corpus) + 1))
    assert [e["seq"] for e in events] == list(range(len(corpus) + 1))  # one event each
    for (reason, _), event in zip(corpus, events, strict=False):
        assert event["kind"] == "reject" and reason in event["reason"], (reason, event)
    assert events[-1]["kind"] == "result"


def test_a_bit_flip_inside_jpeg_entropy_data_is_undetectable_but_still_one_event() -> None:
    # JPEG has no checksum: damage inside the compressed data decodes to wrong pixels. The
    # daemon cannot know; it still gives the frame exactly one outcome and never crashes.
    strip = np.random.default_rng(3).integers(0, 255, (256, 1600), dtype=np.uint8)
    data = bytearray(encode(strip, ".jpg"))
    data[len(data) // 2] ^= 0xFF
    _decode_or_reject("jpeg", bytes(data), (256, 1600))
