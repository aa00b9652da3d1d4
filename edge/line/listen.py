"""A subscriber: print the daemon's events, one line each (or JSON lines)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from edge.protocol import EVENT_TOPIC_PREFIX, STATUS_TOPIC_PREFIX, ProtocolError, parse_event

Curve = tuple[Path, Path]  # the daemon's public server.key, this client's .key_secret


def format_event(topic: str, body: dict[str, Any]) -> str:
    kind = body.get("kind")
    where = f"{body.get('camera', '?')}#{body.get('seq', '?')}"
    if kind == "result":
        if body["defective"]:
            found = ", ".join(
                f"{d['name']}({d['score']:.2f}, {d['area_px']}px)" for d in body["defects"]
            )
        else:
            found = "ok"
        return f"{where} result {found} [{body['latency_ms']:.1f} ms]"
    if kind in ("reject", "drop"):
        return f"{where} {kind}: {body['reason']}"
    if kind == "gap":
        return f"{body['camera']} gap: seq {body['first_seq']}..{body['last_seq']} never received ({body['missing']} frames)"
    if kind == "camera_restart":
        return f"{body['camera']} camera restart: seq {body['previous_seq']} -> {body['seq']}"
    if kind == "source_lost":
        return f"source lost: {body['endpoint']} (loss {body['losses']}; its frames show as a gap when it is back)"
    if kind == "source_restored":
        return f"source restored: {body['endpoint']} after {body['down_s']:.1f}s"
    if kind == "status":
        totals = {
            k: sum(c[k] for c in body["cameras"].values())
            for k in ("received", "results", "rejects", "drops", "missing")
        }
        counts = " ".join(f"{k}={v}" for k, v in totals.items())
        return f"status {body['daemon']} up {body['uptime_s']:.0f}s queue={body.get('queue_depth', 0)} {counts}"
    return f"{topic} {body}"


def subscribe(
    context: zmq.Context, source: str, *, status: bool = True, curve: Curve | None = None
) -> zmq.Socket:
    """``curve``: (the daemon's public server.key, this client's .key_secret) for CURVE."""
    sock = context.socket(zmq.SUB)
    if curve is not None:
        from edge.protocol.curve import make_client

        make_client(sock, *curve)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, EVENT_TOPIC_PREFIX.encode())
    if status:
        sock.setsockopt(zmq.SUBSCRIBE, STATUS_TOPIC_PREFIX.encode())
    sock.connect(source)
    return sock


def listen(
    source: str,
    on_event: Callable[[str, dict[str, Any]], None],
    *,
    count: int | None = None,
    status: bool = True,
    stop: threading.Event | None = None,
    curve: Curve | None = None,
    quiet_warn_s: float | None = None,
    on_quiet: Callable[[float], None] | None = None,
) -> int:
    """Call ``on_event(topic, body)`` for each message until ``count`` events or ``stop``.

    With ``quiet_warn_s`` and ``on_quiet``, ``on_quiet(seconds)`` is called once when nothing
    at all has arrived for that long, and again only after messages came and stopped again.
    The daemon publishes a status every ``status_interval_s`` (1 s by default), so silence means
    no daemon on ``source``: the status topic is then subscribed even without ``status``, only
    to hear it, and its messages are not passed to ``on_event``.
    """
    warn_after = quiet_warn_s if quiet_warn_s and quiet_warn_s > 0 and on_quiet else None
    context = zmq.Context.instance()
    sock = subscribe(context, source, status=status or warn_after is not None, curve=curve)
    seen = 0
    last = time.monotonic()
    warned = False
    try:
        while (count is None or seen < count) and not (stop and stop.is_set()):
            if not sock.poll(100):
                quiet_s = time.monotonic() - last
                if warn_after is not None and on_quiet and not warned and quiet_s >= warn_after:
                    warned = True
                    on_quiet(warn_after)
                continue
            parts = sock.recv_multipart()
            last, warned = time.monotonic(), False
            try:
                topic, body = parse_event(parts)
            except (ProtocolError, ValueError) as err:
                on_event("invalid", {"kind": "invalid", "reason": str(err)})
                continue
            if topic.startswith(STATUS_TOPIC_PREFIX) and not status:
                continue  # subscribed only to hear that the daemon is there
            on_event(topic, body)
            if topic.startswith(EVENT_TOPIC_PREFIX):
                seen += 1
    finally:
        sock.close()
    return seen


def topics(status: bool = True) -> list[str]:
    """The topic prefixes ``listen`` passes on."""
    return [EVENT_TOPIC_PREFIX, STATUS_TOPIC_PREFIX] if status else [EVENT_TOPIC_PREFIX]


def to_json_line(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), default=str)
