"""The store's EventSink: a bounded queue in front of a writer thread that batches inserts.

``take`` runs on the subscriber's thread and never waits on the database: it turns the event
into rows and puts them on a bounded queue. The writer thread takes up to ``batch_size`` records
or what came within ``batch_s`` and writes them in one transaction. If the database is away
(a restart, the network), the batch is kept and retried with backoff while the queue buffers
up to its bound; what comes beyond it is dropped, counted, logged as an error and, once the
database takes writes again, recorded in ``store_losses``: nothing is lost silently.
"""

from __future__ import annotations

import queue
import threading
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import insert
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError

from edge.line.store.database import Store, reason
from edge.line.store.records import Record, event_record, invalid_record, to_json
from edge.line.store.retention import delete_older_than
from edge.line.store.schema import defects, events, store_losses
from edge.protocol import STATUS_TOPIC_PREFIX

log = structlog.get_logger("edge.store")

MAX_BUFFER = 100_000  # events held while the database is away, and at most this many bytes:
MAX_BUFFER_BYTES = 512 * 1024 * 1024  # a result is ~1-3 KB, more with a noisy mask or crops
BATCH_SIZE = 500
BATCH_S = 0.2
BACKOFF_S = (0.2, 5.0)  # first retry, longest wait between retries
RETENTION_EVERY_S = 3600.0
# The database is away (down, unreachable, locked): keep the batch and retry it. Any other
# error is the database refusing the data, which retrying would never change.
AWAY = (OperationalError, InterfaceError, DisconnectionError)
FULL = "buffer full while the database was away"
STOPPED = "stopped before they were written"


class StoreSink:
    """Keep every event from an EventSubscriber in ``store``; ``start()``, then ``stop()``."""

    def __init__(
        self,
        store: Store,
        *,
        max_buffer: int = MAX_BUFFER,
        max_buffer_bytes: int = MAX_BUFFER_BYTES,
        batch_size: int = BATCH_SIZE,
        batch_s: float = BATCH_S,
        retention_days: float | None = None,
        retention_every_s: float = RETENTION_EVERY_S,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.batch_s = batch_s
        self.retention_days = retention_days
        self.retention_every_s = retention_every_s
        self.queue: queue.Queue[Record] = queue.Queue(max_buffer)
        self.max_buffer = max_buffer
        self.max_buffer_bytes = max_buffer_bytes
        self.buffered_bytes = 0
        self.daemon: str | None = None
        self.taken = 0  # events queued
        self.written = 0  # events committed
        self._finished = 0  # events taken that are committed or counted as lost
        self.lost = 0  # events dropped, all reasons
        self.retained = 0  # events deleted by retention
        self.database_ok = threading.Event()
        self._pending: list[Record] = []
        self._lock = threading.Lock()
        self._unrecorded: dict[str, list[Any]] = {}  # reason -> [count, first_at, last_at]
        self._stop = threading.Event()
        self._give_up = threading.Event()
        self._next_retention = 0.0
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)

    # -- the subscriber's side ------------------------------------------------------------------

    def take(self, topic: str, body: dict[str, Any]) -> None:
        if topic.startswith(STATUS_TOPIC_PREFIX) and body.get("kind") == "status":
            daemon = body.get("daemon")
            if isinstance(daemon, str):  # periodic; not stored, names the events' daemon
                if daemon != self.daemon:  # the first, or a new daemon: worth a line
                    log.info("store hears the daemon", daemon=daemon)
                self.daemon = daemon
            return
        record = event_record(body, datetime.now(UTC), self.daemon)
        if record.problems:  # stored all the same, without the unusable keys' columns
            log.warning(
                "store: meta not usable", camera=record.event["camera"],
                seq=record.event["seq"], problems=list(record.problems), throttle="store-meta",
            )  # fmt: skip
        self._put(record)

    def invalid(self, reason: str) -> None:
        self._put(invalid_record(reason, datetime.now(UTC), self.daemon))

    def lost_on_the_way(self, count: int, reason: str) -> None:
        """Events lost before they reached the store (the subscriber core's TransitLoss):
        counted, logged and written to ``store_losses`` like the store's own."""
        self._lose(count, reason)

    def _put(self, record: Record) -> None:
        size = record.size
        with self._lock:
            fits = self.buffered_bytes + size <= self.max_buffer_bytes
            if fits:
                self.buffered_bytes += size
        if not fits:
            self._lose(1, FULL)
            return
        try:
            self.queue.put_nowait(record)
            self.taken += 1
        except queue.Full:
            with self._lock:
                self.buffered_bytes -= size
            self._lose(1, FULL)

    def _lose(self, count: int, why: str) -> None:
        now = datetime.now(UTC)
        with self._lock:
            self.lost += count
            entry = self._unrecorded.setdefault(why, [0, now, now])
            entry[0] += count
            entry[2] = now
            total = self.lost
        log.error(
            "store LOST events", reason=why, events=count, lost_total=total,
            buffer=self.max_buffer, throttle="store-lost",
        )  # fmt: skip

    # -- the writer thread ------------------------------------------------------------------

    def start(self) -> StoreSink:
        self._thread.start()
        return self

    @property
    def buffered(self) -> int:
        return self.queue.qsize() + len(self._pending)

    def idle(self) -> bool:
        """Everything taken so far is committed (and any loss recorded)."""
        with self._lock:
            losses = bool(self._unrecorded)
        return self._finished == self.taken and not losses

    def stop(self, timeout_s: float = 10.0) -> int:
        """Write what is buffered, for ``timeout_s`` at most; how many events were not written."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._give_up.set()
            self._thread.join(5.0)
        unsaved = self.buffered
        if unsaved:
            self._lose(unsaved, STOPPED)
            log.error(
                "store stopped with events not written (database away?)",
                events=unsaved, where=self.store.where,
            )  # fmt: skip
        return unsaved

    def _run(self) -> None:
        backoff = 0.0
        self._retain()
        while not self._give_up.is_set():
            stopping = self._stop.is_set()
            if not self._pending:
                self._pending = self._collect(wait=not stopping)
            with self._lock:
                losses = bool(self._unrecorded)
            if not self._pending and not losses:
                if stopping:
                    return
                self._retain()
                continue
            try:
                self._write_or_sort()
            except Exception as err:  # away (or unforeseen): never let the writer die
                backoff = min(BACKOFF_S[1], backoff * 2 or BACKOFF_S[0])
                if self.database_ok.is_set() or backoff == BACKOFF_S[0]:
                    log.error(
                        "store cannot write; buffering and retrying",
                        where=self.store.where, error=reason(err), buffered=self.buffered,
                        retry_s=backoff,
                    )  # fmt: skip
                self.database_ok.clear()
                self._give_up.wait(backoff)
                continue
            if not self.database_ok.is_set() and backoff:
                log.info("store writes again", where=self.store.where, buffered=self.buffered)
            self.database_ok.set()
            backoff = 0.0

    def _collect(self, *, wait: bool) -> list[Record]:
        """Up to batch_size records: what came within batch_s of the first (none if stopping)."""
        batch: list[Record] = []
        deadline = time.monotonic() + self.batch_s
        while len(batch) < self.batch_size:
            timeout = deadline - time.monotonic()
            try:
                if wait and timeout > 0:
                    batch.append(self.queue.get(timeout=timeout))
                else:
                    batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write_or_sort(self) -> None:
        """Write the pending batch; if the database refuses it (rather than being away), write
        it record by record and keep each refused one as an ``invalid`` row naming why, so one
        bad event cannot block the rest. Raises only when the database is away (the caller
        retries what is still pending: nothing is written twice)."""
        try:
            self._write(self._pending)
        except AWAY:
            raise
        except (SQLAlchemyError, ValueError, TypeError, OverflowError) as err:
            if getattr(err, "connection_invalidated", False):
                raise
            log.warning("store batch refused; writing one by one", error=reason(err))
            while self._pending:
                try:
                    self._write(self._pending[:1])
                    written = True
                except AWAY:
                    raise
                except (SQLAlchemyError, ValueError, TypeError, OverflowError) as one:
                    if getattr(one, "connection_invalidated", False):
                        raise
                    written = self._refused(self._pending[0], one)
                self._done(1, written=written)
            return
        self._done(len(self._pending), written=True)

    def _done(self, count: int, *, written: bool) -> None:
        """The first ``count`` pending records are committed (or, not written, counted lost)."""
        done, self._pending = self._pending[:count], self._pending[count:]
        with self._lock:
            self.buffered_bytes -= sum(record.size for record in done)
        if written:
            self.written += count
        self._finished += count

    def _refused(self, record: Record, err: BaseException) -> bool:
        """Keep a refused record as an ``invalid`` row; whether that was written."""
        event = record.event
        why = f"the database refused this {event.get('kind')} event: {reason(err)}"
        log.error("store refused an event", camera=event.get("camera"), seq=event.get("seq"),
                  error=reason(err), throttle="store-refused")  # fmt: skip
        kept = invalid_record(
            why, event["received_at"], event.get("daemon"), camera=event.get("camera"),
            seq=event.get("seq"),
            body=to_json({"refused": {k: v for k, v in event.items() if k != "received_at"},
                          "defects": record.defects}),
        )  # fmt: skip
        try:
            self._write([kept])
        except AWAY:
            raise
        except (SQLAlchemyError, ValueError, TypeError, OverflowError):
            self._lose(1, "refused by the database")
            return False
        return True

    def _write(self, records: list[Record]) -> None:
        with self._lock:
            losses = {why: list(entry) for why, entry in self._unrecorded.items()}
        with self.store.engine.begin() as connection:
            if records:
                statement = insert(events).returning(events.c.id, sort_by_parameter_order=True)
                ids = connection.execute(statement, [r.event for r in records]).scalars().all()
                rows = [
                    {**row, "event_id": event_id}
                    for record, event_id in zip(records, ids, strict=True)
                    for row in record.defects
                ]
                if rows:
                    connection.execute(insert(defects), rows)
            if losses:
                now = datetime.now(UTC)
                connection.execute(
                    insert(store_losses),
                    [
                        {"recorded_at": now, "first_at": first, "last_at": last, "events": n,
                         "reason": why}
                        for why, (n, first, last) in losses.items()
                    ],
                )  # fmt: skip
        with self._lock:
            for why, (n, _first, _last) in losses.items():
                entry = self._unrecorded[why]
                entry[0] -= n
                if entry[0] <= 0:
                    del self._unrecorded[why]
                else:
                    entry[1] = entry[2]

    def _retain(self) -> None:
        if self.retention_days is None or time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + self.retention_every_s
        try:
            gone = delete_older_than(self.store.engine, self.retention_days)
        except SQLAlchemyError as err:
            self._next_retention = time.monotonic() + 60.0  # try again soon, not every loop
            log.warning("store retention failed", where=self.store.where, error=reason(err))
            return
        self.retained += gone
        if gone:
            log.info("store retention", deleted_events=gone, older_than_days=self.retention_days)
