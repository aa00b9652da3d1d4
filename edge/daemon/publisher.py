"""The publisher thread: the one owner of the PUB socket; events leave in ticket order.

Batches arrive post-processed (``Finished``: the finishing threads, ``edge.daemon.finishers``,
stitch and threshold them in parallel, whichever worker inferred them); their events are sent in
ticket order, the order the batches left the work queue, so each camera's results leave in the
order its frames came. Only the small finished events wait for an earlier ticket, never a
batch's probability maps. Everything else the daemon publishes (rejects, drops, gaps, restarts)
arrives ready-made through the same outbox and leaves at once, with a status message every
``status_interval_s``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from edge import protocol
from edge.daemon.config import Config
from edge.daemon.ledger import Ledger
from edge.daemon.metrics import Metrics
from edge.daemon.outcomes import Finished, Outgoing, Rejected, Retire
from edge.daemon.sinks import EventPublisher

log = structlog.get_logger(__name__)
STOP = object()  # the last item of the outbox: publish a final status and close
# Replace the PUB socket so every subscriber authenticates again (a CURVE key was revoked).
REBIND = object()
# Per-frame events: once one is sent, its frame is settled in the ledger (edge.daemon.seqstate).
PER_FRAME = (protocol.KIND_RESULT, protocol.KIND_REJECT, protocol.KIND_DROP)


class PublishLoop:
    def __init__(
        self,
        outbox: queue.SimpleQueue[Any],
        tickets: threading.BoundedSemaphore,
        ledger: Ledger,
        metrics: Metrics,
        status: Callable[[], dict[str, Any]],
        config: Callable[[], Config],
    ) -> None:
        self._outbox = outbox
        self._tickets = tickets  # released once a batch's events are sent
        self._ledger = ledger
        self._metrics = metrics
        self._status = status
        self._config = config  # read each time: a reload may change the status interval
        self._ready: dict[int, list[Outgoing]] = {}  # made out of turn: waiting for earlier
        self._next_ticket = 0
        self._retiring: list[Retire] = []

    def run(self, publisher: EventPublisher) -> None:
        topic = protocol.status_topic(self._config().daemon_id)
        next_status = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now >= next_status:
                    publisher.send(topic, self._status())
                    next_status = now + self._config().status_interval_s
                try:
                    item = self._outbox.get(timeout=max(0.0, next_status - time.monotonic()))
                except queue.Empty:
                    continue
                if item is STOP:
                    break
                if isinstance(item, Finished):
                    self._ready[item.ticket] = item.outgoing
                    self._send_in_order(publisher)
                elif isinstance(item, Retire):
                    self._retiring.append(item)
                    self._close_retired()
                elif item is REBIND:
                    publisher.rebind()
                else:
                    self._publish(publisher, *item)
            # A worker that stopped mid-way (a failure) leaves a gap: send the rest anyway.
            for ticket in sorted(self._ready):
                self._send(self._ready.pop(ticket), publisher)
            self._close_retired(everything=True)
            # The last message, after every event: marked, so a subscriber can tell it from a
            # periodic one taken mid-flight (which counts frames in flight as received).
            publisher.send(topic, {**self._status(), "final": True})
        finally:
            # Bounded: subscribers get what is queued if they keep up, but never hold up exit.
            publisher.close(linger_ms=2000)

    def _send_in_order(self, publisher: EventPublisher) -> None:
        while self._next_ticket in self._ready:
            self._send(self._ready.pop(self._next_ticket), publisher)
            self._next_ticket += 1
        self._close_retired()

    def _close_retired(self, everything: bool = False) -> None:
        for item in [r for r in self._retiring if everything or r.after_ticket < self._next_ticket]:
            self._retiring.remove(item)
            item.replicas.close()

    def _send(self, batch: list[Outgoing], publisher: EventPublisher) -> None:
        try:
            for out in batch:
                header = out.header
                if isinstance(out, Rejected):
                    self._ledger.count(header.camera, "rejects")
                    self._metrics.reject(header.camera, out.reason)
                    log.warning(
                        "frame rejected", camera=header.camera, seq=header.seq, reason=out.reason
                    )
                else:
                    # Receipt to sending, waiting for an earlier ticket included.
                    seconds = (time.monotonic_ns() - out.received_ns) / 1e9
                    out.event["latency_ms"] = round(seconds * 1000, 3)
                    self._ledger.count(header.camera, "results")
                    self._metrics.result(header.camera, seconds, out.event["defects"])
                self._publish(publisher, protocol.event_topic(header.camera), out.event)
        finally:
            self._tickets.release()

    def _publish(self, publisher: EventPublisher, topic: bytes, event: dict[str, Any]) -> None:
        publisher.send(topic, event)
        if event["kind"] in PER_FRAME:
            self._ledger.settle(event["camera"], event["seq"])
