"""The publisher thread: post-processing of inferred batches into result events, and sending.

Stitching, thresholds, components and RLE run here, so the models start on the next batch
meanwhile (see ``edge.inference``). Batches carry tickets and are published in ticket order,
the order they left the work queue, whichever worker finished first. Everything else the
daemon publishes (rejects, drops, gaps, restarts) arrives ready-made through the same outbox
and leaves at once, with a status message every ``status_interval_s``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from edge import protocol
from edge.cascade import Cascade, Inferred
from edge.config import Config
from edge.frames import Frame
from edge.ledger import Ledger
from edge.metrics import Metrics
from edge.replicas import Replicas
from edge.sinks import EventPublisher, result_events

log = structlog.get_logger(__name__)
STOP = object()  # the last item of the outbox: publish a final status and close


# A run of a batch's frames and what the models made of them: their Inferred, or (for a frame
# alone) why inference failed.
Part = tuple[list[Frame], Inferred | str]


@dataclass(slots=True)
class Batch:
    ticket: int  # its place in the output order (edge.inference)
    frames: list[Frame]
    parts: list[Part]  # the frames again, in order, with their outcomes
    cascade: Cascade  # the one that inferred it: a reload must not split a batch across two


@dataclass(slots=True)
class Retire:
    """Models replaced by a reload; closed once every batch they inferred is published."""

    replicas: Replicas
    after_ticket: int  # the last ticket the old models served (-1: none)


class PublishLoop:
    def __init__(
        self,
        outbox: queue.SimpleQueue[Any],
        pending: threading.BoundedSemaphore,
        ledger: Ledger,
        metrics: Metrics,
        status: Callable[[], dict[str, Any]],
        config: Callable[[], Config],
    ) -> None:
        self._outbox = outbox
        self._pending = pending  # released per batch: bounds the batches waiting for us
        self._ledger = ledger
        self._metrics = metrics
        self._status = status
        self._config = config  # read each time: a reload may change the status interval
        self._held: dict[int, Batch] = {}  # finished out of turn: waiting for earlier tickets
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
                if isinstance(item, Batch):
                    self._held[item.ticket] = item
                    self._publish_in_order(publisher)
                elif isinstance(item, Retire):
                    self._retiring.append(item)
                    self._close_retired()
                else:
                    publisher.send(*item)
            # A worker that stopped mid-way (a failure) leaves a gap: publish the rest anyway.
            for ticket in sorted(self._held):
                self.publish_results(self._held.pop(ticket), publisher)
            self._close_retired(everything=True)
            publisher.send(topic, self._status())
        finally:
            # Bounded: subscribers get what is queued if they keep up, but never hold up exit.
            publisher.close(linger_ms=2000)

    def _publish_in_order(self, publisher: EventPublisher) -> None:
        while self._next_ticket in self._held:
            self.publish_results(self._held.pop(self._next_ticket), publisher)
            self._next_ticket += 1
        self._close_retired()

    def _close_retired(self, everything: bool = False) -> None:
        for item in [r for r in self._retiring if everything or r.after_ticket < self._next_ticket]:
            self._retiring.remove(item)
            item.replicas.close()

    def publish_results(self, batch: Batch, publisher: EventPublisher) -> None:
        try:
            for frames, outcome in batch.parts:
                if isinstance(outcome, str):
                    self._reject_all(frames, outcome, publisher)
                else:
                    self._publish_inferred(batch.cascade, frames, outcome, publisher)
        finally:
            self._pending.release()

    def _publish_inferred(
        self, cascade: Cascade, frames: list[Frame], inferred: Inferred, publisher: EventPublisher
    ) -> None:
        start = time.perf_counter()
        try:
            results = cascade.finish(inferred)
            events = result_events(cascade, frames, results)
        except Exception:
            # Every frame still gets its one event, and the publisher serves on.
            log.exception(
                "post-processing failed",
                frames=[f"{f.header.camera}/{f.header.seq}" for f in frames],
            )
            for frame in frames:
                reason = f"post-processing failed on a {list(frame.header.shape)} frame"
                self._reject_all([frame], reason, publisher)
            return
        self._metrics.stage("postprocess", time.perf_counter() - start)
        for camera, event in events:
            self._ledger.count(camera, "results")
            self._metrics.result(camera, event["latency_ms"] / 1000)
            publisher.send(protocol.event_topic(camera), event)

    def _reject_all(self, frames: list[Frame], reason: str, publisher: EventPublisher) -> None:
        for frame in frames:
            header = frame.header
            self._ledger.count(header.camera, "rejects")
            self._metrics.reject(header.camera, reason)
            log.warning("frame rejected", camera=header.camera, seq=header.seq, reason=reason)
            publisher.send(
                protocol.event_topic(header.camera),
                protocol.reject_event(header.camera, header.seq, reason, header.ts_ns),
            )
