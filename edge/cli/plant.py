"""``edge store`` and ``edge report``: keep every event in a database; a coil's report from it.

Both need the ``store`` extra (SQLAlchemy, psycopg, matplotlib): pip install 'edge[store]'.
"""

from __future__ import annotations

import importlib.util
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from edge.cli.common import CurveClientKey, CurveServerKey, connect_endpoints, curve_pair, fail

DEFAULT_DB = "sqlite:///var/lib/edge/defects.db"

Db = Annotated[
    str,
    typer.Option(
        "--db",
        help="sqlite:///path/defects.db (or a plain file path) or "
        "postgresql://user[:password]@host[:port]/db.",
    ),
]


def _need(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise fail(f"{module} is not installed: pip install 'edge[store]'")


def store_command(
    source: Annotated[
        str,
        typer.Option(
            "--source", "-s", help="The daemon's publish endpoint.", callback=connect_endpoints
        ),
    ] = "tcp://127.0.0.1:5556",
    db: Db = DEFAULT_DB,
    retention_days: Annotated[
        float | None,
        typer.Option(
            "--retention-days",
            min=0.001,
            help="Delete events older than this, at start and hourly (default: keep all).",
        ),
    ] = None,
    max_buffer: Annotated[
        int,
        typer.Option(
            "--max-buffer",
            min=1,
            help="Events held while the database is away; more are dropped, counted and "
            "recorded in store_losses.",
        ),
    ] = 100_000,
    drain_s: Annotated[
        float,
        typer.Option("--drain-s", min=0, help="At SIGINT/SIGTERM: seconds to write what is held."),
    ] = 10.0,
    curve_server_key: CurveServerKey = None,
    curve_client_key: CurveClientKey = None,
) -> None:
    """Keep every result, reject, drop and gap the daemon publishes in SQLite or PostgreSQL."""
    _need("sqlalchemy", "psycopg" if db.startswith("postgres") else "sqlite3")
    from edge.line.bridges.subscriber import EventSubscriber
    from edge.line.store.database import open_store
    from edge.line.store.schema import StoreError
    from edge.line.store.writer import StoreSink
    from edge.logs import configure
    from edge.protocol.curve import SecurityError

    curve = curve_pair(curve_server_key, curve_client_key)
    configure()
    try:
        store = open_store(db)
    except StoreError as err:
        raise fail(str(err)) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sink = StoreSink(store, max_buffer=max_buffer, retention_days=retention_days).start()
    try:
        subscriber = EventSubscriber(source, sink, curve=curve, name="edge store").start()
    except (ValueError, SecurityError) as err:
        sink.stop(drain_s)
        store.close()
        raise fail(str(err)) from None
    typer.echo(f"edge store: {source} -> {store.where}", err=True)
    try:
        stop.wait()
    finally:
        subscriber.stop(drain_s=drain_s)  # what reached the socket is kept too
        unsaved = sink.stop(drain_s)
        store.close()
    typer.echo(
        f"edge store: {sink.written} events written, {sink.lost} lost"
        + (f" ({unsaved} not written at stop)" if unsaved else ""),
        err=True,
    )
    if unsaved:
        raise typer.Exit(1)


def _when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"not an ISO date/time: {value!r} (e.g. 2026-03-01T06:00 or 2026-03-01T06:00+01:00)",
            param_hint=f"'{option}'",
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def report_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the report's files.")],
    coil: Annotated[
        str | None,
        typer.Option(
            "--coil",
            help="The coil id (meta coil_id) to report on. Without: every coil inspected "
            "between --since and --until (a shift report), one folder each and an index.html.",
        ),
    ] = None,
    db: Db = DEFAULT_DB,
    since: Annotated[
        str | None,
        typer.Option(help="Only events received from then (ISO; UTC unless an offset is given)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only events received before then (ISO; UTC by default).")
    ] = None,
) -> None:
    """A coil map (PNG), a self-contained HTML page and summary.json from the defect store."""
    start, end = _when(since, "--since"), _when(until, "--until")
    if coil is None and start is None:
        raise fail("give --coil C123, or --since (and --until) for a shift report of every coil")
    _need("sqlalchemy", "matplotlib", "psycopg" if db.startswith("postgres") else "sqlite3")
    from edge.line.store.database import open_store
    from edge.line.store.schema import StoreError
    from edge.tools.coilreport.query import ReportError
    from edge.tools.coilreport.report import HTML_NAME, INDEX_NAME, write_report, write_shift

    try:
        store = open_store(db, create=False)
    except StoreError as err:
        raise fail(str(err)) from None
    try:
        if coil is None:
            shift = write_shift(store, out, start, end)
            typer.echo(f"{len(shift['coils'])} coils -> {out / INDEX_NAME}")
            return
        summary = write_report(store, coil, out, start, end)
    except ReportError as err:
        raise fail(str(err)) from None
    finally:
        store.close()
    counts = ", ".join(f"class {k}: {v['count']}" for k, v in summary["classes"].items())
    typer.echo(
        f"coil {coil}: {summary['strips']} strips, {counts or 'no defects'} -> {out / HTML_NAME}"
    )
