"""Reload (SIGHUP, `edge reload`): new models and thresholds swap in without losing a frame; a
broken model on disk is refused and the old one keeps serving."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edge.cli.main import app
from edge.daemon.models import ReloadError, signal_reload
from tests.conftest import gray_strip
from tests.daemon_process import DaemonProcess
from tests.test_metrics import samples, value
from tests.test_server import frame_parts, per_frame
from tests.tiny_models import CLASSES, CLASSIFIER_TOML


def defect_strip() -> Any:
    image = gray_strip()
    image[40:90, 300:420] = 20
    return image


def add_version(repo: Path, role: str, version: int) -> None:
    shutil.copytree(repo / role / "1", repo / role / str(version))


def set_gate(repo: Path, gate: float) -> None:
    classes = "[" + ", ".join(f'"{c}"' for c in CLASSES) + "]"
    text = CLASSIFIER_TOML.format(classes=classes, tile=256).replace("[0.5]", f"[{gate}]")
    (repo / "classifier" / "config.toml").write_text(text)


def break_model(repo: Path, role: str) -> None:
    version = max(int(p.name) for p in (repo / role).iterdir() if p.name.isdigit())
    (repo / role / str(version + 1)).mkdir()
    (repo / role / str(version + 1) / "model.onnx").write_bytes(b"not an onnx model")


@pytest.fixture
def repo(tiny_repo: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_repo, tmp_path / "models"))


def test_reload_swaps_models_and_thresholds_while_frames_flow(
    start_daemon, camera_socket, repo: Path
) -> None:
    daemon = start_daemon(models=repo, queue_size=256, metrics="127.0.0.1:0")
    cam = camera_socket(daemon.source)
    old_ids = daemon.server.replicas.model_ids
    sent = 80

    def send() -> None:
        for seq in range(sent):
            cam.send_multipart(frame_parts("cam1", seq, defect_strip()))
            time.sleep(0.01)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.2)
    add_version(repo, "classifier", 2)
    set_gate(repo, 0.999)  # the tiny classifier scores a dark patch ~0.97: no longer flagged
    assert daemon.server.reload()
    sender.join()
    events = per_frame(daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= sent, 60))
    assert sorted(e["seq"] for e in events) == list(range(sent))
    assert all(e["kind"] == "result" for e in events), [e["kind"] for e in events]
    by_model = [e["model"]["classifier"] for e in events]
    assert by_model[0] == old_ids["classifier"] and ":2:" in by_model[-1]
    switch = by_model.index(by_model[-1])
    assert all(m == by_model[-1] for m in by_model[switch:]), "went back to the old model"
    # The new threshold serves with the new model: flagged before, not after.
    assert all(e["defective"] for e in events[:switch])
    assert not any(e["defective"] for e in events[switch:])
    assert value(samples(daemon), "edge_reloads_total", outcome="ok") == 1


def test_a_broken_model_is_refused_and_the_old_one_keeps_serving(
    start_daemon, camera_socket, repo: Path, capsys
) -> None:
    daemon = start_daemon(models=repo, metrics="127.0.0.1:0")
    before = daemon.server.replicas.model_ids
    break_model(repo, "segmenter")
    assert daemon.server.reload() is False
    assert daemon.server.replicas.model_ids == before
    cam = camera_socket(daemon.source)
    cam.send_multipart(frame_parts("cam1", 0, defect_strip()))
    (event,) = per_frame(daemon.subscriber.wait_for(lambda ev: per_frame(ev)))
    assert event["kind"] == "result" and event["defective"] and event["model"] == before
    assert value(samples(daemon), "edge_reloads_total", outcome="refused") == 1
    captured = capsys.readouterr()
    assert "reload refused" in captured.out + captured.err


def test_keys_bound_to_sockets_keep_their_running_value(start_daemon, repo: Path) -> None:
    daemon = start_daemon(models=repo)
    running = daemon.server.config
    changed = running.model_copy(update={"publish": "tcp://127.0.0.1:1", "queue_size": 3})
    daemon.server._read_config = lambda: changed
    assert daemon.server.reload()
    assert daemon.server.config.publish == running.publish  # needs a restart: kept
    assert daemon.server.config.queue_size == 3  # applied
    assert daemon.server._queue.capacity == 3


def test_sighup_through_edge_reload_on_a_real_process(repo: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "edge.pid"
    with DaemonProcess(repo, "--queue-size", "256", "--pid-file", str(pid_file)) as daemon:
        deadline = time.monotonic() + 60
        while not pid_file.exists():
            assert daemon.poll() is None, daemon.stderr
            assert time.monotonic() < deadline, "no pid file"
            time.sleep(0.05)
        assert int(pid_file.read_text()) == daemon.pid
        listener = daemon.listener().start(first_within_s=10)
        events = listener.events
        cam = daemon.camera()

        def pump(until: int, timeout_s: float = 60) -> None:
            listener.wait_for(lambda: len(per_frame(events)) >= until, timeout_s)

        sent = 0
        for reload_step in ("new model", "broken model"):
            if reload_step == "new model":
                add_version(repo, "classifier", 2)
            else:
                break_model(repo, "classifier")
            for _ in range(15):
                cam.send_multipart(frame_parts("cam1", sent, gray_strip()))
                sent += 1
            result = CliRunner().invoke(app, ["reload", "--pid-file", str(pid_file)])
            assert result.exit_code == 0, result.output
            for _ in range(15):  # frames in flight while the daemon reloads
                cam.send_multipart(frame_parts("cam1", sent, gray_strip()))
                sent += 1
                time.sleep(0.01)
            pump(sent)
            time.sleep(1.0)  # the reload itself finishes (or is refused) meanwhile
        for _ in range(5):  # served after the refused reload: by version 2
            cam.send_multipart(frame_parts("cam1", sent, gray_strip()))
            sent += 1
        pump(sent)
        daemon.terminate()
        daemon.wait(60)
    stderr = daemon.stderr
    assert daemon.returncode == 0, stderr
    frames = per_frame(events)
    assert sorted(e["seq"] for e in frames) == list(range(sent))
    assert all(e["kind"] == "result" for e in frames)
    assert ":2:" in frames[-1]["model"]["classifier"]
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [line["event"] for line in lines]
    assert "reloaded" in messages
    refused = [line for line in lines if line["event"].startswith("reload refused")]
    assert len(refused) == 1 and "classifier" in refused[0]["error"]
    assert not pid_file.exists(), "the pid file outlived the daemon"


def test_edge_reload_explains_a_missing_or_stale_pid_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pid"
    with pytest.raises(ReloadError, match="is the daemon running with --pid-file"):
        signal_reload(missing)
    garbage = tmp_path / "garbage.pid"
    garbage.write_text("hello")
    with pytest.raises(ReloadError, match="does not hold a pid"):
        signal_reload(garbage)
    result = CliRunner().invoke(app, ["reload", "--pid-file", str(missing)])
    assert result.exit_code == 1 and "no pid file" in result.output


def test_edge_reload_never_signals_a_process_that_is_not_edge(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        pid_file = tmp_path / "edge.pid"
        pid_file.write_text(f"{other.pid}\n")
        with pytest.raises(ReloadError, match="not an edge daemon"):
            signal_reload(pid_file)
        time.sleep(0.2)
        assert other.poll() is None, "a SIGHUP reached a process that is not edge"
    finally:
        other.kill()
        other.wait()
    pid_file.write_text(f"{other.pid}\n")  # reaped: no such process any more
    with pytest.raises(ReloadError, match="no process"):
        signal_reload(pid_file)
