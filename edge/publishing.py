"""The publisher thread: post-processing of inferred batches into result events, and sending.

Stitching, thresholds, components and RLE run here, so the models start on the next batch
meanwhile (see ``Server._infer``). Everything else the daemon publishes (rejects, drops, gaps,
restarts) arrives ready-made through the same outbox, so events leave in the order they were
decided, with a status message every ``status_interval_s``.
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
from edge.sinks import EventPublisher, result_events

log = structlog.get_logger(__name__)
STOP = object()  # the last item of the outbox: publish a final status and close


@dataclass(slots=True)
class Batch:
    frames: list[Frame]
    inferred: Inferred
    cascade: Cascade  # the one that inferred it: a reload must not split a batch across two


@dataclass(slots=True)
class Retire:
    """A cascade replaced by a reload; closed once every batch it inferred is published."""

    cascade: Cascade


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
                    self.publish_results(item, publisher)
                elif isinstance(item, Retire):
                    item.cascade.close()
                else:
                    publisher.send(*item)
            publisher.send(topic, self._status())
        finally:
            # Bounded: subscribers get what is queued if they keep up, but never hold up exit.
            publisher.close(linger_ms=2000)

    def publish_results(self, batch: Batch, publisher: EventPublisher) -> None:
        start = time.perf_counter()
        try:
            try:
                results = batch.cascade.finish(batch.inferred)
                events = result_events(batch.cascade, batch.frames, results)
            except Exception:
                # Every frame still gets its one event, and the publisher serves on.
                log.exception(
                    "post-processing failed",
                    frames=[f"{f.header.camera}/{f.header.seq}" for f in batch.frames],
                )
                for frame in batch.frames:
                    header = frame.header
                    reason = f"post-processing failed on a {list(header.shape)} frame"
                    self._ledger.count(header.camera, "rejects")
                    self._metrics.reject(header.camera, reason)
                    publisher.send(
                        protocol.event_topic(header.camera),
                        protocol.reject_event(header.camera, header.seq, reason, header.ts_ns),
                    )
                return
            self._metrics.stage("postprocess", time.perf_counter() - start)
            for camera, event in events:
                self._ledger.count(camera, "results")
                self._metrics.result(camera, event["latency_ms"] / 1000)
                publisher.send(protocol.event_topic(camera), event)
        finally:
            self._pending.release()
