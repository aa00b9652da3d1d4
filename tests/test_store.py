"""The defect store (edge store): URLs, the writer on SQLite and a real PostgreSQL, a live
daemon into both, the database away and back, retention, clear errors."""

from __future__ import annotations

import importlib.util
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy", reason="the store extra is not installed")

from sqlalchemy import func, select, text, update
from typer.testing import CliRunner

from edge.cli.main import app
from edge.line.bridges.subscriber import EventSubscriber
from edge.line.store import database
from edge.line.store.database import open_store, parse_db_url
from edge.line.store.retention import delete_older_than
from edge.line.store.schema import StoreError, defects, events, store_losses
from edge.line.store.writer import StoreSink
from edge.protocol import FrameHeader, encode_frame
from tests.bridge_fixtures import defective_strip, wait_until
from tests.conftest import free_port, gray_strip
from tests.postgres import postgres  # noqa: F401  (the fixture)

EDGE = [sys.executable, "-c", "from edge.cli.main import app; app()"]
STRIP_MM = 128.0


def result(seq: int, *, coil: str = "C1", crop: bool = True) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "class_id": 3,
        "name": "very_dark",
        "score": 0.9,
        "area_px": 6000,
        "mask_rle": "10 5",
        "components": [
            {"bbox": [300, 40, 120, 50], "area_px": 5000},
            {"bbox": [800, 10, 10, 10], "area_px": 1000},
        ],
    }
    if crop:
        entry["crop"] = {"bbox": [290, 30, 140, 70], "jpeg": b"\xff\xd8\xff\xe0fake\xff\xd9"}
    return {
        "v": 1, "kind": "result", "camera": "cam1", "seq": seq, "ts_ns": 1_000 + seq,
        "shape": [256, 1600], "defective": True, "scores": [0.1, 0.2, 0.9, 0.0],
        "defects": [entry], "latency_ms": 4.5, "model": {"segmenter": "s:1:abc"},
        "meta": {"coil_id": coil, "position_mm": seq * STRIP_MM, "strip_length_mm": STRIP_MM,
                 "side": "top", "file": f"s{seq}.png"},
    }  # fmt: skip


MESSAGES: list[tuple[str, dict[str, Any]]] = [
    ("status/d1", {"v": 1, "kind": "status", "daemon": "d1", "cameras": {}}),
    ("event/cam1", result(0)),
    ("event/cam1", {"v": 1, "kind": "reject", "camera": "cam1", "seq": 1, "ts_ns": None,
                    "reason": "payload size mismatch"}),
    ("event/cam1", {"v": 1, "kind": "drop", "camera": "cam1", "seq": 2, "ts_ns": 3,
                    "reason": "overload", "meta": {"coil_id": "C1", "position_mm": 256.0}}),
    ("event/cam1", {"v": 1, "kind": "gap", "camera": "cam1", "first_seq": 3, "last_seq": 4,
                    "missing": 2}),
    ("status/d1", {"v": 1, "kind": "source_lost", "daemon": "d1", "endpoint": "tcp://x:1",
                   "losses": 1}),
    ("event/cam1", result(5, crop=False)),
]  # fmt: skip


@contextmanager
def running(url: str, **settings: Any) -> Iterator[StoreSink]:
    store = open_store(url)
    sink = StoreSink(store, batch_s=0.05, **settings).start()
    try:
        yield sink
    finally:
        sink.stop(5.0)
        store.close()


def feed(sink: StoreSink, messages: list[tuple[str, dict[str, Any]]]) -> None:
    for topic, body in messages:
        sink.take(topic, body)


def settle(sink: StoreSink, timeout_s: float = 30.0) -> None:
    wait_until(sink.idle, timeout_s, "the store to write everything it took")


def rows(sink: StoreSink) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The events and defects without ids and receive times: what both databases must agree on."""
    event_columns = [c for c in events.c if c.name not in ("id", "received_at")]
    defect_columns = [c for c in defects.c if c.name not in ("id", "event_id")]
    with sink.store.engine.connect() as connection:
        got_events = connection.execute(
            select(*event_columns).order_by(events.c.kind, events.c.camera, events.c.seq)
        ).all()
        got_defects = connection.execute(
            select(events.c.camera, events.c.seq, *defect_columns)
            .join(events, defects.c.event_id == events.c.id)
            .order_by(events.c.camera, events.c.seq, defects.c.class_id)
        ).all()
    return [tuple(r) for r in got_events], [tuple(r) for r in got_defects]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'defects.db'}"
    server = request.getfixturevalue("postgres")
    return server.fresh_database(f"edge_{abs(hash(request.node.name)) % 10**8}")


# -- URLs and errors --


def test_db_urls_are_read_and_anything_else_is_refused(tmp_path: Path) -> None:
    plain = parse_db_url(str(tmp_path / "d.db"))
    assert (plain.drivername, plain.database) == ("sqlite", str(tmp_path / "d.db"))
    assert parse_db_url("sqlite:////var/lib/edge/defects.db").database == "/var/lib/edge/defects.db"
    for given in ("postgresql://u@h/db", "postgres://u@h:5433/db", "postgresql+psycopg://u@h/db"):
        assert parse_db_url(given).drivername == "postgresql+psycopg", given
    refused = {
        "mysql://u:pw@h/db": "only SQLite",
        "postgresql+asyncpg://u@h/db": "only SQLite",
        "sqlite://": "names no file",
        "sqlite:///:memory:": "names no file",
        "postgresql://u@h": "names no database",
        "  ": "--db is empty",
    }
    for given, words in refused.items():
        with pytest.raises(StoreError, match=words):
            parse_db_url(given)
    with pytest.raises(StoreError) as caught:
        parse_db_url("mysql://u:s3cret@h/db")
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)


def test_an_unreachable_database_is_named_with_its_password_masked(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(StoreError) as caught:
        open_store(f"postgresql://edge:s3cret@127.0.0.1:{port}/line")
    message = str(caught.value)
    assert f"cannot use the database postgresql+psycopg://edge:***@127.0.0.1:{port}/line" in message
    assert "s3cret" not in message
    with pytest.raises(StoreError, match=r"the folder .*/nowhere' does not exist"):
        open_store(str(tmp_path / "nowhere" / "d.db"))


def test_edge_store_fails_clearly_on_a_bad_or_unreachable_db(tmp_path: Path) -> None:
    runner = CliRunner()
    got = runner.invoke(app, ["store", "--db", "mysql://u@h/db"], prog_name="edge")
    assert got.exit_code == 2 and "error: --db 'mysql://u@h/db': only SQLite" in got.output
    url = f"postgresql://edge:pw@127.0.0.1:{free_port()}/line"
    got = runner.invoke(app, ["store", "--db", url], prog_name="edge")
    assert got.exit_code == 2, got.output
    assert "error: cannot use the database" in got.output and ":pw@" not in got.output


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        (["store", "--db", "postgresql://u@h/db"], "psycopg"),
        (["store"], "sqlalchemy"),
        (["report", "--coil", "C1", "--out", "r"], "matplotlib"),
    ],
)
def test_without_the_store_extra_the_commands_say_what_to_install(
    args: list[str], missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a)
    )
    got = CliRunner().invoke(app, args, prog_name="edge")
    assert got.exit_code == 2
    assert f"error: {missing} is not installed: pip install 'edge[store]'" in got.output


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    open_store(str(path)).close()
    store = open_store(str(path))
    with store.engine.begin() as connection:
        connection.execute(text("INSERT INTO schema_version VALUES (99, '2030-01-01 00:00:00')"))
    store.close()
    with pytest.raises(StoreError, match="schema version 99, newer than this edge knows"):
        open_store(str(path))


# -- the writer --


def test_the_writer_keeps_every_kind_of_event(db_url: str) -> None:
    with running(db_url) as sink:
        feed(sink, MESSAGES)
        sink.invalid("event body is not a v1 map")
        settle(sink)
        got_events, got_defects = rows(sink)
        assert sink.written == 7 and sink.lost == 0
    kinds = sorted(e[0] for e in got_events)
    assert kinds == ["drop", "gap", "invalid", "reject", "result", "result", "source_lost"]
    names = [c.name for c in events.c if c.name not in ("id", "received_at")]
    table = [dict(zip(names, e, strict=True)) for e in got_events]
    first = next(e for e in table if e["kind"] == "result" and e["seq"] == 0)
    assert (first["coil_id"], first["position_mm"], first["strip_length_mm"]) == ("C1", 0.0, 128.0)
    assert (first["side"], first["file"], first["width"], first["height"]) == (
        "top",
        "s0.png",
        1600,
        256,
    )
    assert (first["daemon"], first["defective"], first["latency_ms"]) == ("d1", True, 4.5)
    assert '"scores":[0.1,0.2,0.9,0.0]' in first["body"]
    gap = next(e for e in table if e["kind"] == "gap")
    assert gap["seq"] == 3 and '"last_seq":4' in gap["body"]
    drop = next(e for e in table if e["kind"] == "drop")
    assert (drop["reason"], drop["coil_id"], drop["position_mm"]) == ("overload", "C1", 256.0)
    assert (
        next(e for e in table if e["kind"] == "invalid")["reason"] == "event body is not a v1 map"
    )
    dnames = ["camera", "seq", *(c.name for c in defects.c if c.name not in ("id", "event_id"))]
    found = [dict(zip(dnames, d, strict=True)) for d in got_defects]
    assert [(d["seq"], d["class_id"]) for d in found] == [(0, 3), (5, 3)]
    seq5 = found[1]
    # The union of both components: x 300..810 of 1600 columns of a 128 mm strip at 640 mm.
    assert (seq5["bbox_x"], seq5["bbox_y"], seq5["bbox_w"], seq5["bbox_h"]) == (300, 10, 510, 80)
    assert seq5["x_mm_start"] == pytest.approx(640 + 300 * 0.08)
    assert seq5["x_mm_end"] == pytest.approx(640 + 810 * 0.08)
    assert found[0]["crop_jpeg"] == b"\xff\xd8\xff\xe0fake\xff\xd9"
    assert found[0]["crop_bbox"] == "[290,30,140,70]" and seq5["crop_jpeg"] is None


def test_unusable_meta_is_named_in_the_log_and_the_strip_still_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = result(0)
    odd["meta"]["position_mm"] = "12"
    with running(str(tmp_path / "d.db")) as sink:
        feed(sink, [("event/cam1", odd)])
        settle(sink)
        got, found = rows(sink)
    assert [(e[0], e[5], e[6]) for e in got] == [("result", "C1", None)]
    assert found[0][10] is None  # x_mm_start: no place along the coil without a position
    assert "meta 'position_mm' must be a number >= 0, got '12'" in capsys.readouterr().out


def test_sqlite_and_postgresql_keep_the_same_rows(postgres, tmp_path: Path) -> None:  # noqa: F811
    got = []
    for url in (str(tmp_path / "d.db"), postgres.fresh_database("edge_same")):
        with running(url) as sink:
            feed(sink, MESSAGES)
            settle(sink)
            got.append(rows(sink))
    assert got[0] == got[1]
    assert len(got[0][0]) == 6 and len(got[0][1]) == 2


# -- a live daemon --


def frame(seq: int, image: Any, **meta: Any) -> list[bytes]:
    header = FrameHeader("cam1", seq, time.time_ns(), "raw", image.shape, meta=meta)
    return [bytes(p) for p in encode_frame(header, image.tobytes())]


def test_a_live_daemon_fills_sqlite_and_postgresql_alike(
    start_daemon,
    camera_socket,
    postgres,  # noqa: F811
    tmp_path: Path,
) -> None:
    daemon = start_daemon()
    urls = [str(tmp_path / "live.db"), postgres.fresh_database("edge_live")]
    with running(urls[0]) as lite, running(urls[1]) as pg:
        subscribers = [
            EventSubscriber(daemon.server.publish_endpoint, s).start() for s in (lite, pg)
        ]
        try:
            wait_until(lambda: lite.daemon and pg.daemon, 15, "both stores to hear the daemon")
            cam = camera_socket(daemon.source)
            for seq in range(6):
                image = defective_strip() if seq % 2 else gray_strip()
                meta = {"coil_id": "C7", "position_mm": seq * STRIP_MM, "strip_length_mm": STRIP_MM}
                cam.send_multipart(frame(seq, image, **meta))
            bad = frame(6, gray_strip())
            cam.send_multipart([*bad[:2], b"short"])  # a reject: the payload is not 256 x 1600
            cam.send_multipart(frame(9, defective_strip(), coil_id="C7"))  # 7-8 missing: a gap
            for sink in (lite, pg):
                wait_until(lambda s=sink: s.written >= 9 and s.idle(), 30, "9 events stored")
        finally:
            for subscriber in subscribers:
                subscriber.stop()
        sqlite_rows, pg_rows = rows(lite), rows(pg)
    assert sqlite_rows == pg_rows
    names = [c.name for c in events.c if c.name not in ("id", "received_at")]
    table = [dict(zip(names, e, strict=True)) for e in sqlite_rows[0]]
    assert sorted((e["kind"], e["seq"]) for e in table) == [
        ("gap", 7), ("reject", 6), *(("result", s) for s in (0, 1, 2, 3, 4, 5, 9)),
    ]  # fmt: skip
    results = {e["seq"]: e for e in table if e["kind"] == "result"}
    assert [results[s]["position_mm"] for s in range(6)] == [s * STRIP_MM for s in range(6)]
    assert results[9]["coil_id"] == "C7" and results[9]["position_mm"] is None
    assert [s for s, e in sorted(results.items()) if e["defective"]] == [1, 3, 5, 9]
    # Defects of the dark patch (columns 300..420) of strip 3, placed along the coil.
    dnames = ["camera", "seq", *(c.name for c in defects.c if c.name not in ("id", "event_id"))]
    found = [dict(zip(dnames, d, strict=True)) for d in sqlite_rows[1]]
    dark = next(d for d in found if d["seq"] == 3 and d["class_id"] == 1)
    assert (dark["bbox_x"], dark["bbox_w"]) == (300, 120)
    assert dark["x_mm_start"] == pytest.approx(3 * STRIP_MM + 300 * STRIP_MM / 1600)
    assert {d["class_id"] for d in found if d["seq"] == 9} == {1, 2, 3, 4}
    assert all(d["x_mm_start"] is None for d in found if d["seq"] == 9)


def test_edge_store_runs_until_sigterm_and_writes_what_it_took(
    start_daemon, camera_socket, tmp_path: Path
) -> None:
    daemon = start_daemon()
    path = tmp_path / "cli.db"
    process = subprocess.Popen(
        [*EDGE, "store", "--source", daemon.server.publish_endpoint, "--db", str(path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cam = camera_socket(daemon.source)
        seq = 0

        def stored() -> int:
            try:
                store = open_store(str(path), create=False)
            except StoreError:  # not made yet
                return 0
            try:
                with store.engine.connect() as connection:
                    query = select(func.count()).select_from(events)
                    return int(connection.execute(query).scalar_one())
            finally:
                store.close()

        deadline = time.monotonic() + 30
        while stored() == 0:  # until the store is subscribed: then nothing more is missed
            assert time.monotonic() < deadline, "edge store never wrote an event"
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            cam.send_multipart(frame(seq, gray_strip(), coil_id="C9"))
            seq += 1
            time.sleep(0.2)
        first = seq
        for extra in range(first, first + 5):
            cam.send_multipart(frame(extra, defective_strip(), coil_id="C9"))
        last = first + 4
        daemon.subscriber.wait_for(lambda ev: any(e.get("seq") == last for e in ev), 30)
        time.sleep(0.5)  # published to every subscriber alike: the store has had them too
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "events written, 0 lost" in err
    store = open_store(str(path))
    with store.engine.connect() as connection:
        seqs = set(
            connection.execute(select(events.c.seq).where(events.c.kind == "result")).scalars()
        )
    store.close()
    assert set(range(first, first + 5)) <= seqs


def test_an_event_postgresql_refuses_is_kept_as_invalid_and_blocks_nothing(
    postgres,  # noqa: F811
) -> None:
    url = postgres.fresh_database("edge_refused")
    bad = result(1)
    bad["defects"][0]["class_id"] = 2**40  # beyond PostgreSQL's integer; SQLite would take it
    with running(url) as sink:
        feed(sink, [("event/cam1", result(0)), ("event/cam1", bad), ("event/cam1", result(2))])
        settle(sink)
        got, found = rows(sink)
    assert [(e[0], e[2]) for e in got] == [("invalid", 1), ("result", 0), ("result", 2)]
    assert got[0][13].startswith("the database refused this result event: ")
    assert '"coil_id":"C1"' in got[0][15] and [d[1] for d in found] == [0, 2]


# -- the database away, and back --


def test_postgresql_away_then_back_loses_nothing_within_the_buffer(postgres) -> None:  # noqa: F811
    url = postgres.fresh_database("edge_away")
    with running(url, max_buffer=20, batch_size=10) as sink:
        feed(sink, [("event/cam1", result(s)) for s in range(5)])
        settle(sink)
        postgres.stop()
        try:
            feed(sink, [("event/cam1", result(s)) for s in range(5, 20)])  # 15: within the bound
            wait_until(lambda: not sink.database_ok.is_set(), 15, "the writer to see it away")
        finally:
            postgres.start()
        settle(sink, 60)
        assert (sink.written, sink.lost) == (20, 0)
        # Away again, and more than the buffer holds: what is dropped is counted and recorded.
        postgres.stop()
        try:
            feed(sink, [("event/cam1", result(s)) for s in range(20, 70)])  # 50
            wait_until(lambda: not sink.database_ok.is_set(), 15, "the writer to see it away")
        finally:
            postgres.start()
        settle(sink, 60)
        lost = sink.lost
        assert 50 - 20 - 10 <= lost <= 50 - 20  # the queue holds 20, the retried batch 10 more
        with sink.store.engine.connect() as connection:
            count = connection.execute(select(func.count()).select_from(events)).scalar()
            recorded = connection.execute(select(func.sum(store_losses.c.events))).scalar()
            reasons = set(connection.execute(select(store_losses.c.reason)).scalars())
    assert count + lost == 70
    assert recorded == lost and reasons == {"buffer full while the database was away"}


def test_the_buffer_is_bounded_in_bytes_too_and_its_losses_are_recorded(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "d.db"))
    sink = StoreSink(store, max_buffer_bytes=4500, batch_s=0.05)  # not started yet: it fills
    feed(sink, [("event/cam1", result(0))] * 6)  # ~1 KB each
    assert (sink.taken, sink.lost) == (4, 2)
    sink.start()
    settle(sink)
    assert sink.stop() == 0 and sink.buffered_bytes == 0
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(events)).scalar() == sink.taken
        assert connection.execute(select(func.sum(store_losses.c.events))).scalar() == sink.lost
    store.close()


@contextmanager
def sqlite_locked(path: Path) -> Iterator[None]:
    """Another writer holds the file: the store's writes fail (busy) until this ends."""
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


def test_sqlite_locked_by_another_writer_then_free_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_S", 0.1)
    path = tmp_path / "d.db"
    with running(str(path)) as sink:
        feed(sink, [("event/cam1", result(0))])
        settle(sink)
        with sqlite_locked(path):
            feed(sink, [("event/cam1", result(s)) for s in range(1, 4)])
            wait_until(lambda: not sink.database_ok.is_set(), 10, "the writer to fail")
            assert sink.written == 1
        settle(sink)
        assert (sink.written, sink.lost) == (4, 0)
        assert [e[2] for e in rows(sink)[0]] == [0, 1, 2, 3]


def test_stopping_while_the_database_is_away_counts_what_was_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_S", 0.1)
    path = tmp_path / "d.db"
    with running(str(path)) as sink:
        feed(sink, [("event/cam1", result(0))])
        settle(sink)
        with sqlite_locked(path):
            feed(sink, [("event/cam1", result(s)) for s in range(1, 4)])
            wait_until(lambda: not sink.database_ok.is_set(), 10, "the writer to fail")
            unsaved = sink.stop(0.5)
        assert (unsaved, sink.lost, sink.written) == (3, 3, 1)


# -- retention --


def test_retention_deletes_old_events_and_their_defects_only(db_url: str) -> None:
    with running(db_url) as sink:
        feed(sink, [("event/cam1", result(s)) for s in range(4)])
        settle(sink)
        old = datetime.now(UTC) - timedelta(days=10)
        with sink.store.engine.begin() as connection:
            connection.execute(update(events).where(events.c.seq < 2).values(received_at=old))
        assert delete_older_than(sink.store.engine, 7) == 2
        _, left = rows(sink)
        assert [d[1] for d in left] == [2, 3]
        with sink.store.engine.begin() as connection:
            connection.execute(update(events).where(events.c.seq == 2).values(received_at=old))
    # At start, a store with retention deletes what is too old at once.
    with running(db_url, retention_days=7) as sink:
        wait_until(lambda: sink.retained == 1, 10, "retention at start")
        got, left = rows(sink)
        assert [e[2] for e in got] == [3] and [d[1] for d in left] == [3]


def test_events_lost_before_the_store_are_recorded_as_losses(tmp_path: Path) -> None:
    why = "lost between the daemon and edge store (ZeroMQ: a queue overflowed)"
    with running(str(tmp_path / "d.db")) as sink:
        feed(sink, [("event/cam1", result(0))])
        sink.lost_on_the_way(3, why)
        settle(sink)
        with sink.store.engine.connect() as connection:
            got = connection.execute(select(store_losses.c.events, store_losses.c.reason)).all()
        assert (sink.lost, sink.written) == (3, 1)
    assert [tuple(row) for row in got] == [(3, why)]
