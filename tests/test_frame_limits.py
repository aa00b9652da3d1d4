"""Frames of any legal shape stay within the configured bounds: tiles per batch, frame size,
and the camera table."""

from __future__ import annotations

import time

import cv2
import msgpack
import numpy as np
import pytest

from edge.daemon.config import ConfigError, load_config
from edge.daemon.ledger import OVERFLOW, Ledger
from edge.daemon.sources import FrameLimits, check_limits
from edge.protocol import FrameHeader, ProtocolError, pack, status_topic
from tests.conftest import gray_strip, hold_models
from tests.test_server import frame_parts, per_frame

LIMITS = FrameLimits(pixels=4 * 256 * 1600, height=1024, width=6400)


def header(*shape: int) -> FrameHeader:
    return FrameHeader("cam1", 7, 0, "raw", shape)


@pytest.mark.parametrize(
    ("shape", "named"),
    [
        ((1025, 100), "max_frame_height = 1024"),
        ((100, 6401), "max_frame_width = 6400"),
        ((1024, 1601), "max_frame_pixels = 1638400"),
        ((8192, 8192), "max_frame_height = 1024"),
    ],
)
def test_a_frame_over_a_limit_is_refused_naming_the_limit(shape, named: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        check_limits(header(*shape), LIMITS)
    assert named in caught.value.reason and str(list(shape)) in caught.value.reason
    assert (caught.value.camera, caught.value.seq) == ("cam1", 7)


@pytest.mark.parametrize("shape", [(256, 1600), (1024, 1600), (64, 4096), (256, 6400), (1, 1)])
def test_frames_within_the_limits_pass(shape) -> None:
    check_limits(header(*shape), LIMITS)


def test_the_frame_limits_cannot_exceed_the_protocol() -> None:
    with pytest.raises(ConfigError, match="max_frame_pixels"):
        load_config(None, sources=["tcp://127.0.0.1:1"], max_frame_pixels=2**40)


def test_max_batch_bounds_tiles_whatever_the_strip_shape(
    start_daemon, camera_socket, monkeypatch
) -> None:
    # 64 x 4096 strips: fewer pixels than a nominal strip, but 16 tiles each against 7.
    daemon = start_daemon(workers=1, max_batch=32, queue_size=64)
    release = hold_models(daemon, monkeypatch)
    cam = camera_socket(daemon.source)
    wide = gray_strip(height=64, width=4096)
    wide[::7, ::7] = 0  # every tile segmented: the costliest batch
    for seq in range(13):
        cam.send_multipart(frame_parts("cam1", seq, wide))
    deadline = time.monotonic() + 10
    while daemon.server.ledger.snapshot().get("cam1", {}).get("received", 0) < 13:
        assert time.monotonic() < deadline, "frames never arrived"
        time.sleep(0.01)
    release.set()
    events = per_frame(daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= 13))
    assert [e["kind"] for e in events] == ["result"] * 13
    sizes = daemon.server.workers.batch_sizes
    assert max(sizes) == 2, sizes  # 2 x 16 tiles fill max_batch = 32; before, 4 strips went
    tiles = daemon.server.metrics.batch_tiles.collect()[0].samples
    total = next(s.value for s in tiles if s.name.endswith("_sum"))
    assert total == 13 * 16


def test_a_huge_legal_jpeg_is_refused_before_decoding_and_the_others_are_served(
    start_daemon, camera_socket
) -> None:
    daemon = start_daemon()
    big = cv2.imencode(".jpg", np.full((8192, 8192), 128, np.uint8))[1].tobytes()
    head = FrameHeader("big", 0, time.time_ns(), "jpeg", (8192, 8192))
    cam = camera_socket(daemon.source)
    cam.send_multipart([b"frame/big", pack(head.to_wire()), big])
    for seq in range(5):
        cam.send_multipart(frame_parts("cam1", seq, gray_strip()))
    events = per_frame(daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= 6))
    (reject,) = [e for e in events if e["camera"] == "big"]
    assert reject["kind"] == "reject" and "max_frame_height = 1024" in reject["reason"]
    assert [e["kind"] for e in events if e["camera"] == "cam1"] == ["result"] * 5
    decoded = daemon.server.metrics.stage_seconds.labels("decode")._sum.get()
    assert decoded < 1.0, "the big frame was decoded"  # 5 small raw frames: well under


def test_the_camera_table_is_bounded_and_forged_ids_are_refused(
    start_daemon, camera_socket
) -> None:
    daemon = start_daemon(max_cameras=3)
    cam = camera_socket(daemon.source)
    good = frame_parts("x", 0, gray_strip(height=8, width=8))
    head = msgpack.unpackb(good[1])
    for n in range(50):
        camera = f"forged-{n}"
        cam.send_multipart(
            [f"frame/{camera}".encode(), msgpack.packb({**head, "camera": camera}), good[2]]
        )
    events = per_frame(daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= 50))
    kinds = {e["camera"]: e["kind"] for e in events}
    assert kinds == {f"forged-{n}": "result" if n < 3 else "reject" for n in range(50)}
    refused = next(e for e in events if e["camera"] == "forged-3")  # the event names the frame
    assert "camera table full: 3 camera ids seen already (max_cameras)" in refused["reason"]
    status = daemon.subscriber.wait_for_status()
    assert sorted(status["cameras"]) == sorted(["forged-0", "forged-1", "forged-2", OVERFLOW])
    overflow = status["cameras"][OVERFLOW]
    assert overflow["received"] == overflow["rejects"] == 47
    assert len(pack(status)) < 2000
    assert daemon.server.metrics.rejects.labels(OVERFLOW, "limit")._value.get() == 47
    assert status_topic(daemon.server.config.daemon_id)  # the topic is the daemon's, not an id


def test_the_ledger_counts_cameras_past_its_table_under_one_label() -> None:
    ledger = Ledger(max_cameras=2)
    assert ledger.admit("a") and ledger.admit("b") and not ledger.admit("c")
    assert ledger.admit("unknown")  # unreadable ids take no place in the table
    for camera in ("a", "c", "d", "unknown"):
        ledger.count(camera, "received")
    assert ledger.observe_seq("c", 5) == []
    assert sorted(ledger.snapshot()) == sorted(["a", "b", OVERFLOW, "unknown"])
    assert ledger.snapshot()[OVERFLOW]["received"] == 2
