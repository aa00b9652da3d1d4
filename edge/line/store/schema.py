"""The store's one schema, for SQLite and PostgreSQL alike (SQLAlchemy Core), and its version.

``schema_version`` holds one row per schema version applied. Opening a store creates what is
missing and checks the version: an older one is migrated by the steps in ``MIGRATIONS`` (none
yet), a newer one (written by a later edge) is refused with a clear error rather than misread.

- ``events``: one row per event the daemon published (result, reject, drop, gap,
  camera_restart, source_lost/restored) and per message the store could not read (kind
  ``invalid``); the line place from ``meta`` (edge.protocol.linemeta) as columns, the rest of
  the body as JSON text in ``body``.
- ``defects``: one row per ``defects[]`` entry of a result: the union of its components' boxes
  (``bbox_*``, pixels), where that lies along the coil (``x_mm_start``/``x_mm_end``) when the
  strip's place is known, the components and the mask, and the JPEG crop when the daemon sent
  one.
- ``store_losses``: events the store had to drop (its buffer was full while the database was
  away, or it was stopped before they were written): written as soon as the database takes
  writes again, so nothing is lost silently.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Connection, Dialect

SCHEMA_VERSION = 1


class StoreError(RuntimeError):
    """A store that cannot be opened or used: the message says what and where."""


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on the way in and out, whatever the database keeps.

    SQLite has no time zones (SQLAlchemy stores the wall time as text): UTC is stored there and
    read back as UTC, so comparisons in SQL are right on both databases.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store takes UTC-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Integer on SQLite: only INTEGER PRIMARY KEY is its rowid, which autoincrements.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", Text, nullable=False),
    Column("camera", Text),
    Column("seq", BigInteger),
    Column("ts_ns", BigInteger),
    Column("received_at", UtcDateTime, nullable=False),
    Column("daemon", Text),
    Column("coil_id", Text),
    Column("position_mm", Float),
    Column("strip_length_mm", Float),
    Column("side", Text),
    Column("file", Text),
    Column("width", Integer),
    Column("height", Integer),
    Column("defective", Boolean),
    Column("reason", Text),
    Column("latency_ms", Float),
    Column("body", Text, nullable=False),
    Index("ix_events_received_at", "received_at"),
    Index("ix_events_coil_position", "coil_id", "position_mm"),
    Index("ix_events_camera_seq", "camera", "seq"),
)

defects = Table(
    "defects",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", Id, ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column("class_id", Integer, nullable=False),
    Column("name", Text),
    Column("score", Float),
    Column("area_px", Integer),
    Column("bbox_x", Integer),
    Column("bbox_y", Integer),
    Column("bbox_w", Integer),
    Column("bbox_h", Integer),
    Column("x_mm_start", Float),
    Column("x_mm_end", Float),
    Column("components", Text, nullable=False),
    Column("mask_rle", Text),
    Column("crop_bbox", Text),
    Column("crop_jpeg", LargeBinary),
    Index("ix_defects_event", "event_id"),
    Index("ix_defects_class", "class_id"),
)

store_losses = Table(
    "store_losses",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("recorded_at", UtcDateTime, nullable=False),
    Column("first_at", UtcDateTime, nullable=False),
    Column("last_at", UtcDateTime, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
)

# version -> the step that brings a database from version - 1 to it; none yet.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {}


def ensure_schema(connection: Connection, where: str) -> int:
    """Create what is missing, migrate an older schema, refuse a newer one; the version."""
    metadata.create_all(connection, checkfirst=True)
    rows = connection.execute(schema_version.select()).all()
    if not rows:
        now = datetime.now(UTC)
        connection.execute(schema_version.insert(), {"version": SCHEMA_VERSION, "applied_at": now})
        return SCHEMA_VERSION
    version = max(row.version for row in rows)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the store at {where} has schema version {version}, newer than this edge knows "
            f"(up to {SCHEMA_VERSION}): upgrade edge, or point --db at another database"
        )
    for step in range(version + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[step](connection)
        connection.execute(
            schema_version.insert(), {"version": step, "applied_at": datetime.now(UTC)}
        )
    return SCHEMA_VERSION
