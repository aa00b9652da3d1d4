"""The `edge` command as a user runs it: real processes, real signals, real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from typer.testing import CliRunner

from edge.cli.main import app
from edge.protocol import parse_event
from tests.conftest import free_port, gray_strip
from tests.test_server import frame_parts

COMMANDS = ["run", "demo", "camera", "record", "replay", "listen"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], prog_name="edge")
    assert result.exit_code == 0
    assert "Usage: edge " + command in result.output


def test_bad_flag_value_names_the_key() -> None:
    result = CliRunner().invoke(app, ["run", "--source", "tcp://127.0.0.1:1", "--max-batch", "0"])
    assert result.exit_code == 2
    assert "max_batch: Input should be greater than 0" in result.output


def test_broken_model_repository_is_named(tmp_path: Path) -> None:
    (tmp_path / "classifier" / "1").mkdir(parents=True)
    (tmp_path / "classifier" / "config.toml").write_text('role = "classifier"\nclasses = ["a"]\n')
    (tmp_path / "classifier" / "1" / "model.onnx").write_bytes(b"not onnx")
    result = CliRunner().invoke(
        app, ["run", "--source", "tcp://127.0.0.1:1", "--models", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "has no segmenter" in result.output


def test_sigterm_drains_every_received_frame_and_exits_zero(
    tiny_repo: Path, tmp_path: Path
) -> None:
    source, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "edge.toml"
    # Statuses often: the signal must come while frames are still being worked on.
    config.write_text("status_interval_s = 0.05\n")
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.cli.main",
            "run",
            "--config",
            str(config),
            "--bind-source",
            source,
            "--publish",
            publish,
            "--models",
            str(tiny_repo),
            "--queue-size",
            "64",
            "--threads",
            "1",
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    context = zmq.Context()
    try:
        for line in daemon.stderr:
            if json.loads(line)["event"] == "daemon ready":
                break
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(publish)
        cam = context.socket(zmq.XPUB)
        cam.connect(source)
        assert cam.poll(10000) and cam.recv()  # the daemon's subscription arrived
        busy = gray_strip()
        busy[::9, ::9] = 0  # every tile goes through both models: the drain has work to do
        assert sub.poll(10000), "no status from the daemon"
        for seq in range(30):
            cam.send_multipart(frame_parts("cam1", seq, busy))
        seqs: list[int] = []

        def take() -> dict:
            _topic, body = parse_event(sub.recv_multipart())
            if body["kind"] in ("result", "drop", "reject"):
                seqs.append(body["seq"])
            return body

        received = 0
        while received < 30:  # wait until the daemon has them all, then signal at once
            body = take()
            if body["kind"] == "status":
                received = body["cameras"].get("cam1", {}).get("received", 0)
        daemon.send_signal(signal.SIGTERM)
        unfinished = 30 - len(seqs)
        deadline = time.monotonic() + 60
        while daemon.poll() is None or sub.poll(500):
            assert time.monotonic() < deadline, "daemon did not exit"
            if sub.poll(100):
                take()
        assert daemon.wait(30) == 0
        assert sorted(seqs) == list(range(30))
        assert unfinished > 0, "the signal came after all work was done: nothing was drained"
    finally:
        if daemon.poll() is None:
            daemon.kill()
        context.destroy(linger=0)


def test_camera_daemon_and_listener_as_separate_processes(tiny_repo: Path, severstal: Path) -> None:
    """The README's workflow: `edge run`, `edge listen --json`, `edge camera --images`."""
    cam, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    edge = [sys.executable, "-m", "edge.cli.main"]
    daemon = subprocess.Popen(
        [
            *edge,
            "run",
            "--source",
            cam,
            "--publish",
            publish,
            "--models",
            str(tiny_repo),
            "--threads",
            "1",
        ],
        stderr=subprocess.DEVNULL,
    )
    listener = subprocess.Popen(
        [*edge, "listen", "--source", publish, "--json", "--count", "5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # The first status line proves the listener is subscribed: no event can be missed.
        assert json.loads(listener.stdout.readline())["kind"] == "status"
        camera = subprocess.run(
            [
                *edge,
                "camera",
                "--to",
                cam,
                "--images",
                str(severstal / "images"),
                "--count",
                "5",
                "--fps",
                "10",
                "--encoding",
                "png",
                "--camera-id",
                "line1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert camera.returncode == 0, camera.stderr
        assert "sent 5 frames" in camera.stderr
        out, _ = listener.communicate(timeout=60)
        # status/ messages: the periodic status, and the camera's endpoint lost when it exits
        about_daemon = ("status", "source_lost", "source_restored")
        events = [e for e in map(json.loads, out.splitlines()) if e["kind"] not in about_daemon]
        assert [(e["kind"], e["camera"], e["seq"]) for e in events] == [
            ("result", "line1", i) for i in range(5)
        ]
    finally:
        for proc in (listener, daemon):
            if proc.poll() is None:
                proc.terminate()
        assert daemon.wait(30) == 0


def test_demo_runs_and_accounts_for_every_frame() -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "edge.cli.main", "demo", "--duration", "3", "--fps", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr
    summary = " ".join(demo.stdout.split())  # Rich wraps lines at the terminal width
    received, accounted = map(
        int, re.search(r"(\d+) frames received, (\d+) accounted", summary).groups()
    )
    assert received > 0 and received == accounted
    # A newcomer's first run: nothing to worry about on a healthy simulated line.
    assert '"level": "warning"' not in demo.stderr and '"level": "error"' not in demo.stderr
