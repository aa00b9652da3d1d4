"""The .edgerec format on real files, and record() against real ZeroMQ sockets on loopback."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from edge.line.camera import FramePublisher
from edge.line.recording import (
    MAGIC,
    Record,
    RecordingError,
    RecordingWriter,
    read_info,
    read_recording,
    record,
)

TIMEOUT_S = 10.0

MESSAGES: list[list[bytes]] = [
    [b"frame/cam1", b"\x81\xa1v\x01", b"\x00" * 1000],
    [b"frame/one-part-only"],
    [b"frame/cam1", b"", b"", b"trailing"],
    [b"frame/cam2", b"header", b""],
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_file(path: Path, messages: list[list[bytes]]) -> list[int]:
    """Write ``messages`` with timestamps 1000, 2000, ...; return the byte offset of each."""
    offsets = []
    with RecordingWriter(path, "test") as writer:
        for i, parts in enumerate(messages):
            offsets.append(path.stat().st_size)
            writer.write(parts, recv_ts_ns=(i + 1) * 1000)
    return offsets


def raw_file(path: Path, *objects: object, magic: bytes = MAGIC) -> Path:
    path.write_bytes(magic + b"".join(msgpack.packb(o, use_bin_type=True) for o in objects))
    return path


HEADER = {"format": "edgerec", "v": 1, "created_ns": 1, "source": "hand-made"}


def test_round_trip_keeps_every_part_byte_exact(tmp_path: Path) -> None:
    path = tmp_path / "r.edgerec"
    with RecordingWriter(path, "connect tcp://cam:5555") as writer:
        for i, parts in enumerate(MESSAGES):
            writer.write(parts, recv_ts_ns=100 + i)
        writer.write([memoryview(b"frame/mv"), bytearray(b"hdr"), memoryview(b"")], 999)
        assert writer.count == len(MESSAGES) + 1

    records = list(read_recording(path))

    expected = [Record(100 + i, parts) for i, parts in enumerate(MESSAGES)]
    expected.append(Record(999, [b"frame/mv", b"hdr", b""]))
    assert records == expected
    assert all(type(p) is bytes for r in records for p in r.parts)


def test_file_starts_with_magic_and_header(tmp_path: Path) -> None:
    path = tmp_path / "r.edgerec"
    before = time.time_ns()
    RecordingWriter(path, "bind tcp://*:5555").close()

    assert path.read_bytes()[:8] == b"EDGEREC1"
    info = read_info(path)
    assert info["format"] == "edgerec"
    assert info["v"] == 1
    assert info["source"] == "bind tcp://*:5555"
    assert info["created_ns"] >= before
    assert list(read_recording(path)) == []


def test_default_timestamp_is_wall_clock(tmp_path: Path) -> None:
    path = tmp_path / "r.edgerec"
    before = time.time_ns()
    with RecordingWriter(path, "t") as writer:
        writer.write([b"frame/a"])
    (rec,) = read_recording(path)
    assert rec.recv_ts_ns >= before


def test_records_are_readable_while_the_writer_is_still_open(tmp_path: Path) -> None:
    # What a killed recorder leaves behind: the file as of the last write, never closed.
    path = tmp_path / "r.edgerec"
    writer = RecordingWriter(path, "t")
    try:
        for parts in MESSAGES:
            writer.write(parts, 1)
        assert [r.parts for r in read_recording(path)] == MESSAGES
    finally:
        writer.close()


def test_write_after_close_fails(tmp_path: Path) -> None:
    writer = RecordingWriter(tmp_path / "r.edgerec", "t")
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write([b"frame/a"])


@pytest.mark.parametrize(
    "content", [b"", b"EDGE", b"PNG\r\n\x1a\n-and-more", b"EDGEREC2" + b"\x80"]
)
def test_bad_magic_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "not-a-recording.bin"
    path.write_bytes(content)
    with pytest.raises(RecordingError, match=r"not-a-recording\.bin.*not an edge recording"):
        list(read_recording(path))
    with pytest.raises(RecordingError, match="not an edge recording"):
        read_info(path)


def test_missing_file_is_a_recording_error(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match=r"nope\.edgerec"):
        read_info(tmp_path / "nope.edgerec")


def test_unsupported_version(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "v2.edgerec", {**HEADER, "v": 2})
    with pytest.raises(RecordingError, match=r"v2\.edgerec.*unsupported recording version v=2"):
        read_info(path)


@pytest.mark.parametrize("header", [[1, 2], {"format": "other", "v": 1}, "edgerec"])
def test_header_that_is_not_ours(tmp_path: Path, header: object) -> None:
    path = raw_file(tmp_path / "h.edgerec", header)
    with pytest.raises(RecordingError, match="not an edge recording"):
        list(read_recording(path))


def test_unknown_header_keys_and_extra_record_fields_are_ignored(tmp_path: Path) -> None:
    path = raw_file(
        tmp_path / "f.edgerec",
        {**HEADER, "future": {"x": 1}},
        [5, [b"frame/a", b"h"], "added-later", 7],
    )
    assert read_info(path)["future"] == {"x": 1}
    assert list(read_recording(path)) == [Record(5, [b"frame/a", b"h"])]


@pytest.mark.parametrize("cut", [1, 40, 1020])
def test_truncated_last_record(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.edgerec"
    messages = [*MESSAGES[1:], MESSAGES[0]]  # the 1000-byte message last, so every cut lands in it
    offsets = write_file(path, messages)
    size = path.stat().st_size
    os.truncate(path, size - cut)

    n = len(messages) - 1
    with pytest.raises(
        RecordingError,
        match=rf"cut\.edgerec: truncated after record {n} at byte offset {offsets[-1]}",
    ):
        list(read_recording(path))
    complete = list(read_recording(path, allow_truncated=True))
    assert [r.parts for r in complete] == messages[:-1]
    assert [r.recv_ts_ns for r in complete] == [1000, 2000, 3000]


def test_truncated_error_comes_after_the_complete_records(tmp_path: Path) -> None:
    path = tmp_path / "cut.edgerec"
    write_file(path, MESSAGES)
    os.truncate(path, path.stat().st_size - 1)
    seen: list[Record] = []
    with pytest.raises(RecordingError, match="truncated"):
        for rec in read_recording(path):
            seen.append(rec)
    assert len(seen) == len(MESSAGES) - 1


def test_truncated_header_is_always_an_error(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "h.edgerec", HEADER)
    os.truncate(path, path.stat().st_size - 3)
    with pytest.raises(RecordingError, match="truncated in the file header"):
        list(read_recording(path, allow_truncated=True))


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"not": "an array"}, "expected an array"),
        ([1], "expected an array"),
        (["ts", [b"x"]], "recv_ts_ns must be an integer"),
        ([1, [b"x", "text, not bin"]], "parts must be an array of bin"),
        ([1, b"x"], "parts must be an array of bin"),
    ],
)
def test_malformed_record_names_index_and_offset(tmp_path: Path, bad: object, why: str) -> None:
    path = raw_file(tmp_path / "m.edgerec", HEADER, [1, [b"frame/a"]], bad)
    offset = len(MAGIC) + len(msgpack.packb(HEADER)) + len(msgpack.packb([1, [b"frame/a"]]))
    with pytest.raises(
        RecordingError, match=rf"record 1 at byte offset {offset} is malformed: {why}"
    ):
        list(read_recording(path, allow_truncated=True))


def test_garbage_in_the_middle_is_not_treated_as_truncation(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "g.edgerec", HEADER, [1, [b"frame/a"]])
    with path.open("ab") as fh:
        fh.write(b"\xc1" + msgpack.packb([2, [b"frame/b"]]))  # 0xc1 is never valid msgpack
    with pytest.raises(RecordingError, match=r"record 1 at byte offset .* not valid msgpack"):
        list(read_recording(path, allow_truncated=True))


# -- record(): real sockets --------------------------------------------------------------------


def run_in_thread(fn: object, *args: object, **kwargs: object) -> tuple[threading.Thread, list]:
    result: list = []

    def target() -> None:
        result.append(fn(*args, **kwargs))  # type: ignore[operator]

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


@pytest.fixture
def publisher() -> Iterator[FramePublisher]:
    pub = FramePublisher("tcp://127.0.0.1:*")
    yield pub
    pub.close(linger_ms=0)


def test_record_writes_every_frame_message_as_received(
    tmp_path: Path, publisher: FramePublisher
) -> None:
    out = tmp_path / "live.edgerec"
    counts: list[int] = []
    thread, result = run_in_thread(
        record, [publisher.endpoint], out, frames=len(MESSAGES), on_record=counts.append
    )
    assert publisher.wait_for_subscriber(TIMEOUT_S)
    before = time.time_ns()
    # Not a frame topic, but the daemon would receive it (and reject it): so it is recorded.
    stray = [b"event/cam1", b"not a frame topic"]
    publisher.send_parts(stray)
    for parts in MESSAGES[:-1]:
        publisher.send_parts(parts)
    thread.join(TIMEOUT_S)

    assert not thread.is_alive()
    assert result == [len(MESSAGES)]
    assert counts == [1, 2, 3, 4]
    records = list(read_recording(out))
    assert [r.parts for r in records] == [stray, *MESSAGES[:-1]]
    assert all(r.recv_ts_ns >= before for r in records)
    assert read_info(out)["source"] == f"connect {publisher.endpoint}"


def test_record_from_several_sources(tmp_path: Path) -> None:
    out = tmp_path / "two.edgerec"
    with FramePublisher("tcp://127.0.0.1:*") as a, FramePublisher("tcp://127.0.0.1:*") as b:
        thread, result = run_in_thread(record, [a.endpoint, b.endpoint], out, frames=2)
        assert a.wait_for_subscriber(TIMEOUT_S)
        assert b.wait_for_subscriber(TIMEOUT_S)
        a.send_parts([b"frame/a", b"1", b"2"])
        b.send_parts([b"frame/b", b"3", b"4"])
        thread.join(TIMEOUT_S)
    assert result == [2]
    got = sorted(r.parts[0] for r in read_recording(out))
    assert got == [b"frame/a", b"frame/b"]


def test_record_bind_mode_accepts_connecting_cameras(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "bound.edgerec"
    thread, result = run_in_thread(record, [endpoint], out, frames=1, bind=True)
    cam = zmq.Context.instance().socket(zmq.XPUB)
    try:
        cam.connect(endpoint)
        # The subscription arriving proves the recorder's SUB is attached; no slow-joiner loss.
        assert cam.poll(int(TIMEOUT_S * 1000), zmq.POLLIN)
        assert cam.recv() == b"\x01"  # subscribed to everything
        cam.send_multipart([b"frame/c", b"h", b"p"])
        thread.join(TIMEOUT_S)
    finally:
        cam.close(linger=0)
    assert result == [1]
    assert [r.parts for r in read_recording(out)] == [[b"frame/c", b"h", b"p"]]
    assert read_info(out)["source"] == f"bind {endpoint}"


def test_record_stops_when_asked(tmp_path: Path, publisher: FramePublisher) -> None:
    out = tmp_path / "stopped.edgerec"
    stop = threading.Event()
    thread, result = run_in_thread(record, [publisher.endpoint], out, stop=stop)
    assert publisher.wait_for_subscriber(TIMEOUT_S)
    publisher.send_parts([b"frame/a", b"only one"])
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and len(list(read_recording(out))) < 1:
        time.sleep(0.01)
    stop.set()
    thread.join(TIMEOUT_S)

    assert not thread.is_alive()
    assert result == [1]
    assert [r.parts for r in read_recording(out)] == [[b"frame/a", b"only one"]]


def test_record_duration_with_no_traffic(tmp_path: Path, publisher: FramePublisher) -> None:
    out = tmp_path / "quiet.edgerec"
    assert record([publisher.endpoint], out, duration_s=0.2) == 0
    assert list(read_recording(out)) == []


def test_record_needs_a_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one source"):
        record([], tmp_path / "x.edgerec", frames=1)
