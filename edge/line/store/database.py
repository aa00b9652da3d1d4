"""``open_store(url)``: the --db value to a checked SQLAlchemy engine with the schema in place.

Accepted: ``sqlite:///path/to/defects.db``, a plain file path (SQLite), and
``postgresql://user[:password]@host[:port]/db`` (driven by psycopg 3). Anything else, a SQLite
file whose folder does not exist, or a database that cannot be reached is a StoreError naming
the URL, its password masked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)

from edge.line.store.schema import StoreError, ensure_schema

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
CONNECT_TIMEOUT_S = 5
SQLITE_BUSY_TIMEOUT_S = 5.0
SCHEMA_ATTEMPTS = 3


def masked(url: URL | str) -> str:
    """The URL as it may be logged: its password as ***."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except ArgumentError:
            return url
    return url.render_as_string(hide_password=True)


def parse_db_url(value: str) -> URL:
    """The --db value as a SQLAlchemy URL with its driver; StoreError if it is not one we take."""
    text = value.strip()
    if not text:
        raise StoreError("--db is empty: give sqlite:///path/defects.db or postgresql://...")
    if "://" not in text:  # a plain path: an embedded SQLite file
        return URL.create("sqlite", database=str(Path(text).expanduser().absolute()))
    try:
        url = make_url(text)
    except ArgumentError as err:
        raise StoreError(f"--db {masked(text)!r} is not a database URL: {err}") from None
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        if not url.database or url.database == ":memory:":
            raise StoreError(
                f"--db {masked(url)!r} names no file: give sqlite:///path/defects.db "
                "(an in-memory database would keep nothing)"
            )
        return url.set(drivername="sqlite")
    if url.drivername in POSTGRES_SCHEMES:
        if not url.database:
            raise StoreError(f"--db {masked(url)!r} names no database: postgresql://user@host/db")
        return url.set(drivername="postgresql+psycopg")
    raise StoreError(
        f"--db {masked(url)!r}: only SQLite (sqlite:///path or a file path) and PostgreSQL "
        f"(postgresql://user@host/db) are supported, not {url.drivername!r}"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (edge report) do not block the writer
    cursor.close()


def make_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        folder = Path(url.database or "").parent
        if not folder.is_dir():
            raise StoreError(f"--db {masked(url)!r}: the folder {str(folder)!r} does not exist")
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
    )


def reason(err: BaseException) -> str:
    """The driver's own words for a database error, first line only."""
    inner = err.orig if isinstance(err, DBAPIError) and err.orig is not None else err
    text = str(inner).strip().splitlines()
    return text[0] if text else type(inner).__name__


@dataclass(frozen=True)
class Store:
    engine: Engine
    url: URL
    version: int

    @property
    def where(self) -> str:
        return masked(self.url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()


def open_store(value: str, *, create: bool = True) -> Store:
    """Connect, create or check the schema; StoreError naming the URL if any of it fails.

    ``create=False`` (the report) refuses a database that has no store in it yet, rather than
    making an empty one.
    """
    url = parse_db_url(value)
    if not create and url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
        raise StoreError(f"--db {masked(url)!r}: no such file (has edge store written to it?)")
    engine = make_engine(url)
    try:
        version = _schema(engine, url, create=create)
    except SQLAlchemyError as err:
        engine.dispose()
        raise StoreError(f"cannot use the database {masked(url)}: {reason(err)}") from None
    except StoreError:
        engine.dispose()
        raise
    return Store(engine, url, version)


def _schema(engine: Engine, url: URL, *, create: bool) -> int:
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with engine.begin() as connection:
                if not create and not engine.dialect.has_table(connection, "schema_version"):
                    raise StoreError(
                        f"--db {masked(url)!r} holds no defect store (no edge store yet)"
                    )
                return ensure_schema(connection, masked(url))
        except (OperationalError, IntegrityError, ProgrammingError) as err:
            # Another process (a second edge store, edge report) created the tables at the same
            # moment: it is done by the time we look again.
            if "exist" not in reason(err) and "duplicate" not in reason(err).lower():
                raise
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")
