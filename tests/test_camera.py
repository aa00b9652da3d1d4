"""The stand-in camera against real SUB sockets on loopback, and replay of real recordings."""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import zmq

from edge.line.camera import (
    FramePublisher,
    ImageLoadError,
    Pacer,
    encode_payload,
    images_in,
    load_strip,
    replay,
    run_camera,
)
from edge.line.recording import RecordingError, RecordingWriter, read_recording, record
from edge.protocol import parse_frame_parts

TIMEOUT_S = 10.0
SEVERSTAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "severstal_dev"
RNG = np.random.default_rng(7)
GRAY = RNG.integers(0, 256, (32, 48), dtype=np.uint8)
RGB = RNG.integers(0, 256, (32, 48, 3), dtype=np.uint8)


def free_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def recv_n(sock: zmq.Socket, n: int) -> list[list[bytes]]:
    """Receive ``n`` messages, failing (not hanging) if they do not come."""
    got = []
    for _ in range(n):
        assert sock.poll(int(TIMEOUT_S * 1000), zmq.POLLIN), f"only {len(got)} of {n} arrived"
        got.append(sock.recv_multipart())
    return got


@pytest.fixture
def make_sub() -> Iterator[Callable[[str], zmq.Socket]]:
    socks: list[zmq.Socket] = []

    def make(endpoint: str) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"frame/")
        sock.connect(endpoint)
        socks.append(sock)
        return sock

    yield make
    for sock in socks:
        sock.close(linger=0)


@pytest.fixture
def pub() -> Iterator[FramePublisher]:
    with FramePublisher("tcp://127.0.0.1:0") as publisher:
        yield publisher


def decode(parts: list[bytes]) -> tuple[Any, np.ndarray]:
    header, payload = parse_frame_parts(parts)
    if header.encoding == "raw":
        return header, np.frombuffer(payload, np.uint8).reshape(header.shape)
    pixels = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return header, pixels


# -- FramePublisher ----------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["0", "*"])
def test_endpoint_resolves_the_bound_port(port: str) -> None:
    with FramePublisher(f"tcp://127.0.0.1:{port}") as publisher:
        assert publisher.endpoint.startswith("tcp://127.0.0.1:")
        assert int(publisher.endpoint.rsplit(":", 1)[1]) > 0


def test_bind_failure_names_the_endpoint(pub: FramePublisher) -> None:
    with pytest.raises(zmq.ZMQError, match=pub.endpoint):
        FramePublisher(pub.endpoint)


def test_wait_for_subscriber(pub: FramePublisher, make_sub: Callable[[str], zmq.Socket]) -> None:
    assert pub.wait_for_subscriber(0.2) is False
    make_sub(pub.endpoint)
    assert pub.wait_for_subscriber(TIMEOUT_S) is True
    assert pub.wait_for_subscriber(0) is True  # remembered, not a one-shot event


@pytest.mark.parametrize(
    ("encoding", "image"), [("raw", GRAY), ("raw", RGB), ("png", GRAY), ("png", RGB)]
)
def test_lossless_encodings_round_trip_exactly(
    pub: FramePublisher, make_sub: Callable[[str], zmq.Socket], encoding: str, image: np.ndarray
) -> None:
    sub = make_sub(pub.endpoint)
    assert pub.wait_for_subscriber(TIMEOUT_S)
    pub.send_image("camA", 41, image, encoding=encoding, ts_ns=123, meta={"coil": "C-7"})

    (parts,) = recv_n(sub, 1)
    header, pixels = decode(parts)
    assert parts[0] == b"frame/camA"
    assert (header.camera, header.seq, header.ts_ns) == ("camA", 41, 123)
    assert header.encoding == encoding
    assert header.shape == image.shape
    assert header.meta == {"coil": "C-7"}
    np.testing.assert_array_equal(pixels, image)


@pytest.mark.parametrize("image", [GRAY, RGB])
def test_jpeg_round_trips_approximately(
    pub: FramePublisher, make_sub: Callable[[str], zmq.Socket], image: np.ndarray
) -> None:
    # A smooth image, because JPEG on random noise is far from the original by design.
    smooth = cv2.GaussianBlur(image, (0, 0), 3)
    sub = make_sub(pub.endpoint)
    assert pub.wait_for_subscriber(TIMEOUT_S)
    pub.send_image("camA", 0, smooth, encoding="jpeg")
    (parts,) = recv_n(sub, 1)
    header, pixels = decode(parts)
    assert header.encoding == "jpeg"
    assert pixels.shape == smooth.shape
    # Channel order matters: swapped R and B would be off by far more than this.
    assert np.abs(pixels.astype(int) - smooth.astype(int)).mean() < 3


def test_send_parts_sends_malformed_messages_unchanged(
    pub: FramePublisher, make_sub: Callable[[str], zmq.Socket]
) -> None:
    sub = make_sub(pub.endpoint)
    assert pub.wait_for_subscriber(TIMEOUT_S)
    messages = [[b"frame/x"], [b"frame/x", b"", b"", memoryview(b"mv")]]
    for parts in messages:
        pub.send_parts(parts)
    assert recv_n(sub, 2) == [[b"frame/x"], [b"frame/x", b"", b"", b"mv"]]


def test_encode_payload_raw_is_c_order_bytes() -> None:
    fortran = np.asfortranarray(RGB)
    assert encode_payload(fortran, "raw") == np.ascontiguousarray(RGB).tobytes()


@pytest.mark.parametrize(
    ("image", "encoding", "match"),
    [
        (GRAY.astype(np.float32), "raw", "uint8"),
        (np.zeros((4, 4, 2), np.uint8), "png", "H x W"),
        (np.zeros(16, np.uint8), "raw", "H x W"),
        (GRAY, "webp", "unknown encoding"),
    ],
)
def test_encode_payload_rejects(image: np.ndarray, encoding: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_payload(image, encoding)


# -- images on disk ----------------------------------------------------------------------------


def test_load_strip_gray_file_with_equal_channels(tmp_path: Path) -> None:
    path = tmp_path / "s.png"
    cv2.imwrite(str(path), cv2.merge([GRAY, GRAY, GRAY]))
    gray = load_strip(path)
    assert gray.shape == GRAY.shape
    np.testing.assert_array_equal(gray, GRAY)
    np.testing.assert_array_equal(load_strip(path, gray=False), cv2.merge([GRAY, GRAY, GRAY]))


def test_load_strip_colour_file(tmp_path: Path) -> None:
    path = tmp_path / "c.png"
    cv2.imwrite(str(path), cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(load_strip(path, gray=False), RGB)
    np.testing.assert_array_equal(load_strip(path), cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY))


def test_load_strip_single_channel_file(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    cv2.imwrite(str(path), GRAY)
    np.testing.assert_array_equal(load_strip(path), GRAY)
    assert load_strip(path, gray=False).shape == (*GRAY.shape, 3)


def test_load_strip_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"missing\.png: no such image file"):
        load_strip(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    with pytest.raises(ImageLoadError, match=r"junk\.png: not a readable image"):
        load_strip(junk)


def test_images_in_lists_images_sorted(tmp_path: Path) -> None:
    for name in ["b.jpg", "a.PNG", "c.tif", "d.bmp", "e.jpeg", "notes.txt", "f.png.bak"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in images_in(tmp_path)]
    assert names == ["a.PNG", "b.jpg", "c.tif", "d.bmp", "e.jpeg"]


def test_images_in_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="no such folder"):
        images_in(tmp_path / "absent")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ImageLoadError, match="no images"):
        images_in(tmp_path)


@pytest.mark.skipif(
    not (SEVERSTAL / "images").is_dir(),
    reason=f"Severstal dev images not present at {SEVERSTAL}/images (shared data not mounted)",
)
def test_real_severstal_strips_load_as_256x1600_gray() -> None:
    paths = images_in(SEVERSTAL / "images")
    assert {p.suffix for p in paths} >= {".png", ".jpg"}
    for path in paths:
        strip = load_strip(path)
        assert strip.shape == (256, 1600), path
        assert strip.dtype == np.uint8
        assert strip.flags.c_contiguous


# -- Pacer, with a fake clock ------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = 1_000_000_000
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        return self.now_ns

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_ns += round(seconds * 1e9)

    def work(self, ms: float) -> None:
        self.now_ns += round(ms * 1e6)


def fake_pacer(fps: float | None, clock: FakeClock, **kwargs: Any) -> Pacer:
    return Pacer(fps, clock=clock, sleep=clock.sleep, **kwargs)


def test_pacer_keeps_an_absolute_schedule_despite_uneven_work() -> None:
    clock = FakeClock()
    pacer = fake_pacer(10, clock)
    start = clock.now_ns
    wakeups = []
    for work_ms in [0, 30, 99, 5, 60, 0, 80]:
        clock.work(work_ms)
        pacer.wait()
        wakeups.append(clock.now_ns - start)
        clock.work(1)  # per-frame sending cost that a relative sleep would accumulate
    assert wakeups == [i * 100_000_000 for i in range(7)]


def test_pacer_late_slot_does_not_sleep_and_schedule_catches_up() -> None:
    clock = FakeClock()
    pacer = fake_pacer(10, clock)
    start = clock.now_ns
    pacer.wait()
    clock.work(250)  # slots 1 and 2 are missed
    pacer.wait()
    assert clock.sleeps == []
    pacer.wait()
    pacer.wait()
    assert clock.now_ns - start == 300_000_000  # slot 3 exactly, not 250 + 2 * 100


def test_pacer_resyncs_instead_of_bursting_after_a_long_stall() -> None:
    clock = FakeClock()
    pacer = fake_pacer(10, clock, resync_after_s=1.0)
    pacer.wait()
    clock.work(5_000)
    pacer.wait()
    stalled_at = clock.now_ns
    pacer.wait()
    assert clock.now_ns - stalled_at == 100_000_000


def test_pacer_without_fps_never_waits() -> None:
    clock = FakeClock()
    pacer = fake_pacer(None, clock)
    for _ in range(5):
        pacer.wait()
    assert clock.sleeps == []


def test_pacer_follows_recorded_offsets_from_the_first_call() -> None:
    clock = FakeClock()
    pacer = fake_pacer(None, clock)
    start = clock.now_ns
    recorded = [5_000_000_000, 5_040_000_000, 5_050_000_000, 5_050_000_000, 5_300_000_000]
    wakeups = []
    for ts in recorded:
        pacer.wait_until_offset(ts)
        wakeups.append(clock.now_ns - start)
        clock.work(7)
    # Each slot is due at its recorded gap from the first; the 4th (same timestamp as the 3rd)
    # is already late after 7 ms of work, so it goes at once.
    assert wakeups == [0, 40_000_000, 50_000_000, 57_000_000, 300_000_000]


def test_pacer_rejects_nonpositive_fps() -> None:
    with pytest.raises(ValueError, match="fps"):
        Pacer(0)


# -- run_camera and replay ---------------------------------------------------------------------


def test_run_camera_publishes_numbered_frames_with_meta(
    make_sub: Callable[[str], zmq.Socket],
) -> None:
    endpoint = free_endpoint()
    sub = make_sub(endpoint)  # connects before the camera binds; ZeroMQ retries until it does
    items = [GRAY, (GRAY, {"coil": "A1"}), GRAY, GRAY]
    sent: list[int] = []
    n = run_camera(
        endpoint, items, camera="line3", fps=None, count=3, start_seq=10, on_sent=sent.append
    )
    assert n == 3
    assert sent == [1, 2, 3]
    headers = [parse_frame_parts(parts)[0] for parts in recv_n(sub, 3)]
    assert [h.seq for h in headers] == [10, 11, 12]
    assert {h.camera for h in headers} == {"line3"}
    assert [h.meta for h in headers] == [{}, {"coil": "A1"}, {}]
    assert headers[0].ts_ns <= headers[1].ts_ns <= headers[2].ts_ns


def test_run_camera_stops_when_asked(make_sub: Callable[[str], zmq.Socket]) -> None:
    endpoint = free_endpoint()
    sub = make_sub(endpoint)
    stop = threading.Event()

    def on_sent(count: int) -> None:
        if count == 2:
            stop.set()

    # An endless source at a slow rate: only the stop request can end this call.
    n = run_camera(endpoint, itertools.cycle([GRAY]), fps=2, stop=stop, on_sent=on_sent)
    assert n == 2
    assert len(recv_n(sub, 2)) == 2


def test_run_camera_rejects_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        run_camera(free_endpoint(), [GRAY], encoding="gif")


def test_record_then_replay_is_byte_identical(
    tmp_path: Path, make_sub: Callable[[str], zmq.Socket]
) -> None:
    camera_at, replay_at = free_endpoint(), free_endpoint()
    out = tmp_path / "session.edgerec"
    frames = [RGB, GRAY, (GRAY, {"k": 1})]
    recorded: list[int] = []
    recorder = threading.Thread(
        target=lambda: recorded.append(record([camera_at], out, frames=len(frames) * 2)),
        daemon=True,
    )
    recorder.start()
    # Two cameras in a row on one endpoint: raw, then png with a seq restart.
    assert run_camera(camera_at, frames, fps=None, encoding="raw") == 3
    assert run_camera(camera_at, frames, fps=None, encoding="png", start_seq=100) == 3
    recorder.join(TIMEOUT_S)
    assert recorded == [6]
    records = list(read_recording(out))
    assert [parse_frame_parts(r.parts)[0].seq for r in records] == [0, 1, 2, 100, 101, 102]

    sub = make_sub(replay_at)
    assert replay(out, replay_at, as_fast_as_possible=True) == 6
    assert recv_n(sub, 6) == [r.parts for r in records]


@pytest.mark.parametrize("pacing", [{}, {"fps": 200.0}])
def test_replay_paced_sends_everything_in_order(
    tmp_path: Path, make_sub: Callable[[str], zmq.Socket], pacing: dict[str, float]
) -> None:
    path = tmp_path / "paced.edgerec"
    messages = [[b"frame/c", str(i).encode(), b"x" * i] for i in range(5)]
    with RecordingWriter(path, "t") as writer:
        for i, parts in enumerate(messages):
            writer.write(parts, recv_ts_ns=1_000_000_000 + i * 5_000_000)
    endpoint = free_endpoint()
    sub = make_sub(endpoint)
    assert replay(path, endpoint, **pacing) == 5
    assert recv_n(sub, 5) == messages


def test_replay_of_a_truncated_recording(
    tmp_path: Path, make_sub: Callable[[str], zmq.Socket]
) -> None:
    path = tmp_path / "cut.edgerec"
    with RecordingWriter(path, "t") as writer:
        for i in range(3):
            writer.write([b"frame/c", bytes([i]) * 50], recv_ts_ns=i)
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size - 10)
    endpoint = free_endpoint()
    sub = make_sub(endpoint)
    with pytest.raises(RecordingError, match="truncated after record 2"):
        replay(path, endpoint, as_fast_as_possible=True)
    assert len(recv_n(sub, 2)) == 2  # the complete ones went out before the error

    endpoint = free_endpoint()
    sub = make_sub(endpoint)
    assert replay(path, endpoint, as_fast_as_possible=True, allow_truncated=True) == 2
    assert [p[1][:1] for p in recv_n(sub, 2)] == [b"\x00", b"\x01"]


def test_replay_rejects_a_bad_file_before_binding(tmp_path: Path) -> None:
    path = tmp_path / "bad.edgerec"
    path.write_bytes(b"nope")
    endpoint = free_endpoint()
    with pytest.raises(RecordingError, match=r"bad\.edgerec"):
        replay(path, endpoint, wait_subscriber_s=TIMEOUT_S)
    # Nothing was left bound: the endpoint is still free.
    with FramePublisher(endpoint) as publisher:
        assert publisher.endpoint == endpoint
