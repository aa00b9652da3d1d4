"""Decode bombs: no encoded frame costs more memory than its own size and its declared shape.

A 1 KB PNG whose IDAT length field says 2^31-1 used to cost +2 GB (OpenCV allocates each chunk's
claimed length before reading it); 0xFFFFFFFF cost +4 GB and 5 s. These tests build such attacks
from real strips and measure what decoding them costs, in child processes, against the bound

    12 x h x w + 4 x payload bytes + 16 MiB

where h x w is the header's shape: a JPEG decode holds at most 6 bytes of coefficients per pixel,
the image (3) and its RGB copy (3); a PNG decode the image (at most 4) and its RGB copy (3); the
payload term covers copies of the payload and the chunks a decoder keeps; 16 MiB covers libraries'
fixed tables and allocator slack.

EDGE_DECODE_BOMBS_FRAMES=/path/to/frames.py runs the memory checks against another copy of
edge/frames.py, e.g. the one before these checks existed (``git show <rev>:edge/frames.py``).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edge.daemon.frames import decode_pixels
from edge.protocol import FrameHeader, ProtocolError
from tests.conftest import SEVERSTAL, gray_strip
from tests.test_server import frame_parts, per_frame

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]
Shape = tuple[int, ...]
Case = tuple[str, str, Shape, bytes]  # (name, encoding, declared shape, payload)


def encode(image: np.ndarray, ext: str, *params: int) -> bytes:
    return cv2.imencode(ext, image, list(params))[1].tobytes()


def textured_strip(channels: int = 1) -> np.ndarray:
    """A 256 x 1600 strip with structure at every scale, so it encodes to a realistic size."""
    rng = np.random.default_rng(12)
    noise = cv2.GaussianBlur(rng.normal(128, 40, (256, 1600)), (0, 0), 3)
    strip = np.clip(noise + np.linspace(0, 40, 1600), 0, 255).astype(np.uint8)
    return strip if channels == 1 else np.dstack([strip, strip[::-1], 255 - strip])


FLAT = gray_strip()  # compresses to the ~1 KB PNG of the report
FLAT_PNG = encode(FLAT, ".png")
STRIP = textured_strip()
STRIP_PNG = encode(STRIP, ".png")
STRIP_JPEG = encode(STRIP, ".jpg")
COLOR = textured_strip(3)
COLOR_PNG = encode(COLOR, ".png")
COLOR_PROGRESSIVE = encode(COLOR, ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
GRAY = (256, 1600)
RGB = (256, 1600, 3)


# --- building damaged files -------------------------------------------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(position, type, data length) of each chunk of a well-formed PNG."""
    found, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        found.append((pos, kind, length))
        pos += 12 + length
    return found


def with_length(data: bytes, pos: int, length: int) -> bytes:
    """The chunk at pos claims another length; its bytes (and CRC) stay where they were."""
    return data[:pos] + length.to_bytes(4, "big") + data[pos + 4 :]


def flip(data: bytes, position: int, mask: int) -> bytes:
    out = bytearray(data)
    out[position] ^= mask
    return bytes(out)


IEND = png_chunk(b"IEND", b"")


def png_from_rows(
    rows: bytes, width: int, height: int, depth: int, colour: int, interlace: int = 0
) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + IEND
    )


def filtered(image: np.ndarray) -> bytes:
    """Rows of a uint8 image, each behind filter type 0 (none)."""
    flat = image.reshape(image.shape[0], -1)
    return b"".join(b"\x00" + row.tobytes() for row in flat)


# (x0, y0, dx, dy) of the seven Adam7 passes.
ADAM7 = [
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
]


def interlaced_png(image: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit greyscale PNG (OpenCV cannot write one)."""
    passes = [image[y0::dy, x0::dx] for x0, y0, dx, dy in ADAM7]
    rows = b"".join(filtered(p) for p in passes if p.size)
    return png_from_rows(rows, image.shape[1], image.shape[0], 8, 0, interlace=1)


SOF_MARKERS = (0xC0, 0xC1, 0xC2)  # baseline, extended, progressive: what encoders write


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(position, marker, length) of each marker segment before the first scan's data."""
    found, pos = [], 2
    while data[pos + 1] != 0xDA:
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        found.append((pos, data[pos + 1], length))
        pos += 2 + length
    found.append((pos, 0xDA, int.from_bytes(data[pos + 2 : pos + 4], "big")))
    return found


def jpeg_with_sof(data: bytes, sof: bytes) -> bytes:
    """The JPEG with its frame header's body replaced by ``sof`` (length field recomputed)."""
    pos, marker, length = next(s for s in jpeg_segments(data) if s[1] in SOF_MARKERS)
    return (
        data[:pos]
        + bytes([0xFF, marker])
        + (len(sof) + 2).to_bytes(2, "big")
        + sof
        + data[pos + 2 + length :]
    )


def sof_body(height: int, width: int, components: int, precision: int = 8) -> bytes:
    specs = b"".join(bytes([i + 1, 0x11, 0]) for i in range(components))
    return bytes([precision]) + struct.pack(">HHB", height, width, components) + specs


def idat_lengths(data: bytes) -> list[Case]:
    """The issue's attacks: the first IDAT claims 2^31-1 and 2^32-1 bytes."""
    idat = next(pos for pos, kind, _ in png_chunks(data) if kind == b"IDAT")
    return [
        (f"IDAT claims {n}", "png", GRAY, with_length(data, idat, n))
        for n in (2**31 - 1, 2**32 - 1)
    ]


def png_attacks(data: bytes, shape: Shape) -> list[Case]:
    """Damaged copies of one PNG: forged lengths, cut chunks, a misplaced IEND, bombs."""
    chunks = png_chunks(data)
    idat, _, idat_length = next(c for c in chunks if c[1] == b"IDAT")
    iend = chunks[-1][0]
    cut = idat + 8 + idat_length // 2
    # 7 MiB of text each (not NULs: libpng keeps text up to its first NUL), under libpng's 8 MB
    # per-chunk limit: the old code kept every one.
    ztxt = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * 7 * MiB, 9))
    return [
        ("IDAT length +2^30", "png", shape, flip(data, idat, 0x40)),
        ("IDAT length 2^31-1", "png", shape, with_length(data, idat, 2**31 - 1)),
        ("IDAT length 0xFFFFFFFF", "png", shape, with_length(data, idat, 2**32 - 1)),
        ("IDAT cut in half, IEND after", "png", shape, data[:cut] + IEND),
        ("last chunk cut, IEND after", "png", shape, data[: iend - 3] + IEND),
        ("IEND missing", "png", shape, data[:iend]),
        ("IEND first", "png", shape, data[:idat] + IEND + data[idat:]),
        ("a second IHDR", "png", shape, data[:idat] + data[8:33] + data[idat:]),
        ("zTXt bomb x40", "png", shape, data[:idat] + ztxt * 40 + data[idat:]),
        (
            "acTL (animated)",
            "png",
            shape,
            data[:idat] + png_chunk(b"acTL", struct.pack(">II", 2, 0)) + data[idat:],
        ),
    ]


def jpeg_attacks(data: bytes, shape: Shape) -> list[Case]:
    """Damaged copies of one JPEG: forged frame headers, a second SOF, a scan flood."""
    h, w = shape[:2]
    c = shape[2] if len(shape) == 3 else 1
    sos = data.index(b"\xff\xda")
    sof_pos = next(p for p, marker, _ in jpeg_segments(data) if marker in SOF_MARKERS)
    sof = data[sof_pos : sof_pos + 2 + int.from_bytes(data[sof_pos + 2 : sof_pos + 4], "big")]
    scans = [i for i in range(sos, len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    cases: list[Case] = [
        ("SOF 65535 x 65535", "jpeg", shape, jpeg_with_sof(data, sof_body(65535, 65535, c))),
        ("SOF height 0", "jpeg", shape, jpeg_with_sof(data, sof_body(0, w, c))),
        ("SOF 12-bit", "jpeg", shape, jpeg_with_sof(data, sof_body(h, w, c, 12))),
        ("SOF 4 components", "jpeg", shape, jpeg_with_sof(data, sof_body(h, w, 4))),
        (
            "SOF 189 bytes too long",
            "jpeg",
            shape,
            jpeg_with_sof(data, sof_body(h, w, c) + bytes(189)),
        ),
        (
            "second SOF, 65535 x 65535",
            "jpeg",
            shape,
            data[:sos] + sof[:5] + b"\xff\xff\xff\xff" + sof[9:] + data[sos:],
        ),
        ("second SOF after the scans", "jpeg", shape, data[:-2] + sof + b"\xff\xd9"),
    ]
    if len(scans) > 1:  # progressive: repeat its smallest scan past the limit
        ends = [*scans[1:], len(data) - 2]
        start, stop = min(zip(scans, ends, strict=True), key=lambda s: s[1] - s[0])
        flood = data[:-2] + data[start:stop] * 300 + b"\xff\xd9"
        cases.append(("300 repeated scans", "jpeg", shape, flood))
    return cases


def good_cases(files: dict[str, tuple[Shape, bytes]]) -> list[Case]:
    return [(f"good {name}", name.split()[0], shape, data) for name, (shape, data) in files.items()]


@cache
def synthetic_cases() -> tuple[Case, ...]:
    return (
        *good_cases(
            {
                "png strip": (GRAY, STRIP_PNG),
                "jpeg strip": (GRAY, STRIP_JPEG),
                "jpeg progressive": (RGB, COLOR_PROGRESSIVE),
            }
        ),
        *idat_lengths(FLAT_PNG),
        *png_attacks(STRIP_PNG, GRAY),
        *png_attacks(COLOR_PNG, RGB),
        ("16-bit PNG", "png", GRAY, encode(STRIP.astype(np.uint16) * 257, ".png")),
        *jpeg_attacks(STRIP_JPEG, GRAY),
        *jpeg_attacks(COLOR_PROGRESSIVE, RGB),
    )


def real_files(severstal: Path) -> dict[str, bytes]:
    images = sorted((severstal / "images").iterdir())
    png = next(p for p in images if p.suffix == ".png").read_bytes()
    jpeg = next(p for p in images if p.suffix == ".jpg").read_bytes()
    return {"png real": png, "jpeg real": jpeg}


def real_cases(severstal: Path) -> list[Case]:
    files = real_files(severstal)
    return [
        *good_cases({name: (RGB, data) for name, data in files.items()}),
        *png_attacks(files["png real"], RGB),
        *jpeg_attacks(files["jpeg real"], RGB),
    ]


# --- rejected before any decoder sees it (in process) -----------------------------------------


@pytest.fixture
def no_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object) -> None:
        raise AssertionError("the decoder was called on a payload that should have been rejected")

    monkeypatch.setattr(cv2, "imdecode", never)


def reject_reason(encoding: str, shape: Shape, payload: bytes) -> str:
    with pytest.raises(ProtocolError) as err:
        decode_pixels(FrameHeader("cam1", 3, 0, encoding, shape), memoryview(payload))
    assert (err.value.camera, err.value.seq) == ("cam1", 3)
    assert err.value.reason.startswith(f"{encoding} image ")  # metrics files it under "decode"
    return err.value.reason


@pytest.mark.parametrize("length", [2**31 - 1, 2**32 - 1])
def test_a_forged_idat_length_is_named_before_decoding(length: int, no_decoder) -> None:
    assert len(FLAT_PNG) < 1100  # the ~1 KB file of the report
    left = len(FLAT_PNG) - 33 - 12  # after the chunk's own length, type and CRC
    assert reject_reason("png", GRAY, with_length(FLAT_PNG, 33, length)) == (
        f"png image is corrupt: chunk 'IDAT' at byte 33 claims {length} bytes but only {left} remain"
    )


def test_a_bit_flip_at_byte_33_of_a_real_strip_is_named(severstal: Path, no_decoder) -> None:
    png = real_files(severstal)["png real"]
    assert png_chunks(png)[1][:2] == (33, b"IDAT")
    reason = reject_reason("png", RGB, flip(png, 33, 0x40))  # the report's +1 GB flip
    assert reason.startswith(
        "png image is corrupt: chunk 'IDAT' at byte 33 claims 1073807360 bytes"
    )


@pytest.mark.parametrize("name", ["synthetic", "real"])
def test_every_single_bit_flip_in_the_first_64_bytes_is_rejected_before_decoding(
    name: str, request: pytest.FixtureRequest, no_decoder
) -> None:
    png = (
        STRIP_PNG
        if name == "synthetic"
        else real_files(request.getfixturevalue("severstal"))["png real"]
    )
    shape = GRAY if name == "synthetic" else RGB
    reasons = {
        reject_reason("png", shape, flip(png, i, 1 << bit)) for i in range(64) for bit in range(8)
    }
    # Signature and chunk names, lengths, then everything a CRC covers: no flip gets through.
    assert any("does not start like a PNG" in r for r in reasons)
    assert any("CRC mismatch in chunk 'IHDR' at byte 8" in r for r in reasons)
    assert any("chunk 'IDAT' at byte 33 claims" in r for r in reasons)
    assert any("CRC mismatch in chunk 'IDAT' at byte 33" in r for r in reasons)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("IDAT cut in half, IEND after", "png image is corrupt: chunk 'IDAT' at byte 33 claims"),
        (
            "last chunk cut, IEND after",
            "png image is corrupt: CRC mismatch in chunk 'IDAT' at byte",
        ),
        ("IEND missing", "png image is truncated: no IEND chunk at the end"),
        ("IEND first", "png image is corrupt: IEND chunk at byte 33 is not the last:"),
        ("a second IHDR", "png image is corrupt: a second IHDR chunk at byte 33"),
        (
            "zTXt bomb x40",
            "png image has compressed metadata that inflates past 1048576 bytes (chunk 'zTXt' at byte 33)",
        ),
        ("acTL (animated)", "png image is animated (chunk 'acTL' at byte 33): only single images"),
        ("16-bit PNG", "png image has 16-bit samples: only 8-bit images are supported"),
        ("SOF 65535 x 65535", "jpeg image is 65535x65535 pixels but the header says [256, 1600"),
        ("SOF height 0", "jpeg image is 0x1600 pixels but the header says [256, 1600"),
        ("SOF 12-bit", "jpeg image has 12-bit samples: only 8-bit images are supported"),
        ("SOF 4 components", "jpeg image has 4 components: only 1 (greyscale) or 3 (colour)"),
        ("SOF 189 bytes too long", "jpeg image is corrupt: frame header (SOF) at byte"),
        ("second SOF, 65535 x 65535", "jpeg image is corrupt: a second frame header (SOF) at byte"),
        (
            "second SOF after the scans",
            "jpeg image is corrupt: a second frame header (SOF) at byte",
        ),
        ("300 repeated scans", "jpeg image has more than 256 scans"),
    ],
)
def test_each_attack_gets_its_own_reason_before_decoding(
    case: str, reason: str, no_decoder
) -> None:
    _, encoding, shape, payload = next(c for c in synthetic_cases() if c[0] == case)
    assert reason in reject_reason(encoding, shape, payload)


def test_a_png_chunk_framing_error_is_named() -> None:
    ihdr_12 = FLAT_PNG[:8] + png_chunk(b"IHDR", FLAT_PNG[16:28]) + FLAT_PNG[33:]
    assert "IHDR chunk has length 12, not 13" in reject_reason("png", GRAY, ihdr_12)
    no_idat = FLAT_PNG[:33] + IEND
    assert reject_reason("png", GRAY, no_idat) == "png image is corrupt: no IDAT chunk before IEND"
    stray = FLAT_PNG[:-12] + b"\x00" * 3 + IEND[-8:]  # 11 bytes after the IDAT
    assert "too few for a chunk" in reject_reason("png", GRAY, stray)
    ihdr = bytearray(FLAT_PNG[16:29])
    ihdr[8:10] = bytes([4, 2])  # 4-bit RGB does not exist
    bad_depth = FLAT_PNG[:8] + png_chunk(b"IHDR", bytes(ihdr)) + FLAT_PNG[33:]
    assert "bit depth 4 with colour type 2, which PNG does not allow" in reject_reason(
        "png", GRAY, bad_depth
    )
    broken_zlib = FLAT_PNG[:33] + png_chunk(b"zTXt", b"Comment\x00\x00not zlib") + FLAT_PNG[33:]
    assert "chunk 'zTXt' at byte 33 holds no valid zlib data" in reject_reason(
        "png", GRAY, broken_zlib
    )


# --- still decoded: what stays inside the bound is not refused --------------------------------


def decoded(encoding: str, shape: Shape, payload: bytes) -> np.ndarray:
    return decode_pixels(FrameHeader("cam1", 3, 0, encoding, shape), memoryview(payload))


def test_interlaced_palette_and_low_depth_pngs_still_decode() -> None:
    # libpng de-interlaces into the output rows and expands palettes and 1/2/4-bit samples to
    # uint8 as it reads: none costs more than an 8-bit RGBA image, so none is refused.
    image = STRIP[:64, :200]
    np.testing.assert_array_equal(decoded("png", (64, 200), interlaced_png(image)), image)
    palette = np.random.default_rng(5).integers(0, 255, (256, 3), dtype=np.uint8)
    paletted = png_from_rows(filtered(image), 200, 64, 8, 3)
    paletted = paletted[:33] + png_chunk(b"PLTE", palette.tobytes()) + paletted[33:]
    np.testing.assert_array_equal(decoded("png", (64, 200, 3), paletted), palette[image])
    bilevel = encode((image > 128).astype(np.uint8) * 255, ".png", cv2.IMWRITE_PNG_BILEVEL, 1)
    assert bilevel[24] == 1  # bit depth 1
    np.testing.assert_array_equal(decoded("png", (64, 200), bilevel), (image > 128) * 255)


def test_small_compressed_metadata_and_big_jpeg_headers_still_decode() -> None:
    comment = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"line 3, coil 17" * 100))
    itxt = png_chunk(b"iTXt", b"Comment\x00\x01\x00en\x00\x00" + zlib.compress(b"x" * 1000))
    png = STRIP_PNG[:33] + comment + itxt + STRIP_PNG[33:]
    np.testing.assert_array_equal(decoded("png", GRAY, png), STRIP)
    # Two full-size comment segments push the SOF past 64 KB; the walk still finds it.
    com = b"\xff\xfe\xff\xff" + bytes(65533)
    jpeg = STRIP_JPEG[:2] + com * 2 + STRIP_JPEG[2:]
    assert decoded("jpeg", GRAY, jpeg).shape == GRAY


def test_real_strips_all_pass_the_checks(severstal: Path) -> None:
    for path in sorted((severstal / "images").iterdir()):
        encoding = "png" if path.suffix == ".png" else "jpeg"
        assert decoded(encoding, RGB, path.read_bytes()).shape == RGB, path.name


# --- memory, measured in child processes ------------------------------------------------------

CHILD = r"""
import importlib.util, json, os, pickle, resource, sys

import cv2
import numpy as np

from edge.protocol import FrameHeader, ProtocolError

frames_path, cases_path, results_path, stderr_path = sys.argv[1:5]
if frames_path:
    spec = importlib.util.spec_from_file_location("frames_under_test", frames_path)
    frames = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = frames
    spec.loader.exec_module(frames)
else:
    import edge.daemon.frames as frames


def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        return True
    except OSError:
        return False


# OpenCV logs what it catches (std::bad_alloc included) on stderr: keep it to read back.
log = open(stderr_path, "w+b", buffering=0)
os.dup2(log.fileno(), 2)
cases = pickle.load(open(cases_path, "rb"))
strip = np.zeros((256, 1600, 3), np.uint8)
for ext, encoding in ((".png", "png"), (".jpg", "jpeg")) * 2:  # load and warm up the codecs
    payload = memoryview(cv2.imencode(ext, strip)[1])
    frames.decode_pixels(FrameHeader("c", 0, 0, encoding, strip.shape), payload)
# A regression must not take the machine with it: past the cap an allocation fails (and says so).
cap = status("VmSize") + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
results = []
for name, encoding, shape, payload in cases:
    resettable = reset_peak()
    before_rss, before_peak, logged = status("VmRSS"), status("VmHWM"), log.tell()
    try:
        pixels = frames.decode_pixels(FrameHeader("c", 0, 0, encoding, shape), memoryview(payload))
        outcome = "pixels " + str(list(pixels.shape))
        del pixels
    except ProtocolError as err:
        outcome = "reject: " + err.reason
    peak = status("VmHWM")
    log.seek(logged)
    said = log.read().decode("utf-8", "replace")
    log.seek(0, 2)
    results.append({
        "name": name,
        "growth": peak - (before_rss if resettable else before_peak),
        "outcome": outcome,
        "out_of_memory": any(s in said for s in ("bad_alloc", "unknown exception", "Insufficient memory", "Failed to allocate")),
    })
json.dump(results, open(results_path, "w"))
"""


def memory_bound(shape: Shape, payload: bytes) -> int:
    return 12 * shape[0] * shape[1] + 4 * len(payload) + 16 * MiB


def measure(cases: list[Case], tmp_path: Path) -> list[dict[str, Any]]:
    """Decode every case in one child process; what each decode's peak RSS grew by."""
    cases_path, results_path = tmp_path / "cases.pickle", tmp_path / "results.json"
    cases_path.write_bytes(pickle.dumps(cases))
    frames = os.environ.get("EDGE_DECODE_BOMBS_FRAMES", "")
    # A fixed mmap threshold puts every large buffer on fresh pages, so each one shows in the
    # peak RSS instead of hiding in memory an earlier decode freed.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            frames,
            str(cases_path),
            str(results_path),
            str(tmp_path / "stderr"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,  # OpenCV prints PNG text chunks it finds
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, (tmp_path / "stderr").read_text(errors="replace")[-2000:]
    return json.loads(results_path.read_text())


def assert_within_bound(cases: list[Case], results: list[dict[str, Any]]) -> None:
    over = []
    for (name, _, shape, payload), result in zip(cases, results, strict=True):
        bound = memory_bound(shape, payload)
        if result["out_of_memory"] or result["growth"] > bound:
            grew = (
                "hit the 1 GiB cap"
                if result["out_of_memory"]
                else f"+{result['growth'] / MiB:.1f} MiB"
            )
            over.append(
                f"{name} ({len(payload)} bytes): {grew} > bound {bound / MiB:.1f} MiB; {result['outcome'][:100]}"
            )
    assert not over, f"{len(over)} of {len(cases)} decodes broke the memory bound:\n" + "\n".join(
        over
    )


def test_named_attacks_stay_within_the_memory_bound(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cases = list(synthetic_cases())
    if (samples := _severstal_or_none(request)) is not None:
        cases += real_cases(samples)
    results = measure(cases, tmp_path)
    assert_within_bound(cases, results)
    by_name = {r["name"]: r for r in results}
    # The measurement sees a real decode: a good strip's image and its copies show up.
    assert by_name["good png strip"]["growth"] > 256 * 1600
    assert by_name["good png strip"]["outcome"] == "pixels [256, 1600]"
    assert all(
        r["outcome"].startswith("reject") for r in results if not r["name"].startswith("good")
    )


def test_every_single_bit_flip_in_the_first_64_bytes_stays_within_the_memory_bound(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    sources = [("synthetic", STRIP_PNG, GRAY)]
    if (samples := _severstal_or_none(request)) is not None:
        sources.append(("real", real_files(samples)["png real"], RGB))
    cases = [
        (f"{source} flip {i}.{bit}", "png", shape, flip(png, i, 1 << bit))
        for source, png, shape in sources
        for i in range(64)
        for bit in range(8)
    ]
    assert_within_bound(cases, measure(cases, tmp_path))


Mutation = tuple[int, list[tuple[int, int, int]], int, bool]


@st.composite
def mutations(draw: Callable[..., Any]) -> Mutation:
    """(file, [(position, value, width in bytes)], kept length, re-append the end marker)."""
    # Length fields of IHDR and the first chunk after it, the byte after, then anywhere.
    position = st.one_of(
        st.sampled_from([8, 33, 34, 37]), st.integers(0, 255), st.integers(0, 10**7)
    )
    write = st.tuples(position, st.integers(0, 2**32 - 1), st.sampled_from([1, 4]))
    return (
        draw(st.integers(0, 10**6)),
        draw(st.lists(write, min_size=1, max_size=6)),
        draw(st.integers(1, 10**7)),
        draw(st.booleans()),
    )


def mutate(files: list[tuple[str, Shape, bytes]], mutation: Mutation) -> Case:
    index, writes, keep, reterminate = mutation
    encoding, shape, original = files[index % len(files)]
    data = bytearray(original[: max(4, keep % (len(original) + 1))])
    for position, value, width in writes:
        at = position % (len(data) - width + 1)
        data[at : at + width] = (value % 256**width).to_bytes(width, "big")
    if reterminate:  # a cut file that still ends as it should gets past the first check
        data += IEND if encoding == "png" else b"\xff\xd9"
    return (f"{encoding} mutation {mutation}", encoding, shape, bytes(data))


def fuzzed_files() -> list[tuple[str, Shape, bytes]]:
    files = [
        ("png", GRAY, FLAT_PNG),
        ("png", GRAY, STRIP_PNG),
        ("png", RGB, COLOR_PNG),
        ("jpeg", GRAY, STRIP_JPEG),
        ("jpeg", RGB, COLOR_PROGRESSIVE),
    ]
    if (SEVERSTAL / "labels.csv").is_file():
        real = real_files(SEVERSTAL)
        files += [("png", RGB, real["png real"]), ("jpeg", RGB, real["jpeg real"])]
    return files


@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # shrinking would start a child per step
    suppress_health_check=[HealthCheck.too_slow],
)
@given(batch=st.lists(mutations(), min_size=40, max_size=40))
def test_random_mutations_stay_within_the_memory_bound(
    batch: list[Mutation], tmp_path_factory: pytest.TempPathFactory
) -> None:
    files = fuzzed_files()
    cases = [mutate(files, m) for m in batch]
    assert_within_bound(cases, measure(cases, tmp_path_factory.mktemp("mutations")))


def _severstal_or_none(request: pytest.FixtureRequest) -> Path | None:
    try:
        return request.getfixturevalue("severstal")
    except pytest.skip.Exception:
        return None


# --- through a real daemon ---------------------------------------------------------------------


def test_the_forged_png_gets_one_named_reject_and_the_next_frame_its_result(
    start_daemon, camera_socket
) -> None:
    daemon = start_daemon()
    cam = camera_socket(daemon.source)
    topic, header, payload = frame_parts("cam1", 0, gray_strip(), "png")
    assert png_chunks(payload)[1][:2] == (33, b"IDAT")
    bomb = with_length(payload, 33, 2**31 - 1)
    resettable = reset_peak_rss()
    cam.send_multipart([topic, header, bomb])
    cam.send_multipart(frame_parts("cam1", 1, gray_strip(), "png"))
    events = per_frame(daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= 2))
    assert [(e["seq"], e["kind"]) for e in events] == [(0, "reject"), (1, "result")]
    assert "chunk 'IDAT' at byte 33 claims 2147483647 bytes" in events[0]["reason"]
    assert msgpack.unpackb(header)["shape"] == [256, 1600]
    if resettable:  # the daemon runs in this process: its peak RSS never neared the 2 GiB claimed
        assert proc_status("VmHWM") - proc_status("VmRSS") < 512 * MiB


def proc_status(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(f"{field}:"))


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM := VmRSS
    except OSError:
        return False
    return True
