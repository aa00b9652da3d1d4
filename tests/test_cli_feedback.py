"""What the line commands say while they wait or work, run as a user types them (issue 19).

Feedback goes to stderr; stdout keeps only what scripts parse (events, tables, thresholds).
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import zmq

from edge.cli.progress import Progress
from edge.line.camera import run_camera
from edge.line.listen import listen
from edge.protocol.messages import VERSION, pack, status_topic
from tests.conftest import free_port, gray_strip

EDGE = [sys.executable, "-m", "edge.cli.main"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


class Lines:
    """A child's stderr read line by line in a thread, each line with when it came."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.queue: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[tuple[float, str]] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: io.TextIOBase) -> None:
        for line in stream:
            self.queue.put((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, text: str, timeout_s: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            for at, line in self.seen:
                if text in line:
                    return at, line
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {text!r} in {timeout_s}s; got {self.seen}")
            with contextlib.suppress(queue.Empty):
                self.seen.append(self.queue.get(timeout=left))

    def rest(self) -> list[str]:
        while not self.queue.empty():
            self.seen.append(self.queue.get())
        return [line for _, line in self.seen]


def test_listen_without_a_daemon_says_what_it_listens_to_then_warns() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [*EDGE, "listen", "--source", endpoint, "--json", "--quiet-warn-s", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        err = Lines(proc.stderr)
        _, first = err.wait_for("listening to", 15)
        assert first == f"listening to {endpoint} for event/*, status/*"
        started, _ = err.wait_for("listening to", 0)
        at, warning = err.wait_for("no message from", 6)
        assert warning == (
            f"no message from {endpoint} for 1 s: is the daemon running, "
            "and is this its --publish endpoint?"
        )
        assert 0.8 <= at - started < 4
        time.sleep(1.5)  # once per silence: no second warning while it lasts
        assert sum("no message from" in line for line in err.rest()) == 1
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert out == ""  # stdout carries events only


def test_listen_warns_again_only_after_messages_came_and_stopped() -> None:
    context = zmq.Context.instance()
    pub = context.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    warnings: list[float] = []
    shown: list[str] = []
    stop = threading.Event()
    listener = threading.Thread(
        target=listen,
        args=(f"tcp://127.0.0.1:{port}", lambda topic, body: shown.append(topic)),
        kwargs={"status": False, "stop": stop, "quiet_warn_s": 0.5, "on_quiet": warnings.append},
    )
    listener.start()
    try:
        # Without --status the status topic is still heard (not shown): it proves a daemon.
        subscribed = set()
        while len(subscribed) < 2 and pub.poll(5000):
            subscribed.add(pub.recv())
        assert subscribed == {b"\x01event/", b"\x01status/"}
        deadline = time.monotonic() + 5
        while not warnings:
            assert time.monotonic() < deadline, "no warning for the first silence"
            time.sleep(0.05)
        for _ in range(8):  # messages for 0.8 s: longer than the warning time, but no silence
            pub.send_multipart([status_topic("d1"), pack({"v": VERSION, "kind": "status"})])
            time.sleep(0.1)
        assert warnings == [0.5]
        deadline = time.monotonic() + 5
        while len(warnings) < 2:
            assert time.monotonic() < deadline, "no warning for the second silence"
            time.sleep(0.05)
        assert warnings == [0.5, 0.5] and shown == []
    finally:
        stop.set()
        listener.join(10)
        pub.close()


def test_camera_says_at_once_what_it_waits_for() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [*EDGE, "camera", "--to", endpoint, "--count", "1", "--wait-subscriber", "3"],
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        err = Lines(proc.stderr)
        at, line = err.wait_for("waiting for a subscriber", 20)
        assert line == f"waiting for a subscriber on {endpoint} (up to 3 s, then sending anyway)"
        gave_up, _ = err.wait_for("no subscriber, publishing anyway", 10)  # kept as it was
        assert gave_up - at >= 2.5  # said before the wait, not after it
        assert proc.wait(30) == 0
        err.wait_for("sent 1 frames", 5)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_record_and_replay_show_progress_and_one_summary(tmp_path: Path) -> None:
    out = tmp_path / "run.edgerec"
    camera_at = f"tcp://127.0.0.1:{free_port()}"
    # The camera binds; the recorder connects, and ZeroMQ retries until the camera is there.
    proc = subprocess.Popen(
        [*EDGE, "record", "--out", str(out), "--source", camera_at, "--frames", "25"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    frames = (gray_strip(i, 32, 64) for i in range(25))
    assert run_camera(camera_at, frames, fps=10, wait_subscriber_s=30) == 25
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    lines = stderr.splitlines()
    progress = [line for line in lines if line.startswith("recording: ")]
    assert progress and progress[0].startswith("recording: 1/25 messages, ")
    assert len(progress) >= 2  # 2.5 s of frames: the first at once, another 2 s later
    assert lines.count(f"recorded 25 messages to {out}") == 1
    assert not [line for line in lines if line.startswith("{")]  # no JSON twin of it
    assert stdout == ""

    publish_at = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [*EDGE, "replay", str(out), "--to", publish_at, "--fps", "10"],
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(publish_at)
    try:
        got = 0
        while got < 25 and sub.poll(20000):
            sub.recv_multipart()
            got += 1
        assert got == 25
        assert proc.wait(30) == 0
    finally:
        sub.close()
        if proc.poll() is None:
            proc.kill()
    lines = proc.stderr.read().splitlines()
    assert any(line.startswith("waiting for a subscriber on ") for line in lines)
    progress = [line for line in lines if line.startswith("replaying: ")]
    assert len(progress) >= 2 and progress[0].startswith("replaying: 1/25 messages, ")
    assert lines.count("replayed 25 messages") == 1


def test_eval_and_tune_show_progress(tiny_repo: Path) -> None:
    tune = subprocess.run(
        [*EDGE, "tune", "--models", str(tiny_repo), "--synthetic", "3", "--dry-run"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert tune.returncode == 0, tune.stderr
    assert "running the models: 1/3 images, " in tune.stderr
    # The sweep is the slow part (10 of 12 s on 25 images): it shows progress too.
    assert re.search(r"^choosing thresholds: \d+/12 \(class, image\) pairs, ", tune.stderr, re.M)
    assert "class 1: gate " in tune.stdout and "running the models" not in tune.stdout
    evaluation = subprocess.run(
        [*EDGE, "eval", "--models", str(tiny_repo), "--synthetic", "2"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert evaluation.returncode == 0, evaluation.stderr
    assert "evaluating: 1/2 images, " in evaluation.stderr
    assert "2 images" in evaluation.stdout


def test_plain_progress_lines_are_spaced() -> None:
    stream = io.StringIO()  # not a terminal: plain lines
    with Progress("working", 100, "items", every_s=60, stream=stream) as progress:
        for done in range(1, 101):
            progress.update(done)
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[0]]
    assert stream.getvalue().startswith("working: 1/100 items, ")
