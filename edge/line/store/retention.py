"""Retention by age: events received more than N days ago go, with their defects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from edge.line.store.schema import defects, events, store_losses


def cutoff(days: float, now: datetime | None = None) -> datetime:
    if not days > 0:
        raise ValueError(f"retention must be > 0 days, got {days}")
    return (now or datetime.now(UTC)) - timedelta(days=days)


def delete_older_than(engine: Engine, days: float, now: datetime | None = None) -> int:
    """Delete events (and their defects, and loss records) older than ``days``; how many events.

    Explicit deletes rather than ON DELETE CASCADE alone: the same on every database, whether or
    not it enforces foreign keys.
    """
    before = cutoff(days, now)
    old = select(events.c.id).where(events.c.received_at < before)
    with engine.begin() as connection:
        connection.execute(delete(defects).where(defects.c.event_id.in_(old)))
        gone = connection.execute(delete(events).where(events.c.received_at < before)).rowcount
        connection.execute(delete(store_losses).where(store_losses.c.last_at < before))
    return int(gone or 0)
