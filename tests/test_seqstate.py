"""Each camera's last seq kept across restarts: a crash loses no frame silently."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import zmq

from edge.daemon import seqstate
from edge.daemon.ledger import Ledger
from tests.conftest import gray_strip
from tests.daemon_process import DaemonProcess, Listener, camera
from tests.test_server import frame_parts


def test_a_saved_state_loads_back(tmp_path: Path) -> None:
    path = seqstate.state_file(tmp_path / "state")
    seqstate.save(path, {"cam1": 41, "cam2": -1})
    assert seqstate.load(path, max_cameras=64) == {"cam1": 41, "cam2": -1}
    assert list(path.parent.iterdir()) == [path]  # no temporary file left beside it


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        json.dumps({"format": "something else", "v": 1, "cameras": {}}).encode(),
        json.dumps({"format": seqstate.FORMAT, "v": 99, "cameras": {"a": 1}}).encode(),
    ],
)
def test_a_corrupt_state_is_logged_and_ignored(tmp_path: Path, content: bytes, capsys) -> None:
    path = tmp_path / seqstate.FILE_NAME
    path.write_bytes(content)
    assert seqstate.load(path, max_cameras=64) == {}
    captured = capsys.readouterr()
    assert "ignored" in captured.out + captured.err


def test_entries_that_are_not_a_camera_and_a_seq_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / seqstate.FILE_NAME
    cameras = {"ok": 3, "neg": -5, "float": 1.5, "bool": True, **{f"c{i}": i for i in range(9)}}
    path.write_text(json.dumps({"format": seqstate.FORMAT, "v": 1, "cameras": cameras}))
    loaded = seqstate.load(path, max_cameras=4)
    assert loaded == {"ok": 3, "c0": 0, "c1": 1, "c2": 2}


def test_a_missing_state_is_a_first_start(tmp_path: Path) -> None:
    assert seqstate.load(tmp_path / "nothing" / seqstate.FILE_NAME, max_cameras=64) == {}


def test_the_settled_seq_stops_before_the_oldest_frame_still_waiting_for_its_event() -> None:
    ledger = Ledger()
    for seq in range(5):
        ledger.observe_seq("cam1", seq)
    assert ledger.settled_seqs() == {"cam1": -1}  # nothing published yet
    for seq in (0, 1, 3):
        ledger.settle("cam1", seq)
    assert ledger.settled_seqs() == {"cam1": 1}  # 2 still waits
    ledger.settle("cam1", 2)
    ledger.settle("cam1", 4)
    assert ledger.settled_seqs() == {"cam1": 4}


def test_a_restored_baseline_reports_the_frames_between_as_a_gap_across_the_restart() -> None:
    ledger = Ledger(last_seqs={"cam1": 9, "cam2": 4})
    (gap,) = ledger.observe_seq("cam1", 15)
    assert (gap["first_seq"], gap["last_seq"], gap["across_restart"]) == (10, 14, True)
    assert ledger.observe_seq("cam2", 5) == []  # nothing missed
    (later,) = ledger.observe_seq("cam1", 17)
    assert "across_restart" not in later  # only the first gap spans the restart
    (restart,) = ledger.observe_seq("cam2", 0)  # the camera restarted meanwhile
    assert restart["kind"] == "camera_restart"


def test_an_unwritable_state_dir_is_logged_once_and_the_daemon_goes_on(
    tmp_path: Path, capsys
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    writer = seqstate.StateWriter(blocker / "state" / seqstate.FILE_NAME)
    writer.write({"cam1": 1})
    writer.write({"cam1": 2})
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("cannot write camera state") == 1


class Line:
    """A camera that streams at a steady rate, and a subscriber, across daemon restarts.

    The camera connects to the daemon's --bind-source; like any connecting ZeroMQ socket it
    queues what it sends while the daemon is away and delivers it once a daemon is back. What
    the killed daemon had received but not answered (its socket buffers, its queue) dies with
    it: ``burst`` makes sure there is some.
    """

    def __init__(self, source: str, publish: str) -> None:
        # Its own context: the camera and the subscriber outlive each daemon process.
        self.context = zmq.Context()
        # Connected before any daemon is up: the sender waits for the subscription itself.
        self.cam = camera(self.context, source, wait_s=None)
        self.listener = Listener(self.context, publish)
        self.events = self.listener.events
        self.heard = self.listener.heard  # the subscriber heard a daemon (a status)
        self.seq = 0
        self.burst = threading.Event()
        self.burst_sent = threading.Event()
        self.stop_sending = threading.Event()
        self._sender = threading.Thread(target=self._send)

    def start(self) -> None:
        self.listener.start()
        self._sender.start()

    def answered(self) -> set[int]:
        return {e["seq"] for e in self.events if e["kind"] in ("result", "reject", "drop")}

    def _send(self) -> None:
        strip = gray_strip()
        # The first frame a daemon ever sees starts its count: begin once one listens.
        if self.cam.poll(30000) and self.cam.recv()[:1] == b"\x01":
            self.heard.wait(30)
        while not self.stop_sending.is_set():
            count = 60 if self.burst.is_set() else 1
            for _ in range(count):
                self.cam.send_multipart(frame_parts("cam1", self.seq, strip))
                self.seq += 1
            if count > 1:
                self.burst.clear()
                self.burst_sent.set()
            time.sleep(0.02)

    def close(self) -> None:
        self.stop_sending.set()
        if self._sender.is_alive():
            self._sender.join(10)
        self.listener.close()
        self.cam.close(0)
        self.context.term()


@pytest.mark.slow
def test_frames_lost_to_a_sigkill_are_reported_as_a_gap_after_the_restart(
    tiny_repo: Path, tmp_path: Path
) -> None:
    flags = ("--state-dir", str(tmp_path / "state"), "--log-level", "warning")
    daemon = DaemonProcess(tiny_repo, *flags, log=tmp_path / "daemon.log")
    line = Line(daemon.source, daemon.publish)
    try:
        with daemon:
            line.start()
            deadline = time.monotonic() + 60
            while len(line.events) < 40:
                assert time.monotonic() < deadline and daemon.poll() is None, "no events"
                time.sleep(0.02)
            line.burst.set()
            assert line.burst_sent.wait(10)
            time.sleep(0.05)  # on the daemon's side of the wire now
            daemon.kill()  # SIGKILL, as the OOM killer or a watchdog would
            daemon.wait(10)
            killed_at = line.seq
            line.heard.clear()  # what is heard from now on is the restarted daemon
            time.sleep(1.0)  # systemd's RestartSec: the camera streams on meanwhile
            daemon.start()  # the same ports, state dir and log
            deadline = time.monotonic() + 60
            while line.seq < killed_at + 100 or not line.heard.is_set():
                assert time.monotonic() < deadline and daemon.poll() is None, "no restart"
                time.sleep(0.02)
            line.stop_sending.set()
            while max(line.answered(), default=-1) < line.seq - 1:  # the last frame's event
                assert time.monotonic() < deadline, "the restarted daemon left frames unanswered"
                time.sleep(0.02)
            daemon.terminate()
            assert daemon.wait(30) == 0
            time.sleep(0.3)
    finally:
        line.close()
    sent = line.seq
    answered = line.answered()
    gaps = [e for e in line.events if e["kind"] == "gap"]
    in_gaps = {seq for g in gaps for seq in range(g["first_seq"], g["last_seq"] + 1)}
    lost = sorted(set(range(sent)) - answered - in_gaps)
    log = (tmp_path / "daemon.log").read_text()
    assert lost == [], f"seqs with neither an event nor a gap: {lost}; gaps {gaps}; log {log}"
    assert any(g.get("across_restart") for g in gaps), gaps
    # The state a clean stop leaves is exact: the last seq answered.
    kept = json.loads((tmp_path / "state" / seqstate.FILE_NAME).read_text())["cameras"]
    assert kept == {"cam1": max(answered)}
