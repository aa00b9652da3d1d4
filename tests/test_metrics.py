"""Prometheus metrics and health endpoints, scraped over real HTTP from a running daemon."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.daemon.config import ConfigError, load_config
from edge.daemon.ledger import OVERFLOW
from edge.daemon.metrics import MAX_CAMERA_LABELS, REJECT_CATEGORIES, Metrics, reject_category
from tests.conftest import gray_strip, hold_models
from tests.test_server import frame_parts, per_frame


def get(daemon: Any, path: str) -> tuple[int, str]:
    host, port = daemon.server.health.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def samples(daemon: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(daemon, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_histograms_and_backend_after_real_traffic(start_daemon, camera_socket) -> None:
    daemon = start_daemon(metrics="127.0.0.1:0")
    cam = camera_socket(daemon.source)
    for seq in (0, 1, 2, 5):  # 3 and 4 never sent: a gap of 2
        cam.send_multipart(frame_parts("cam1", seq, gray_strip()))
    good = frame_parts("cam2", 0, gray_strip())
    cam.send_multipart([good[0], b"\xc1", good[2]])  # header not msgpack
    cam.send_multipart([good[0], good[1], b"\xff\xd8 not a jpeg"])  # raw size mismatch
    daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= 6)
    found = samples(daemon)
    assert value(found, "edge_frames_received_total", camera="cam1") == 4
    assert value(found, "edge_results_total", camera="cam1") == 4
    assert value(found, "edge_missing_frames_total", camera="cam1") == 2
    assert value(found, "edge_frames_received_total", camera="cam2") == 2
    assert value(found, "edge_rejects_total", camera="cam2", reason="protocol") == 2
    assert value(found, "edge_batch_strips_count") >= 1
    assert value(found, "edge_batch_strips_sum") == 4
    for stage in ("decode", "infer", "postprocess", "end_to_end"):
        assert value(found, "edge_stage_seconds_count", stage=stage) >= 1, stage
    assert value(found, "edge_stage_seconds_count", stage="end_to_end") == 4
    assert ("edge_queue_depth", ()) in found
    assert value(found, "edge_ready") == 1
    backend = [k for k in found if k[0] == "edge_backend_info"]
    assert backend and dict(backend[0][1])["backend"] == "onnxruntime"
    assert "classifier" in dict(backend[0][1])


def test_defects_are_counted_per_class_and_the_process_is_described(
    start_daemon, camera_socket
) -> None:
    daemon = start_daemon(metrics="127.0.0.1:0")
    cam = camera_socket(daemon.source)
    strip = gray_strip()
    strip[10:30, 100:150] = 20  # very dark: the tiny segmenter's classes dark and very_dark
    cam.send_multipart(frame_parts("cam1", 0, strip))
    cam.send_multipart(frame_parts("cam1", 1, gray_strip()))
    daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= 2)
    found = samples(daemon)
    assert value(found, "edge_results_total", camera="cam1") == 2
    for name in ("dark", "very_dark"):
        assert value(found, "edge_defects_total", camera="cam1", defect_class=name) == 1
        assert (
            value(found, "edge_defect_area_pixels_total", camera="cam1", defect_class=name) == 1000
        )
    assert value(found, "edge_defects_total", camera="cam1", defect_class="bright") == 0
    assert value(found, "process_resident_memory_bytes") > 10e6
    assert value(found, "process_cpu_seconds_total") > 0


def test_drops_are_counted_by_reason(start_daemon, camera_socket) -> None:
    daemon = start_daemon(metrics="127.0.0.1:0", queue_size=1, max_batch=7)
    cam = camera_socket(daemon.source)
    busy = gray_strip()
    busy[::7, ::7] = 0
    for seq in range(30):
        cam.send_multipart(frame_parts("cam1", seq, busy))
    events = per_frame(daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= 30, 120))
    drops = sum(e["kind"] == "drop" for e in events)
    assert drops > 0
    found = samples(daemon)
    assert value(found, "edge_drops_total", camera="cam1", reason="overload") == drops
    assert value(found, "edge_results_total", camera="cam1") == 30 - drops


def test_health_and_readiness_follow_the_inference_loop(
    start_daemon, camera_socket, monkeypatch
) -> None:
    daemon = start_daemon(metrics="127.0.0.1:0", stall_timeout_s=0.5)
    assert get(daemon, "/healthz") == (200, "ok\n")
    assert get(daemon, "/readyz") == (200, "ready\n")
    assert get(daemon, "/nothing-here")[0] == 404

    release = hold_models(daemon, monkeypatch)
    camera_socket(daemon.source).send_multipart(frame_parts("cam1", 0, gray_strip()))
    deadline = time.monotonic() + 10
    while get(daemon, "/readyz")[0] == 200:
        assert time.monotonic() < deadline, "a stuck inference loop never made /readyz fail"
        time.sleep(0.1)
    status, body = get(daemon, "/readyz")
    assert status == 503 and "inference loop stalled" in body
    assert get(daemon, "/healthz")[0] == 200  # alive, just not ready
    assert value(samples(daemon), "edge_ready") == 0
    release.set()
    daemon.subscriber.wait_for(lambda ev: per_frame(ev))
    deadline = time.monotonic() + 10
    while get(daemon, "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "/readyz did not recover"
        time.sleep(0.1)


def test_two_daemons_in_one_process_keep_their_own_metrics(start_daemon, camera_socket) -> None:
    first = start_daemon(metrics="127.0.0.1:0")
    second = start_daemon(metrics="127.0.0.1:0")
    camera_socket(first.source).send_multipart(frame_parts("cam1", 0, gray_strip()))
    first.subscriber.wait_for(lambda ev: per_frame(ev))
    assert value(samples(first), "edge_results_total", camera="cam1") == 1
    assert value(samples(second), "edge_results_total", camera="cam1") == 0


def test_metrics_endpoint_is_closed_at_shutdown(start_daemon) -> None:
    daemon = start_daemon(metrics="127.0.0.1:0")
    host, port = daemon.server.health.address
    daemon.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2)


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("undecodable jpeg image (12 bytes)", "decode"),
        ("decoded png image has shape [1, 2] but the header says [3, 4]", "decode"),
        ("inference failed on a [256, 1600] frame", "inference"),
        ("post-processing failed on a [256, 1600] frame", "postprocess"),
        ("payload size mismatch: shape [2, 3] uint8 needs 6 bytes, got 5", "protocol"),
    ],
)
def test_reject_reasons_map_to_few_labels(reason: str, category: str) -> None:
    assert reject_category(reason) == category


def test_a_cameras_counters_are_exported_at_zero_from_its_first_frame() -> None:
    metrics = Metrics(queue_depth=lambda: 0, progress_age_s=lambda: 0.0)
    metrics.frame_received("cam1")
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in metrics.registry.collect()
        for s in f.samples
        if s.name.endswith("_total")
    }
    expected = {("edge_missing_frames_total", (("camera", "cam1"),)): 0.0}
    expected |= {("edge_results_total", (("camera", "cam1"),)): 0.0}
    expected |= {("edge_frames_received_total", (("camera", "cam1"),)): 1.0}
    expected |= {("edge_reloads_total", (("outcome", o),)): 0.0 for o in ("ok", "refused")}
    expected |= {
        ("edge_drops_total", (("camera", "cam1"), ("reason", r))): 0.0
        for r in ("overload", "deadline", "shutdown")
    }
    expected |= {
        ("edge_rejects_total", (("camera", "cam1"), ("reason", c))): 0.0
        for c in ("protocol", "decode", "limit", "inference", "postprocess")
    }
    assert {k: v for k, v in found.items() if k[0].startswith("edge_")} == expected
    # Every category reject_category can give is one of those exported.
    reasons = ["undecodable jpeg image", "inference failed", "post-processing failed",
               "frame height 9 is over", "header is not valid msgpack"]  # fmt: skip
    assert {reject_category(r) for r in reasons} == set(REJECT_CATEGORIES)


def test_camera_labels_are_bounded() -> None:
    metrics = Metrics(queue_depth=lambda: 0, progress_age_s=lambda: 0.0)
    for n in range(MAX_CAMERA_LABELS + 10):
        metrics.frame_received(f"forged-{n}")
    cameras = {
        s.labels["camera"]
        for f in metrics.registry.collect()
        if f.name == "edge_frames_received"
        for s in f.samples
        if s.name.endswith("_total")
    }
    assert len(cameras) == MAX_CAMERA_LABELS + 1 and OVERFLOW in cameras


@pytest.mark.parametrize("bad", ["9100", "localhost", "host:port", ":9100", "127.0.0.1:70000"])
def test_metrics_address_must_be_host_port(bad: str) -> None:
    with pytest.raises(ConfigError, match="metrics"):
        load_config(None, sources=["tcp://127.0.0.1:1"], metrics=bad)


@pytest.mark.parametrize("which", ["--publish", "--metrics"])
def test_a_port_in_use_is_named_and_the_daemon_exits(tiny_repo, which: str) -> None:
    # Once hung for good in Context.term() when the publish port was taken.
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = {"--publish": "tcp://127.0.0.1:*", "--metrics": "127.0.0.1:0"}
        args[which] = f"tcp://127.0.0.1:{port}" if which == "--publish" else f"127.0.0.1:{port}"
        run = subprocess.run(
            [sys.executable, "-m", "edge.cli.main", "run", "--bind-source", "tcp://127.0.0.1:*",
             "--models", str(tiny_repo), "--threads", "1",
             *(x for pair in args.items() for x in pair)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert run.returncode == 1, run.stderr[-2000:]
    step = "cannot bind the publish socket" if which == "--publish" else "metrics on 127.0.0.1:"
    assert step in run.stderr and "Address already in use" in run.stderr
    assert str(port) in run.stderr
