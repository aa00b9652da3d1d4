"""The whole data path over real sockets: frames in -> tiles -> models -> events out."""

from __future__ import annotations

import threading
import time
from typing import Any

import cv2
import msgpack
import numpy as np
import pytest

from edge.protocol import FrameHeader, encode_frame, rle
from tests.conftest import gray_strip, hold_models
from tests.tiny_models import expected_masks


def frame_parts(
    camera: str, seq: int, image: np.ndarray, encoding: str = "raw", **meta: object
) -> list[bytes]:
    if encoding == "raw":
        payload = image.tobytes()
    else:
        bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        payload = cv2.imencode("." + ("jpg" if encoding == "jpeg" else "png"), bgr)[1].tobytes()
    header = FrameHeader(camera, seq, time.time_ns(), encoding, image.shape, meta=dict(meta))
    return [bytes(p) for p in encode_frame(header, payload)]


def per_frame(events: list[dict]) -> list[dict]:
    return [e for e in events if e["kind"] in ("result", "reject", "drop")]


def test_every_frame_from_two_cameras_gets_one_result(start_daemon, camera_socket) -> None:
    daemon = start_daemon(queue_size=64)
    cams = {name: camera_socket(daemon.source) for name in ("cam1", "cam2")}
    for seq in range(12):
        for name, sock in cams.items():
            sock.send_multipart(frame_parts(name, seq, gray_strip(), line="A"))
    events = daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= 24)
    results = per_frame(events)
    assert sorted((e["camera"], e["seq"]) for e in results) == sorted(
        (name, seq) for name in cams for seq in range(12)
    )
    assert all(e["kind"] == "result" and not e["defective"] for e in results)
    assert all(e["meta"] == {"line": "A"} and len(e["scores"]) == 4 for e in results)
    assert all(e["shape"] == [256, 1600] for e in results)


def test_defect_mask_is_pixel_exact(start_daemon, camera_socket) -> None:
    image = gray_strip()
    image[40:90, 300:420] = 20  # dark: classes 1 ("dark") and 3 ("very_dark")
    image[150:160, 1500:1590] = 240  # bright: classes 2 and 4
    daemon = start_daemon()
    camera_socket(daemon.source).send_multipart(frame_parts("cam1", 0, image))
    (event,) = per_frame(daemon.subscriber.wait_for(lambda ev: per_frame(ev)))
    assert event["defective"] is True
    found = {d["class_id"]: d for d in event["defects"]}
    assert sorted(found) == [1, 2, 3, 4]
    want = expected_masks(image)
    for class_id, defect in found.items():
        mask = rle.decode(defect["mask_rle"], 256, 1600)
        np.testing.assert_array_equal(mask, want[class_id - 1])
        assert defect["area_px"] == int(want[class_id - 1].sum())
    assert found[1]["components"] == [{"bbox": [300, 40, 120, 50], "area_px": 6000}]
    assert found[2]["components"] == [{"bbox": [1500, 150, 90, 10], "area_px": 900}]
    assert event["scores"][0] > 0.5


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_encoded_and_color_frames_are_decoded(start_daemon, camera_socket, encoding: str) -> None:
    gray = gray_strip()
    gray[100:140, 800:900] = 10
    color = np.repeat(gray[:, :, None], 3, axis=2)
    daemon = start_daemon()
    cam = camera_socket(daemon.source)
    cam.send_multipart(frame_parts("cam1", 0, gray, encoding))
    cam.send_multipart(frame_parts("cam1", 1, color, encoding))
    results = per_frame(daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= 2))
    assert [e["kind"] for e in results] == ["result", "result"]
    for event in results:
        dark = next(d for d in event["defects"] if d["class_id"] == 1)
        bbox = dark["components"][0]["bbox"]
        # JPEG blurs edges by a pixel or two; the box must still be where the defect is.
        assert abs(bbox[0] - 800) <= 2 and abs(bbox[1] - 100) <= 2


@pytest.mark.parametrize("shape", [(100, 700), (256, 256), (300, 2000), (64, 3000, 3)])
def test_any_strip_size_is_served(start_daemon, camera_socket, shape: tuple[int, ...]) -> None:
    image = np.full(shape, 128, np.uint8)
    image[10:30, 40:60] = 0
    daemon = start_daemon()
    camera_socket(daemon.source).send_multipart(frame_parts("cam1", 0, image))
    (event,) = per_frame(daemon.subscriber.wait_for(lambda ev: per_frame(ev)))
    assert event["kind"] == "result"
    assert event["shape"] == list(shape[:2])
    mask = rle.decode(event["defects"][0]["mask_rle"], *shape[:2])
    assert mask[10:30, 40:60].all() and mask.sum() == 400


def malformed_messages() -> list[tuple[str, list[bytes]]]:
    good = frame_parts("bad", 0, gray_strip())
    header = msgpack.unpackb(good[1])

    def with_header(**changes: object) -> list[bytes]:
        return [good[0], msgpack.packb({**header, **changes}), good[2]]

    return [
        ("expected 3 message parts", good[:2]),
        ("topic must be", [b"nonsense", good[1], good[2]]),
        ("header is not valid msgpack", [good[0], b"\xc1\xc1", good[2]]),
        ("unknown protocol version", with_header(v=2)),
        ("does not match header camera", with_header(camera="other")),
        ("'seq' must be an integer", with_header(seq="7")),
        ("'encoding' must be one of", with_header(encoding="bmp")),
        ("'dtype' must be one of", with_header(dtype="float32")),
        ("more than", with_header(shape=[100000, 100000])),
        ("payload size mismatch", [good[0], good[1], good[2][:-1]]),
        ("png image does not start like a PNG", with_header(encoding="png")),
        (
            "png image is 256x1600 pixels but the header says [10, 10]",
            [
                good[0],
                msgpack.packb({**header, "encoding": "png", "shape": [10, 10]}),
                cv2.imencode(".png", gray_strip())[1].tobytes(),
            ],
        ),
    ]


def test_each_malformed_message_gets_one_reject_and_the_daemon_keeps_serving(
    start_daemon, camera_socket
) -> None:
    daemon = start_daemon()
    cam = camera_socket(daemon.source)
    cases = malformed_messages()
    for _, parts in cases:
        cam.send_multipart(parts)
    cam.send_multipart(frame_parts("good", 0, gray_strip()))
    events = per_frame(daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= len(cases) + 1))
    rejects = [e for e in events if e["kind"] == "reject"]
    assert len(rejects) == len(cases)
    for (expected, _), event in zip(cases, rejects, strict=True):
        assert expected in event["reason"], (expected, event["reason"])
    assert events[-1]["kind"] == "result" and events[-1]["camera"] == "good"
    # What could be read of the bad frames is kept, so each reject points at its frame.
    assert rejects[3]["camera"] == "bad" and rejects[3]["seq"] == 0
    assert rejects[0]["camera"] == "bad" and rejects[0]["seq"] == 0  # from the header (part 2)
    assert rejects[1]["camera"] == "bad" and rejects[1]["seq"] == 0  # from the header


def test_gaps_and_camera_restarts_are_reported(start_daemon, camera_socket) -> None:
    daemon = start_daemon()
    cam = camera_socket(daemon.source)
    for seq in [0, 1, 2, 5, 6, 0, 1]:
        cam.send_multipart(frame_parts("cam1", seq, gray_strip()))
    events = daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= 7)
    gaps = [e for e in events if e["kind"] == "gap"]
    restarts = [e for e in events if e["kind"] == "camera_restart"]
    assert [(g["first_seq"], g["last_seq"], g["missing"]) for g in gaps] == [(3, 4, 2)]
    assert [(r["previous_seq"], r["seq"]) for r in restarts] == [(6, 0)]
    status = daemon.subscriber.wait_for_status()
    counts = status["cameras"]["cam1"]
    assert (counts["received"], counts["gaps"], counts["missing"], counts["restarts"]) == (
        7,
        1,
        2,
        1,
    )


def test_overload_drops_oldest_with_events_and_accounts_for_every_frame(
    start_daemon, camera_socket
) -> None:
    daemon = start_daemon(queue_size=2, max_batch=7)
    cam = camera_socket(daemon.source)
    busy = gray_strip()
    busy[::7, ::7] = 0  # every tile passes the gate: the slowest path through the cascade
    sent = 60
    for seq in range(sent):
        cam.send_multipart(frame_parts("cam1", seq, busy))
    events = per_frame(daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= sent, 120))
    kinds = [e["kind"] for e in events]
    assert kinds.count("drop") > 0, "flooding a queue of 2 must shed load"
    assert all(e["reason"] == "overload" for e in events if e["kind"] == "drop")
    assert sorted(e["seq"] for e in events) == list(range(sent))
    counts = daemon.subscriber.wait_for_status()["cameras"]["cam1"]
    assert counts["received"] == sent == counts["results"] + counts["drops"] + counts["rejects"]
    assert max(s["queue_depth"] for s in daemon.subscriber.statuses) <= 2


def test_shutdown_finishes_every_received_frame(start_daemon, camera_socket) -> None:
    daemon = start_daemon(queue_size=64)
    cam = camera_socket(daemon.source)
    for seq in range(20):
        cam.send_multipart(frame_parts("cam1", seq, gray_strip()))
    deadline = time.monotonic() + 10
    while daemon.server.ledger.snapshot().get("cam1", {}).get("received", 0) < 20:
        assert time.monotonic() < deadline, "frames never arrived"
        time.sleep(0.01)
    daemon.stop()
    daemon.subscriber.pump(1.0)
    events = per_frame(daemon.subscriber.events)
    assert sorted(e["seq"] for e in events) == list(range(20))
    assert daemon.subscriber.statuses[-1]["final"] is True
    final = daemon.subscriber.statuses[-1]["cameras"]["cam1"]
    assert final["received"] == final["results"] + final["drops"] == 20


def test_a_failing_post_processing_rejects_its_frames_and_the_daemon_serves_on(
    start_daemon, camera_socket, monkeypatch
) -> None:
    daemon = start_daemon()
    calls = {"n": 0}
    for cascade in daemon.server.replicas.cascades:  # every inference worker's copy of the models

        def finish_failing_once(inferred: Any, real: Any = cascade.finish) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("simulated post-processing fault")
            return real(inferred)

        monkeypatch.setattr(cascade, "finish", finish_failing_once)
    cam = camera_socket(daemon.source)
    cam.send_multipart(frame_parts("cam1", 0, gray_strip()))
    daemon.subscriber.wait_for(lambda ev: per_frame(ev))
    cam.send_multipart(frame_parts("cam1", 1, gray_strip()))
    first, second = per_frame(daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= 2))
    assert first["kind"] == "reject" and "post-processing failed" in first["reason"]
    assert second["kind"] == "result" and second["seq"] == 1


def test_two_workers_publish_each_cameras_results_in_the_order_its_frames_came(
    start_daemon, camera_socket
) -> None:
    daemon = start_daemon(workers=2, threads=1, max_batch=7, queue_size=256)  # 1 strip a batch
    assert daemon.server.workers is not None and daemon.server.workers.count == 2
    slow = gray_strip()
    slow[::7, ::7] = 0  # every tile flagged and segmented: many times a clean strip's work
    cams = {name: camera_socket(daemon.source) for name in ("cam1", "cam2")}
    for seq in range(30):
        for name, sock in cams.items():
            sock.send_multipart(frame_parts(name, seq, slow if seq % 3 == 0 else gray_strip()))
    events = per_frame(daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= 60, 60))
    assert all(e["kind"] == "result" for e in events)
    for name in cams:
        assert [e["seq"] for e in events if e["camera"] == name] == list(range(30))
    assert daemon.server.workers.batch_sizes == {1: 60}
    assert min(daemon.server.workers.taken_by) > 0  # frames waited: the spare worker took some


def test_on_a_quiet_line_the_first_worker_takes_every_batch(start_daemon, camera_socket) -> None:
    """The spare worker sleeps while the first keeps up: one thread wakes per batch."""
    daemon = start_daemon(workers=2, threads=1, max_batch=7, max_wait_ms=1)
    cam = camera_socket(daemon.source)
    for seq in range(12):
        cam.send_multipart(frame_parts("cam1", seq, gray_strip()))
        daemon.subscriber.wait_for(lambda ev, n=seq + 1: len(per_frame(ev)) >= n, 10)
    assert daemon.server.workers is not None
    assert daemon.server.workers.taken_by == [12, 0]


def test_a_drain_that_runs_out_of_time_finishes_the_batches_on_the_models_and_drops_the_rest(
    start_daemon, camera_socket, monkeypatch
) -> None:
    daemon = start_daemon(workers=2, threads=1, max_batch=7, queue_size=64, drain_timeout_s=0.3)
    release = hold_models(daemon, monkeypatch)
    cam = camera_socket(daemon.source)
    for seq in range(10):
        cam.send_multipart(frame_parts("cam1", seq, gray_strip()))
    deadline = time.monotonic() + 10
    workers = daemon.server.workers
    while daemon.server.ledger.snapshot().get("cam1", {}).get("received", 0) < 10 or (
        workers is not None and workers.batches < 2
    ):
        assert time.monotonic() < deadline, "frames never arrived on both workers"
        time.sleep(0.01)
    stopping = threading.Thread(target=daemon.stop)
    stopping.start()
    time.sleep(1.0)  # well past drain_timeout_s: the workers are told to stop after this batch
    release.set()
    stopping.join(30)
    daemon.subscriber.pump(1.0)
    events = per_frame(daemon.subscriber.events)
    assert sorted(e["seq"] for e in events) == list(range(10)), "a frame lost or doubled"
    kinds = {e["seq"]: (e["kind"], e.get("reason")) for e in events}
    # One strip a batch: each of the two workers was on one when the drain ran out.
    assert sorted(kinds.values()).count(("result", None)) == 2, kinds
    assert all(k in (("result", None), ("drop", "shutdown")) for k in kinds.values()), kinds


def test_the_daemon_runs_opencv_on_its_own_threads(start_daemon) -> None:
    """OpenCV's pool under the finishing threads only added hand-offs (docs/performance.md)."""
    cv2.setNumThreads(2)
    start_daemon()
    assert cv2.getNumThreads() == 1
