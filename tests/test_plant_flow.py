"""The plant path as a user types it, every part its own process: `edge camera --images` with
coil meta -> `edge run` -> `edge store` (SQLite) -> `edge report`, on the 25 real dev strips."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="the store extra is not installed")
pytest.importorskip("matplotlib", reason="the store extra is not installed")

from edge.daemon.config import shipped_models
from tests.conftest import free_port
from tests.daemon_process import DaemonProcess
from tests.test_coilreport import GOLDEN_CLASSES, GOLDEN_DEFECTS, STRIP_MM, flat

EDGE = [sys.executable, "-m", "edge.cli.main"]


def _per_frame(db: Path) -> list[str]:
    """The kinds of the per-frame events stored so far (one per strip the daemon received)."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT kind FROM events WHERE kind IN ('result', 'reject', 'drop') ORDER BY seq"
        ).fetchall()
    return [kind for (kind,) in rows]


@pytest.mark.slow
def test_camera_daemon_store_and_report_as_separate_processes(
    severstal: Path, tmp_path: Path
) -> None:
    cam = f"tcp://127.0.0.1:{free_port()}"
    db = tmp_path / "defects.db"
    with DaemonProcess(shipped_models(), "--source", cam) as daemon:
        # Its first status: the models are loaded, so no strip waits behind their loading (a
        # slow machine would otherwise drop the first ones for overload, rightly).
        daemon.listener().start(first_within_s=120)
        store = subprocess.Popen(
            [*EDGE, "store", "--source", daemon.publish, "--db", f"sqlite:///{db}"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert store.stderr is not None
            # Once it has heard the daemon's status, it is subscribed: no event can pass it by.
            for _ in range(50):
                if "store hears the daemon" in store.stderr.readline():
                    break
            else:
                pytest.fail("edge store never heard the daemon")
            camera = subprocess.run(
                [*EDGE, "camera", "--to", cam, "--images", str(severstal / "images"),
                 "--count", "25", "--fps", "10", "--camera-id", "top1",
                 "--meta", "coil_id=C123", "--meta", "side=top",
                 "--strip-length-mm", str(STRIP_MM)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert camera.returncode == 0, camera.stderr
            deadline = time.monotonic() + 60
            while len(_per_frame(db)) < 25:
                assert time.monotonic() < deadline, f"{len(_per_frame(db))} of 25 events stored"
                time.sleep(0.2)
            assert _per_frame(db) == ["result"] * 25
        finally:
            store.terminate()
            _, err = store.communicate(timeout=30)
        assert store.returncode == 0, err
        assert "lost" in err and " 0 lost" in err

    out = tmp_path / "report"
    report = subprocess.run(
        [*EDGE, "report", "--db", f"sqlite:///{db}", "--coil", "C123", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strips"] == 25
    assert {k: (c["name"], c["count"]) for k, c in summary["classes"].items()} == {
        k: (c["name"], c["count"]) for k, c in GOLDEN_CLASSES.items()
    }
    places = [(d["seq"], d["class_id"], d["x_mm_start"], d["x_mm_end"]) for d in summary["defects"]]
    assert [p[:2] for p in places] == [g[:2] for g in GOLDEN_DEFECTS]
    assert flat(places) == pytest.approx(flat(GOLDEN_DEFECTS), abs=2.0)
    # edge camera --images named each strip's file.
    files = sorted(p.name for p in (severstal / "images").iterdir())
    assert all(d["file"] == files[d["seq"]] for d in summary["defects"])
    assert (out / "coil_map.png").stat().st_size > 10_000
