"""The v1 wire protocol: frames parse or are rejected with a reason; events have the documented keys."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import protocol
from edge.protocol import (
    MAX_PIXELS,
    UNKNOWN_CAMERA,
    UNKNOWN_SEQ,
    FrameHeader,
    ProtocolError,
    camera_restart_event,
    drop_event,
    encode_frame,
    event_topic,
    gap_event,
    pack,
    parse_event,
    parse_frame_parts,
    parse_header,
    reject_event,
    result_event,
    status_event,
    status_topic,
)

HEADER = FrameHeader("cam1", 42, 1_700_000_000_123_456_789, "raw", (256, 1600))
# A header field set to this is left out of the message.
_MISSING = object()


def _parts(header: dict[str, Any] | None = None, **changes: Any) -> list[bytes]:
    """A valid 2x3 raw frame from camera cam1, seq 7, with header fields changed or removed."""
    body: dict[str, Any] = {
        "v": 1,
        "camera": "cam1",
        "seq": 7,
        "ts_ns": 123,
        "encoding": "raw",
        "shape": [2, 3],
        "dtype": "uint8",
    }
    body.update(header or {})
    body.update(changes)
    body = {k: v for k, v in body.items() if v is not _MISSING}
    return [b"frame/cam1", msgpack.packb(body, use_bin_type=True), bytes(6)]


def _reject(parts: list[Any]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_frame_parts(parts)
    err = info.value
    assert str(err) == err.reason
    assert isinstance(err, ValueError)
    return err


# -- round trip ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        (HEADER, bytes(256 * 1600)),
        (FrameHeader("line2-top", 0, 0, "raw", (256, 1600, 3)), bytes(256 * 1600 * 3)),
        (FrameHeader("c", 5, -1, "raw", (4, 5, 1)), bytes(20)),
        (
            FrameHeader("cam-ü", 2**40, 2**63 - 1, "jpeg", (256, 1600, 3), meta={"coil": "C-7"}),
            b"\xff\xd8\xff\xe0 not really a jpeg",
        ),
        (FrameHeader("cam1", 1, 2, "png", (10, 10)), b"\x89PNG"),
    ],
)
def test_round_trip(header: FrameHeader, payload: bytes) -> None:
    parts = encode_frame(header, payload)
    assert len(parts) == 3
    assert parts[0] == b"frame/" + header.camera.encode()
    parsed, view = parse_frame_parts(parts)
    assert parsed == header
    assert isinstance(view, memoryview)
    assert view.obj is payload  # the payload is not copied
    assert bytes(view) == payload


def test_round_trip_of_a_real_array() -> None:
    strip = np.random.default_rng(0).integers(0, 256, (256, 1600, 3), dtype=np.uint8)
    header = FrameHeader("cam1", 3, 9, "raw", strip.shape)
    parsed, view = parse_frame_parts(encode_frame(header, strip.tobytes()))
    assert (parsed.height, parsed.width, parsed.channels) == (256, 1600, 3)
    assert parsed.raw_size == strip.nbytes
    np.testing.assert_array_equal(np.frombuffer(view, np.uint8).reshape(parsed.shape), strip)


def test_memoryview_parts_are_accepted() -> None:
    parts = [memoryview(p) for p in encode_frame(HEADER, bytes(256 * 1600))]
    assert parse_frame_parts(parts)[0] == HEADER


def test_header_wire_form() -> None:
    wire = msgpack.unpackb(encode_frame(HEADER, b"")[1], raw=False)
    assert wire == {
        "v": 1,
        "camera": "cam1",
        "seq": 42,
        "ts_ns": 1_700_000_000_123_456_789,
        "encoding": "raw",
        "shape": [256, 1600],
        "dtype": "uint8",
    }
    assert "meta" not in wire  # empty meta is left out, absent meta parses as {}


def test_unknown_header_keys_are_ignored() -> None:
    header, _ = parse_frame_parts(_parts(exposure_us=120, vendor={"x": 1}))
    assert header.seq == 7


def test_header_properties() -> None:
    assert (HEADER.height, HEADER.width, HEADER.channels, HEADER.raw_size) == (256, 1600, 1, 409600)
    h3 = FrameHeader("c", 0, 0, "raw", (256, 1600, 3))
    assert (h3.channels, h3.raw_size) == (3, 1228800)


# -- malformed frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 2, 4, 10])
def test_wrong_part_count(count: int) -> None:
    parts = [*_parts(), *[b"extra"] * 7][:count]
    err = _reject(parts)
    assert err.reason == f"expected 3 message parts (topic, header, payload), got {count}"
    # The header (part 2), when there is one, still says which frame was broken; else the topic.
    expected = {0: (UNKNOWN_CAMERA, UNKNOWN_SEQ), 1: ("cam1", UNKNOWN_SEQ)}.get(count, ("cam1", 7))
    assert (err.camera, err.seq) == expected


def test_topic_not_utf8() -> None:
    err = _reject([b"frame/\xff\xfe", *_parts()[1:]])
    assert err.reason.startswith("topic is not UTF-8")
    assert (err.camera, err.seq) == ("cam1", 7)  # from the readable header


@pytest.mark.parametrize("topic", [b"cam1", b"frame/", b"event/cam1", b"Frame/cam1", b""])
def test_topic_without_prefix(topic: bytes) -> None:
    err = _reject([topic, *_parts()[1:]])
    assert err.reason.startswith("topic must be 'frame/<camera_id>'")
    assert (err.camera, err.seq) == ("cam1", 7)  # from the readable header


def test_long_topic_is_truncated_in_reason() -> None:
    err = _reject([b"x" * 10_000, *_parts()[1:]])
    assert len(err.reason) < 200


@pytest.mark.parametrize("header", [b"", b"\xc1", b"\x92\x01", b"\x81\xa1v\x01\x00"])
def test_header_not_msgpack(header: bytes) -> None:
    err = _reject([b"frame/cam1", header, bytes(6)])
    assert err.reason.startswith("header is not valid msgpack")
    assert (err.camera, err.seq) == ("cam1", -1)  # the topic was readable


@pytest.mark.parametrize("value", [[1, 2], "cam1", 7, None, b"\x00"])
def test_header_not_a_map(value: Any) -> None:
    err = _reject([b"frame/cam1", pack(value), bytes(6)])  # type: ignore[arg-type]
    assert err.reason.startswith("header must be a msgpack map, got ")
    assert (err.camera, err.seq) == ("cam1", -1)


@pytest.mark.parametrize("version", [2, 0, "1", None, _MISSING, 1.0 + 1e-9])
def test_wrong_version(version: Any) -> None:
    err = _reject(_parts(v=version))
    assert err.reason.startswith("unknown protocol version v=")
    assert err.reason.endswith("this daemon speaks v=1")
    assert (err.camera, err.seq) == ("cam1", 7)


@pytest.mark.parametrize("version", [True, 1.0])
def test_version_must_be_the_integer_1(version: Any) -> None:
    _reject(_parts(v=version))


def test_version_2_message_text() -> None:
    assert _reject(_parts(v=2)).reason == "unknown protocol version v=2; this daemon speaks v=1"


@pytest.mark.parametrize("camera", [_MISSING, "", None, 5, ["cam1"]])
def test_missing_or_empty_camera(camera: Any) -> None:
    err = _reject(_parts(camera=camera))
    assert err.reason.startswith("header field 'camera' must be a non-empty string, got ")
    assert (err.camera, err.seq) == ("cam1", 7)  # the topic's camera stands in


def test_topic_and_header_camera_differ() -> None:
    err = _reject(_parts(camera="cam2"))
    assert err.reason == "topic camera 'cam1' does not match header camera 'cam2'"
    assert (err.camera, err.seq) == ("cam2", 7)  # the header's camera comes first


def test_topic_camera_named_unknown_must_still_match() -> None:
    parts = _parts(camera="cam2")
    _reject([b"frame/unknown", *parts[1:]])


@pytest.mark.parametrize("seq", [-1, True, False, 1.0, "7", None, _MISSING])
def test_bad_seq(seq: Any) -> None:
    err = _reject(_parts(seq=seq))
    assert err.reason.startswith("header field 'seq' must be an integer >= 0, got ")
    assert (err.camera, err.seq) == ("cam1", UNKNOWN_SEQ)


def test_seq_zero_and_huge_are_fine() -> None:
    assert parse_frame_parts(_parts(seq=0))[0].seq == 0
    assert parse_frame_parts(_parts(seq=2**64 - 1))[0].seq == 2**64 - 1


@pytest.mark.parametrize("ts_ns", [1.5, "123", None, True, _MISSING])
def test_bad_ts_ns(ts_ns: Any) -> None:
    err = _reject(_parts(ts_ns=ts_ns))
    assert err.reason.startswith("header field 'ts_ns' must be an integer, got ")
    assert (err.camera, err.seq) == ("cam1", 7)


@pytest.mark.parametrize("encoding", ["bmp", "JPEG", "", None, _MISSING, ["raw"]])
def test_bad_encoding(encoding: Any) -> None:
    err = _reject(_parts(encoding=encoding))
    assert err.reason.startswith(
        "header field 'encoding' must be one of ['raw', 'jpeg', 'png'], got "
    )
    assert (err.camera, err.seq) == ("cam1", 7)


@pytest.mark.parametrize("dtype", ["uint16", "float32", "u1", None, _MISSING])
def test_bad_dtype(dtype: Any) -> None:
    err = _reject(_parts(dtype=dtype))
    assert err.reason.startswith("header field 'dtype' must be one of ['uint8'], got ")
    assert (err.camera, err.seq) == ("cam1", 7)


@pytest.mark.parametrize(
    ("shape", "start"),
    [
        ([6], "header field 'shape' must be [h, w] or [h, w, c]"),
        ([1, 2, 3, 1], "header field 'shape' must be [h, w] or [h, w, c]"),
        ([], "header field 'shape' must be [h, w] or [h, w, c]"),
        ("2x3", "header field 'shape' must be [h, w] or [h, w, c]"),
        (None, "header field 'shape' must be [h, w] or [h, w, c]"),
        (_MISSING, "header field 'shape' must be [h, w] or [h, w, c]"),
        ([0, 3], "header field 'shape' must hold positive integers"),
        ([2, -3], "header field 'shape' must hold positive integers"),
        ([2, 3.0], "header field 'shape' must hold positive integers"),
        ([True, 6], "header field 'shape' must hold positive integers"),
        ([2, 3, 0], "header field 'shape' must hold positive integers"),
        ([2, 3, 2], "bad shape [2, 3, 2]: channels must be one of [1, 3]"),
        ([2, 3, 4], "bad shape [2, 3, 4]: channels must be one of [1, 3]"),
    ],
)
def test_bad_shape(shape: Any, start: str) -> None:
    err = _reject(_parts(shape=shape))
    assert err.reason.startswith(start)
    assert (err.camera, err.seq) == ("cam1", 7)


@pytest.mark.parametrize("shape", [[32768, 65536], [32768, 65536, 1], [2**40, 2**40, 3]])
def test_huge_shape_is_rejected_without_allocating(shape: list[int]) -> None:
    parts = _parts(shape=shape)
    tracemalloc.start()
    try:
        err = _reject(parts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.reason == f"bad shape {shape}: more than {MAX_PIXELS} pixels per frame"
    assert peak < 1 << 20


def test_largest_allowed_shape_with_short_payload_costs_nothing() -> None:
    """64 Mi px x 3 passes the size limit; the payload check still allocates nothing."""
    parts = _parts(shape=[8192, 8192, 3])
    tracemalloc.start()
    try:
        err = _reject(parts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (
        err.reason
        == "payload size mismatch: shape [8192, 8192, 3] uint8 needs 201326592 bytes, got 6"
    )
    assert peak < 1 << 20


@pytest.mark.parametrize("size", [0, 5, 7, 18])
def test_raw_payload_size_mismatch(size: int) -> None:
    parts = _parts()
    err = _reject([parts[0], parts[1], bytes(size)])
    assert err.reason == f"payload size mismatch: shape [2, 3] uint8 needs 6 bytes, got {size}"
    assert (err.camera, err.seq) == ("cam1", 7)


@pytest.mark.parametrize("encoding", ["jpeg", "png"])
def test_empty_encoded_payload(encoding: str) -> None:
    parts = _parts(encoding=encoding)
    err = _reject([parts[0], parts[1], b""])
    assert err.reason == f"empty {encoding} payload"
    assert (err.camera, err.seq) == ("cam1", 7)


def test_encoded_payload_size_is_not_checked_against_shape() -> None:
    parts = _parts(encoding="jpeg", shape=[256, 1600, 3])
    header, payload = parse_frame_parts([parts[0], parts[1], b"\xff\xd8"])
    assert header.encoding == "jpeg" and payload.nbytes == 2


@pytest.mark.parametrize("meta", [[1, 2], "coil", 5, None])
def test_meta_not_a_map(meta: Any) -> None:
    err = _reject(_parts(meta=meta))
    assert err.reason.startswith("header field 'meta' must be a map, got ")
    assert (err.camera, err.seq) == ("cam1", 7)


def test_meta_is_kept() -> None:
    header, _ = parse_frame_parts(_parts(meta={"coil": "C-1", "pos_mm": 1234.5}))
    assert header.meta == {"coil": "C-1", "pos_mm": 1234.5}


def test_first_problem_wins() -> None:
    """Fields are checked in a fixed order; a subscriber sees the first problem."""
    err = _reject(_parts(v=2, seq=-1, encoding="bmp"))
    assert err.reason.startswith("unknown protocol version")
    assert (err.camera, err.seq) == ("cam1", UNKNOWN_SEQ)


def test_non_string_map_keys_give_a_reject_not_a_crash() -> None:
    header = msgpack.packb({1: 2, b"camera": "cam1", "v": 1}, use_bin_type=True)
    err = _reject([b"frame/cam1", header, bytes(6)])
    assert err.reason.startswith("header field 'camera'")
    # An array as a map key cannot even become a Python dict.
    header = msgpack.packb({(1, 2): 3, "v": 1}, use_bin_type=True)
    err = _reject([b"frame/cam1", header, bytes(6)])
    assert err.reason.startswith("header is not valid msgpack")


def test_parse_header_without_topic() -> None:
    raw = HEADER.to_wire()
    assert parse_header(raw) == HEADER
    with pytest.raises(ProtocolError) as info:
        parse_header({**raw, "seq": -5})
    assert (info.value.camera, info.value.seq) == ("cam1", UNKNOWN_SEQ)


# -- reject addressing: (camera, seq) as far as readable ----------------------------------------

_GOOD = _parts()


def _header(**changes: Any) -> bytes:
    return _parts(**changes)[1]


@pytest.mark.parametrize(
    ("parts", "reason", "where"),
    [
        pytest.param([b"frame/cam1"], "expected 3", ("cam1", -1), id="1 part"),
        pytest.param([b"\xff"], "expected 3", ("unknown", -1), id="1 part, bad topic"),
        pytest.param(_GOOD[:2], "expected 3", ("cam1", 7), id="2 parts"),
        pytest.param([*_GOOD, b"x"], "expected 3", ("cam1", 7), id="4 parts"),
        pytest.param([*_GOOD, *[b"x"] * 7], "expected 3", ("cam1", 7), id="10 parts"),
        pytest.param([b"nonsense", _GOOD[1]], "expected 3", ("cam1", 7), id="2 parts, bad topic"),
        pytest.param(
            [b"frame/\xff", _header(camera="cam2"), b"", b""],
            "expected 3",
            ("cam2", 7),
            id="4 parts, bad topic",
        ),
        pytest.param(
            [b"frame/cam1", _header(camera="cam2"), b"", b""],
            "expected 3",
            ("cam2", 7),
            id="4 parts, header camera first",
        ),
        pytest.param(
            [b"frame/cam1", b"\xc1", b"", b""],
            "expected 3",
            ("cam1", -1),
            id="4 parts, not msgpack",
        ),
        pytest.param(
            [b"frame/cam1", pack([1, 2]), b"", b""],
            "expected 3",
            ("cam1", -1),
            id="4 parts, not map",
        ),
        pytest.param(
            [b"frame/cam1", _header(camera=""), b"", b""],
            "expected 3",
            ("cam1", 7),
            id="4 parts, bad header camera",
        ),
        pytest.param(
            [b"frame/cam1", _header(seq=True), b"", b""],
            "expected 3",
            ("cam1", -1),
            id="4 parts, bool seq",
        ),
        pytest.param(
            [b"frame/", _header(camera=None), b"", b""],
            "expected 3",
            ("unknown", 7),
            id="4 parts, no camera anywhere",
        ),
        pytest.param(
            [b"frame/\xff\xfe", *_GOOD[1:]], "topic is not UTF-8", ("cam1", 7), id="non-UTF-8"
        ),
        pytest.param(
            [b"frame/\xff", _header(camera="cam2"), _GOOD[2]],
            "topic is not UTF-8",
            ("cam2", 7),
            id="non-UTF-8, other header camera",
        ),
        pytest.param([b"cam1", *_GOOD[1:]], "topic must be", ("cam1", 7), id="no frame/ prefix"),
        pytest.param([b"frame/", *_GOOD[1:]], "topic must be", ("cam1", 7), id="empty topic id"),
        pytest.param(
            [b"\xff", b"\xc1\xc1", _GOOD[2]],
            "topic is not UTF-8",
            ("unknown", -1),
            id="bad topic, header not msgpack",
        ),
        pytest.param(
            [b"nonsense", pack("cam1"), _GOOD[2]],
            "topic must be",
            ("unknown", -1),
            id="bad topic, header not a map",
        ),
        pytest.param(
            [b"nonsense", _header(camera=5, seq=3), _GOOD[2]],
            "topic must be",
            ("unknown", 3),
            id="bad topic, bad header camera",
        ),
        pytest.param(
            [b"nonsense", _header(seq=-1), _GOOD[2]],
            "topic must be",
            ("cam1", -1),
            id="bad topic, bad seq",
        ),
        pytest.param(
            [b"frame/cam1", b"\xc1", _GOOD[2]],
            "header is not valid",
            ("cam1", -1),
            id="not msgpack",
        ),
        pytest.param(
            [b"frame/cam1", pack(7), _GOOD[2]],
            "header must be a msgpack map",
            ("cam1", -1),
            id="not a map",
        ),
        pytest.param(_parts(camera=""), "header field 'camera'", ("cam1", 7), id="bad camera"),
        pytest.param(_parts(seq="7"), "header field 'seq'", ("cam1", -1), id="bad seq"),
        pytest.param(_parts(seq=False), "header field 'seq'", ("cam1", -1), id="bool seq"),
        pytest.param(_parts(camera="cam2"), "topic camera", ("cam2", 7), id="camera mismatch"),
        pytest.param(_parts(v=3, seq=-2), "unknown protocol", ("cam1", -1), id="v, bad seq"),
    ],
)
def test_a_reject_is_filed_under_the_camera_and_seq_as_far_as_readable(
    parts: list[bytes], reason: str, where: tuple[str, int]
) -> None:
    """Header camera, else topic camera, else "unknown"; header seq, else -1; first problem wins."""
    err = _reject(parts)
    assert err.reason.startswith(reason), err.reason
    assert (err.camera, err.seq) == where


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd\xff\xff\xff\xff",  # an array claiming 4 Gi entries
        b"\xdf\xff\xff\xff\xff",  # a map claiming 4 Gi entries
        b"\xdb\xff\xff\xff\xff",  # a 4 GiB string
        b"\x91" * 100_000,  # nested deeper than any decoder stack
    ],
)
def test_reading_a_forged_header_for_the_reject_costs_nothing(header: bytes) -> None:
    parts = [b"\xff", header, bytes(8 << 20), b"x"]
    tracemalloc.start()
    try:
        for message in (parts, parts[:3]):
            err = _reject(message)
            assert (err.camera, err.seq) == (UNKNOWN_CAMERA, UNKNOWN_SEQ)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_rejects_over_real_sockets_are_filed_under_the_header_camera_and_seq(
    start_daemon, camera_socket
) -> None:
    from tests.conftest import gray_strip
    from tests.test_server import frame_parts

    daemon = start_daemon()
    cam = camera_socket(daemon.source)
    good = frame_parts("cam7", 41, gray_strip())
    cam.send_multipart([*good, b"trailer"])
    cam.send_multipart([b"frame/\xffcam7", frame_parts("cam7", 42, gray_strip())[1], good[2]])
    received: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + 30
    while sum(body.get("kind") == "reject" for _, body in received) < 2:
        assert time.monotonic() < deadline, f"events so far: {received}"
        if daemon.subscriber.socket.poll(50):
            received.append(parse_event(daemon.subscriber.socket.recv_multipart()))
    rejects = [(topic, body) for topic, body in received if body.get("kind") == "reject"]
    assert [(t, b["camera"], b["seq"]) for t, b in rejects] == [
        ("event/cam7", "cam7", 41),
        ("event/cam7", "cam7", 42),
    ]
    assert rejects[0][1]["reason"].startswith("expected 3 message parts")
    assert rejects[1][1]["reason"].startswith("topic is not UTF-8")


# -- fuzz ----------------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=8,
)
good_fields: dict[str, st.SearchStrategy[Any]] = {
    "v": st.just(1),
    "camera": st.just("cam1"),
    "seq": st.integers(0, 2**32),
    "ts_ns": st.integers(-(2**63), 2**63 - 1),
    "encoding": st.sampled_from(["raw", "jpeg", "png"]),
    "shape": st.lists(st.integers(1, 8), min_size=2, max_size=3),
    "dtype": st.just("uint8"),
    "meta": st.dictionaries(st.text(max_size=4), scalars, max_size=3),
}


@st.composite
def headers(draw: st.DrawFn) -> Any:
    """Mostly valid header maps with some fields broken, removed or added."""
    body = {}
    for key, good in good_fields.items():
        choice = draw(st.sampled_from(["good", "good", "good", "bad", "missing"]))
        if choice == "good":
            body[key] = draw(good)
        elif choice == "bad":
            body[key] = draw(values)
    body.update(draw(st.dictionaries(st.text(max_size=6), values, max_size=2)))
    return draw(st.one_of(st.just(body), values))


def _must_parse_or_reject(parts: list[bytes]) -> None:
    try:
        header, payload = parse_frame_parts(parts)
    except ProtocolError as err:
        assert isinstance(err.reason, str) and err.reason
        assert isinstance(err.camera, str) and err.camera
        assert isinstance(err.seq, int) and err.seq >= UNKNOWN_SEQ
        # A reject must be publishable as it is.
        pack(reject_event(err.camera, err.seq, err.reason))
        return
    assert header.seq >= 0 and header.camera
    assert header.encoding in ("raw", "jpeg", "png")
    assert len(header.shape) in (2, 3) and header.height * header.width <= MAX_PIXELS
    if header.encoding == "raw":
        assert payload.nbytes == header.raw_size
    else:
        assert payload.nbytes > 0


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=3, max_size=3))
def test_fuzz_arbitrary_bytes(parts: list[bytes]) -> None:
    _must_parse_or_reject(parts)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=64), min_size=0, max_size=6),
)
def test_fuzz_any_part_count(parts: list[bytes]) -> None:
    _must_parse_or_reject(parts)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([b"frame/cam1", b"frame/cam2", b"frame/", b"cam1"]) | st.binary(max_size=12),
    headers(),
    st.binary(max_size=300),
)
def test_fuzz_structured_headers(topic: bytes, header: Any, payload: bytes) -> None:
    _must_parse_or_reject([topic, msgpack.packb(header, use_bin_type=True), payload])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_header_bytes_after_valid_prefix(tail: bytes) -> None:
    # A truncated or extended valid header exercises the decoder's partial-input paths.
    valid = _parts()[1]
    _must_parse_or_reject([b"frame/cam1", valid[: len(tail) % (len(valid) + 1)] + tail, bytes(6)])


# -- events --------------------------------------------------------------------------------------

DEFECT = {
    "class_id": 3,
    "name": "defect_3",
    "score": 0.81,
    "area_px": 6,
    "mask_rle": "2 4 7 1 12 1",
    "components": [{"bbox": [0, 0, 2, 3], "area_px": 5}, {"bbox": [3, 2, 1, 1], "area_px": 1}],
}
MODEL = {"classifier": "cls:1:0123456789ab", "segmenter": "seg:2:ba9876543210"}


def _result() -> dict[str, Any]:
    header = FrameHeader("cam1", 42, 99, "raw", (256, 1600, 3), meta={"coil": "C-7"})
    return result_event(
        header, defective=True, scores=[0.93], defects=[DEFECT], latency_ms=12.5, model=MODEL
    )


def test_result_event() -> None:
    event = _result()
    assert event == {
        "v": 1,
        "kind": "result",
        "camera": "cam1",
        "seq": 42,
        "ts_ns": 99,
        "shape": [256, 1600],  # [h, w]: channels are not part of the result
        "defective": True,
        "scores": [0.93],
        "defects": [DEFECT],
        "latency_ms": 12.5,
        "model": MODEL,
        "meta": {"coil": "C-7"},
    }


def test_reject_event() -> None:
    assert reject_event("unknown", -1, "topic is not UTF-8: b'\\xff'") == {
        "v": 1,
        "kind": "reject",
        "camera": "unknown",
        "seq": -1,
        "ts_ns": None,
        "reason": "topic is not UTF-8: b'\\xff'",
    }
    assert reject_event("cam1", 7, "empty jpeg payload", ts_ns=5)["ts_ns"] == 5


def test_drop_event() -> None:
    header = FrameHeader("cam1", 8, 77, "raw", (2, 3), meta={"k": 1})
    assert drop_event(header) == {
        "v": 1,
        "kind": "drop",
        "camera": "cam1",
        "seq": 8,
        "ts_ns": 77,
        "reason": "overload",
        "meta": {"k": 1},
    }


def test_gap_event() -> None:
    # seq 10 then seq 14: 11, 12 and 13 never arrived.
    assert gap_event("cam1", 11, 13) == {
        "v": 1,
        "kind": "gap",
        "camera": "cam1",
        "first_seq": 11,
        "last_seq": 13,
        "missing": 3,
    }
    assert gap_event("cam1", 5, 5)["missing"] == 1


def test_camera_restart_event() -> None:
    assert camera_restart_event("cam1", 1041, 0) == {
        "v": 1,
        "kind": "camera_restart",
        "camera": "cam1",
        "previous_seq": 1041,
        "seq": 0,
    }


def test_status_event() -> None:
    counters = {"received": 10, "results": 7, "rejects": 1, "drops": 2, "gaps": 0, "restarts": 0}
    event = status_event("edge-1", 12.5, {"cam1": counters}, backend="onnxruntime")
    assert event == {
        "v": 1,
        "kind": "status",
        "daemon": "edge-1",
        "uptime_s": 12.5,
        "cameras": {"cam1": counters},
        "final": False,
        "backend": "onnxruntime",
    }


def test_topics() -> None:
    assert event_topic("cam1") == b"event/cam1"
    assert status_topic("edge-1") == b"status/edge-1"
    assert protocol.frame_topic("cam1") == b"frame/cam1"


@pytest.mark.parametrize(
    ("topic", "event"),
    [
        (event_topic("cam1"), _result()),
        (event_topic("unknown"), reject_event("unknown", -1, "bad")),
        (event_topic("cam1"), drop_event(HEADER)),
        (event_topic("cam1"), gap_event("cam1", 3, 9)),
        (event_topic("cam1"), camera_restart_event("cam1", 9, 0)),
        (status_topic("edge-1"), status_event("edge-1", 1.0, {})),
    ],
    ids=["result", "reject", "drop", "gap", "camera_restart", "status"],
)
def test_parse_event_round_trip(topic: bytes, event: dict[str, Any]) -> None:
    parsed_topic, body = parse_event([topic, pack(event)])
    assert parsed_topic == topic.decode()
    assert body == event
    assert body["v"] == 1


def test_result_round_trip_keeps_floats_and_nesting() -> None:
    _, body = parse_event([event_topic("cam1"), pack(_result())])
    assert body["defects"][0]["components"][1]["bbox"] == [3, 2, 1, 1]
    assert body["latency_ms"] == 12.5 and isinstance(body["latency_ms"], float)


@pytest.mark.parametrize("count", [1, 3])
def test_parse_event_wrong_part_count(count: int) -> None:
    parts = [event_topic("cam1"), pack(gap_event("cam1", 1, 2)), b""][:count]
    with pytest.raises(ProtocolError, match=f"expected 2 message parts .*got {count}"):
        parse_event(parts)


@pytest.mark.parametrize("body", [{"v": 2, "kind": "result"}, {"kind": "result"}, [1]])
def test_parse_event_wrong_version(body: Any) -> None:
    with pytest.raises(ProtocolError, match="event body is not a v1 map"):
        parse_event([event_topic("cam1"), pack(body)])  # type: ignore[arg-type]


def test_a_header_past_max_header_bytes_is_refused_before_it_is_unpacked(monkeypatch) -> None:
    from edge.protocol import messages as protocol

    header = {"v": 1, "camera": "cam1", "seq": 3, "ts_ns": 0, "encoding": "raw",
              "shape": [1, 1], "dtype": "uint8", "meta": {"x": [{}] * 9000}}  # fmt: skip
    packed = msgpack.packb(header)
    assert len(packed) > protocol.MAX_HEADER_BYTES  # 9 kB on the wire, ~0.6 MB unpacked

    def no_unpack(data: object) -> object:
        raise AssertionError("a header past the limit was unpacked")

    monkeypatch.setattr(protocol, "unpack", no_unpack)
    with pytest.raises(ProtocolError) as caught:
        parse_frame_parts([b"frame/cam1", packed, b"\x00"])
    assert caught.value.reason == f"header is {len(packed)} bytes, more than 8192 (meta included)"
    assert (caught.value.camera, caught.value.seq) == ("cam1", -1)  # from the topic
