"""Record real strips as a camera sends them, replay the recording through the daemon twice:
the events must be the same both times (same models, same backend), and one per frame."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from edge.daemon.config import shipped_models
from edge.line.camera import FramePublisher, load_strip, replay, run_camera
from edge.line.recording import read_recording, record
from tests.conftest import free_port
from tests.test_server import per_frame

TIMING_FIELDS = ("latency_ms",)


def make_recording(severstal: Path, out: Path) -> int:
    paths = sorted((severstal / "images").iterdir())[:10]
    frames = [load_strip(p) for p in paths]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    recorder = threading.Thread(
        target=record, args=([endpoint], out), kwargs={"frames": len(frames) + 1}
    )
    recorder.start()
    run_camera(
        endpoint, iter(frames), camera="line1", fps=None, encoding="png", wait_subscriber_s=10
    )
    # A broken message in the recording too: replay must reproduce its reject.
    with FramePublisher(endpoint) as camera:
        assert camera.wait_for_subscriber(10)
        camera.send_parts([b"frame/line1", b"\xc1 not msgpack", b""])
    recorder.join(30)
    assert not recorder.is_alive(), "the recorder did not get every frame"
    return len(frames) + 1


def replay_through_daemon(recording: Path, start_daemon: Any) -> list[dict[str, Any]]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # The daemon connects first (ZeroMQ retries until the replayer binds), so the test's
    # subscriber is live before a single frame is sent.
    daemon = start_daemon(
        models=shipped_models(), sources=[endpoint], bind_sources=[], queue_size=64
    )
    sent = replay(recording, endpoint, as_fast_as_possible=True, wait_subscriber_s=10)
    events = daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= sent, 120)
    daemon.stop()
    return [{k: v for k, v in e.items() if k not in TIMING_FIELDS} for e in events]


def test_replaying_a_recording_of_real_strips_is_deterministic(
    severstal: Path, tmp_path: Path, start_daemon: Any
) -> None:
    recording = tmp_path / "line.edgerec"
    count = make_recording(severstal, recording)
    assert len(list(read_recording(recording))) == count == 11
    first = replay_through_daemon(recording, start_daemon)
    second = replay_through_daemon(recording, start_daemon)
    # A reject goes out from the receiver at once, results after inference: their relative
    # order follows timing. Each event's content must not.
    first.sort(key=lambda e: (e["kind"], e["seq"]))
    second.sort(key=lambda e: (e["kind"], e["seq"]))
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        differing = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        assert not differing, f"event {a.get('seq')}: {str(differing)[:3000]}"
    kinds = [e["kind"] for e in first]
    assert kinds.count("result") == 10 and kinds.count("reject") == 1
    assert sorted(e["seq"] for e in first if e["kind"] == "result") == list(range(10))
    assert any(e["defective"] for e in first if e["kind"] == "result")
