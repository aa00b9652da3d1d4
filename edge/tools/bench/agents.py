"""The two helper processes of the e2e mode: a camera publisher and an event subscriber.

Each is its own process, as on a line, and talks to the bench over stdin/stdout in JSON lines.
Run as ``python -m edge.bench.agents camera|subscriber ...`` (the bench starts them itself).

camera      binds one XPUB socket per camera on 127.0.0.1 and prints their endpoints; then for
            each ``{"cmd": "offer", "rate": R, "seconds": S}`` publishes strips round-robin over
            its cameras at R strips/s in total for S seconds and prints what it sent.
subscriber  subscribes to the daemon's events and status; for ``{"cmd": "snapshot", "path": P}``
            writes every event seen so far (kind, camera, seq, capture and receive times) to P.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from typing import Any

import numpy as np
import zmq

from edge.line.camera import FramePublisher, Pacer
from edge.protocol import (
    EVENT_TOPIC_PREFIX,
    STATUS_TOPIC_PREFIX,
    FrameHeader,
    encode_frame,
    parse_event,
)

KINDS = ("result", "reject", "drop", "gap", "camera_restart")
RECORD = np.dtype(
    [
        ("kind", "u1"),  # index into KINDS
        ("camera", "u2"),  # the n of "cam<n>"
        ("seq", "i8"),
        ("ts_ns", "i8"),  # capture time from the frame header (0 for gaps)
        ("recv_ns", "i8"),  # wall clock when the subscriber received the event
        ("missing", "i8"),  # frames a gap event reports
        ("defective", "u1"),
        ("daemon_ms", "f4"),  # the result's own latency_ms: receipt -> event, in the daemon
    ]
)


def _say(body: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(body) + "\n")
    sys.stdout.flush()


def _commands() -> queue.SimpleQueue[dict[str, Any] | None]:
    """stdin's JSON lines on a queue; None when stdin closes (the bench is gone: exit)."""
    lines: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()

    def read() -> None:
        for line in sys.stdin:
            if line.strip():
                lines.put(json.loads(line))
        lines.put(None)

    threading.Thread(target=read, daemon=True, name="stdin").start()
    return lines


def camera_main(strips_path: str, cameras: int) -> int:
    strips = np.load(strips_path)
    # Raw payloads made once: bytes are sent without a copy, as a camera's DMA buffer would be.
    payloads = [s.tobytes() for s in strips]
    shape = tuple(int(d) for d in strips.shape[1:])
    context = zmq.Context()
    publishers = [
        FramePublisher("tcp://127.0.0.1:*", context=context, sndhwm=1000) for _ in range(cameras)
    ]
    names = [f"cam{i + 1}" for i in range(cameras)]
    seqs = [0] * cameras
    sent_total = 0
    _say({"endpoints": [p.endpoint for p in publishers]})
    commands = _commands()
    try:
        while (cmd := commands.get()) is not None:
            if cmd["cmd"] == "wait_subscriber":
                deadline = time.monotonic() + cmd["seconds"]
                ok = all(
                    p.wait_for_subscriber(max(0.0, deadline - time.monotonic())) for p in publishers
                )
                _say({"subscribed": ok})
            elif cmd["cmd"] == "offer":
                pacer = Pacer(cmd["rate"])
                end = time.monotonic() + cmd["seconds"]
                start_ns = time.time_ns()
                sent = 0
                while time.monotonic() < end:
                    pacer.wait()
                    cam = sent_total % cameras
                    header = FrameHeader(
                        names[cam], seqs[cam], time.time_ns(), "raw", shape, meta={}
                    )
                    publishers[cam].send_parts(
                        encode_frame(header, payloads[sent_total % len(payloads)])
                    )
                    seqs[cam] += 1
                    sent += 1
                    sent_total += 1
                _say({"sent": sent, "start_ns": start_ns, "end_ns": time.time_ns()})
            elif cmd["cmd"] == "quit":
                break
    finally:
        for pub in publishers:
            pub.close(linger_ms=500)
        context.term()
    return 0


def subscriber_main(source: str) -> int:
    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)  # never drop: a lost event would read as a lost frame
    sock.setsockopt(zmq.SUBSCRIBE, EVENT_TOPIC_PREFIX.encode())
    sock.setsockopt(zmq.SUBSCRIBE, STATUS_TOPIC_PREFIX.encode())
    sock.connect(source)
    records: list[tuple[int, ...]] = []
    commands = _commands()
    ready = False
    try:
        while True:
            if sock.poll(20):
                parts = sock.recv_multipart()
                recv_ns = time.time_ns()
                topic, body = parse_event(parts)
                if topic.startswith(STATUS_TOPIC_PREFIX):
                    if not ready:
                        ready = True  # the subscription is live: nothing published can be missed
                        _say({"ready": True})
                    continue
                kind = body.get("kind")
                if kind not in KINDS:
                    continue
                camera = str(body.get("camera", "cam0"))
                records.append(
                    (
                        KINDS.index(kind),
                        int(camera[3:]) if camera[3:].isdigit() else 0,
                        int(body.get("seq", body.get("first_seq", -1))),
                        int(body.get("ts_ns") or 0),
                        recv_ns,
                        int(body.get("missing", 0)),
                        int(bool(body.get("defective", False))),
                        float(body.get("latency_ms") or 0.0),
                    )
                )
            try:
                cmd = commands.get_nowait()
            except queue.Empty:
                continue
            if cmd is None or cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "snapshot":
                np.save(cmd["path"], np.array(records, dtype=RECORD))
                _say({"records": len(records)})
    finally:
        sock.close()
        context.term()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.bench.agents")
    sub = parser.add_subparsers(dest="agent", required=True)
    cam = sub.add_parser("camera")
    cam.add_argument("--strips", required=True)
    cam.add_argument("--cameras", type=int, default=2)
    subscriber = sub.add_parser("subscriber")
    subscriber.add_argument("--source", required=True)
    args = parser.parse_args(argv)
    if args.agent == "camera":
        return camera_main(args.strips, args.cameras)
    return subscriber_main(args.source)


if __name__ == "__main__":
    raise SystemExit(main())
