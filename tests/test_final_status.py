"""The final status, on a real daemon process stopped (SIGTERM) under a 10x overload: it is the
last message a subscriber gets, nothing per-frame follows it, and its counters balance and match
the per-frame events the subscriber got (docs/protocol.md: once the daemon has drained,
received = results + rejects + drops)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import zmq

from edge.protocol import STATUS_TOPIC_PREFIX, parse_event
from tests.conftest import gray_strip
from tests.daemon_process import DaemonProcess
from tests.test_server import frame_parts, per_frame

CAMERAS = ("cam1", "cam2")
PER_FRAME = ("result", "reject", "drop")


def overload_and_stop(
    tiny_repo: Path, *, workers: int, sigterm_while_flooding: bool, flood_s: float
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, int], float, int, str]:
    """Flood a daemon process from two cameras, SIGTERM it, and return every message a
    subscriber got (in order), what each camera sent, the flood's length, and how it exited."""
    # Frequent periodic statuses: one is likely to be taken while the drain is under way.
    config = "rcvhwm = 50\nstatus_interval_s = 0.1\n"
    flags = ("--workers", str(workers), "--queue-size", "16", "--log-level", "warning")
    busy = gray_strip()
    busy[::7, ::7] = 0  # every tile is flagged and segmented: the slowest path
    with DaemonProcess(tiny_repo, *flags, config=config) as daemon:
        listener = daemon.listener().start(first_within_s=60)  # its first status: subscribed
        cams = {name: daemon.camera(SNDHWM=100) for name in CAMERAS}
        sent = dict.fromkeys(cams, 0)
        stop_flood = threading.Event()
        flood_time: list[float] = []

        def flood() -> None:
            start = time.monotonic()
            while not stop_flood.is_set():
                for name, sock in cams.items():
                    try:
                        sock.send_multipart(frame_parts(name, sent[name], busy), zmq.NOBLOCK)
                    except zmq.Again:
                        continue  # our own buffer is full: not sent, so not counted
                    sent[name] += 1
            flood_time.append(time.monotonic() - start)

        flooder = threading.Thread(target=flood)
        try:
            flooder.start()
            time.sleep(flood_s)
            if not sigterm_while_flooding:
                stop_flood.set()
                flooder.join()
            daemon.terminate()
            daemon.wait(60)
        finally:
            stop_flood.set()
            if flooder.is_alive():
                flooder.join()
        listener.until_quiet_after_exit()
    return listener.messages, sent, flood_time[0], daemon.returncode, daemon.stderr


def check_final_status(
    messages: list[tuple[str, dict[str, Any]]], sent: dict[str, int], elapsed: float
) -> None:
    kinds = [body["kind"] for _, body in messages]
    statuses = [i for i, (topic, _) in enumerate(messages) if topic.startswith(STATUS_TOPIC_PREFIX)]
    per_frame = [i for i, kind in enumerate(kinds) if kind in PER_FRAME]
    assert statuses and per_frame
    last = statuses[-1]
    # (a) the last message a subscriber gets is a status, and (b) nothing per-frame follows it.
    assert last == len(messages) - 1, (
        f"the last message is a {kinds[-1]!r}, not a status; {len(messages) - 1 - last} "
        f"messages ({Counter(kinds[last + 1 :])}) came after the last status"
    )
    final = messages[last][1]["cameras"]
    seen: dict[str, Counter[str]] = {name: Counter() for name in CAMERAS}
    for _, body in messages:
        if body["kind"] in PER_FRAME:
            seen[body["camera"]][body["kind"]] += 1
    served = sum(final[name]["results"] for name in CAMERAS) / elapsed
    offered = sum(sent.values()) / elapsed
    print(f"offered {offered:.0f} strips/s, served {served:.1f} strips/s; final status {final}")
    assert offered >= 10 * served, "the test did not overload the daemon 10x"
    for name in CAMERAS:
        counts = final[name]
        # (c) it balances.
        assert counts["received"] == counts["results"] + counts["rejects"] + counts["drops"], (
            f"{name}: final status {counts} does not balance; events seen {dict(seen[name])}"
        )
        assert counts["drops"] > 0
        # (d) it counts exactly the per-frame events published.
        assert (counts["results"], counts["rejects"], counts["drops"]) == (
            seen[name]["result"],
            seen[name]["reject"],
            seen[name]["drop"],
        ), f"{name}: final status {counts}, events seen {dict(seen[name])}"
        assert counts["received"] + counts["missing"] <= sent[name]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("workers", "sigterm_while_flooding", "flood_s"),
    [
        (1, True, 1.5),
        (1, True, 0.7),
        (1, False, 1.0),
        (2, True, 1.5),
        (2, False, 1.0),
    ],
    ids=["1-worker-during", "1-worker-during-short", "1-worker-after", "2-workers-during",
         "2-workers-after"],
)  # fmt: skip
def test_final_status_is_last_and_balances_after_overload_and_sigterm(
    tiny_repo: Path, workers: int, sigterm_while_flooding: bool, flood_s: float
) -> None:
    messages, sent, elapsed, returncode, stderr = overload_and_stop(
        tiny_repo, workers=workers, sigterm_while_flooding=sigterm_while_flooding, flood_s=flood_s
    )
    assert returncode == 0, stderr[-2000:]
    check_final_status(messages, sent, elapsed)


def test_the_final_status_is_marked_so_a_subscriber_can_tell_it_from_a_periodic_one(
    start_daemon, camera_socket
) -> None:
    # A subscriber cannot know that the last status it got is the final one: if it stopped
    # reading too soon, or ZeroMQ dropped the final status (past sndhwm, or when the 2 s linger
    # at close ran out; it is the last message, so the first to go), its last status is a
    # periodic one, taken while frames were still queued or in flight, which does not balance.
    # The final one says so, and only it.
    daemon = start_daemon(queue_size=4)
    cam = camera_socket(daemon.source)
    sent = 200  # a burst the queue cannot hold: drop-oldest sheds most of it
    for seq in range(sent):
        cam.send_multipart(frame_parts("cam1", seq, gray_strip()))
    deadline = time.monotonic() + 20
    while daemon.server.ledger.snapshot().get("cam1", {}).get("received", 0) < sent:
        assert time.monotonic() < deadline, "frames never arrived"
        time.sleep(0.01)
    daemon.stop()
    messages = []
    while daemon.subscriber.socket.poll(1000):
        messages.append(parse_event(daemon.subscriber.socket.recv_multipart()))
    statuses = [body for topic, body in messages if topic.startswith(STATUS_TOPIC_PREFIX)]
    assert [s.get("final") for s in statuses[:-1]] == [False] * (len(statuses) - 1)
    topic, last = messages[-1]
    assert topic.startswith(STATUS_TOPIC_PREFIX) and last["final"] is True
    counts = last["cameras"]["cam1"]
    events = per_frame(daemon.subscriber.events + [body for _, body in messages])
    assert counts["received"] == counts["results"] + counts["rejects"] + counts["drops"] == sent
    assert counts["drops"] > 0 and len(events) == sent
