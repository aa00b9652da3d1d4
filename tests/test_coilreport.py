"""edge report: a recorded coil (the 25 real dev strips replayed through a live daemon, each
128 mm further along the coil) from the store to a coil map, an HTML page and a summary."""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

pytest.importorskip("sqlalchemy", reason="the store extra is not installed")
pytest.importorskip("matplotlib", reason="the store extra is not installed")

from typer.testing import CliRunner

from edge.cli.main import app
from edge.daemon.config import shipped_models
from edge.line.bridges.subscriber import EventSubscriber
from edge.line.store.database import open_store
from edge.line.store.records import union_bbox
from edge.line.store.writer import StoreSink
from edge.protocol import FrameHeader, encode_frame
from edge.tools.coilreport.palette import CLASS_COLOURS, class_colour
from edge.tools.coilreport.query import ReportError
from edge.tools.coilreport.report import write_report
from tests.bridge_fixtures import wait_until

COIL = "C123"
STRIP_MM = 128.0
EXAMPLE = Path("/tmp/coilreport_example.png")
# What the shipped reference models find on the 25 real strips, sent in file-name order, one
# every 128 mm: the golden figures. Counts are exact; areas and places may move by a few pixels
# with another ONNX Runtime (a pixel is 0.08 mm along the coil here).
GOLDEN_CLASSES = {
    "1": {"name": "pits", "count": 3, "strips": 3, "area_px": 4951},
    "2": {"name": "scratches", "count": 2, "strips": 2, "area_px": 10265},
    "3": {"name": "scale", "count": 14, "strips": 14, "area_px": 215166},
    "4": {"name": "holes", "count": 6, "strips": 6, "area_px": 172791},
}
# (strip seq, class, from mm, to mm along the coil)
GOLDEN_DEFECTS = [
    (0, 1, 42.3, 47.8), (0, 2, 45.4, 55.0), (1, 4, 183.1, 234.2), (3, 3, 425.9, 490.1),
    (4, 1, 624.4, 625.9), (5, 1, 666.9, 673.3), (5, 2, 670.7, 675.8), (6, 3, 771.3, 868.2),
    (7, 3, 987.1, 991.4), (9, 3, 1206.6, 1211.6), (10, 3, 1385.7, 1390.2),
    (14, 3, 1830.3, 1876.0), (15, 3, 1946.6, 1948.6), (16, 4, 2065.9, 2176.0),
    (17, 3, 2229.9, 2256.7), (18, 3, 2333.1, 2428.0), (18, 4, 2339.8, 2371.7),
    (19, 3, 2522.6, 2524.0), (19, 4, 2432.0, 2438.3), (21, 3, 2725.7, 2729.8),
    (22, 3, 2840.5, 2893.4), (22, 4, 2886.5, 2890.2), (23, 3, 2959.6, 2963.0),
    (23, 4, 3008.0, 3018.2), (24, 3, 3109.1, 3167.3),
]  # fmt: skip


def frame(seq: int, image: np.ndarray, meta: dict[str, Any]) -> list[bytes]:
    header = FrameHeader("top1", seq, time.time_ns(), "raw", image.shape, meta=meta)
    return [bytes(p) for p in encode_frame(header, image.tobytes())]


def flat(rows: list[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]


def runner(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), prog_name="edge")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Filled once by the test below that replays the coil; the CLI test reads it."""
    yield {"db": tmp_path_factory.mktemp("coil") / "defects.db"}


def test_a_replayed_coil_is_stored_and_reported(
    recorded: dict[str, Any], severstal: Path, start_daemon, camera_socket, tmp_path: Path
) -> None:
    paths = sorted((severstal / "images").iterdir())
    assert len(paths) == 25
    daemon = start_daemon(queue_size=64, models=shipped_models(), publish_crops=True)
    store = open_store(str(recorded["db"]))
    sink = StoreSink(store, batch_s=0.05).start()
    subscriber = EventSubscriber(daemon.server.publish_endpoint, sink).start()
    try:
        wait_until(lambda: sink.daemon, 15, "the store to hear the daemon")
        cam = camera_socket(daemon.source)
        for seq, path in enumerate(paths):
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            meta = {"coil_id": COIL, "position_mm": seq * STRIP_MM, "strip_length_mm": STRIP_MM,
                    "side": "top", "file": path.name}  # fmt: skip
            cam.send_multipart(frame(seq, image, meta))
        wait_until(lambda: sink.written >= 25 and sink.idle(), 60, "25 strips stored")
    finally:
        subscriber.stop()
        sink.stop()
    published = [e for e in daemon.subscriber.wait_for(lambda ev: len(ev) >= 25, 30)]
    assert [e["kind"] for e in published] == ["result"] * 25
    out = tmp_path / "report"
    summary = write_report(store, COIL, out)
    store.close()
    recorded["summary"], recorded["published"] = summary, published

    # The golden figures: strips, defective strips, per-class counts and areas.
    assert summary["strips"] == 25 and summary["length_mm"] == [0.0, 25 * STRIP_MM]
    assert summary["not_inspected"] == {} and summary["strips_without_position"] == 0
    classes = summary["classes"]
    assert {k: (c["name"], c["count"], c["strips"]) for k, c in classes.items()} == {
        k: (c["name"], c["count"], c["strips"]) for k, c in GOLDEN_CLASSES.items()
    }
    for class_id, entry in GOLDEN_CLASSES.items():
        assert classes[class_id]["area_px"] == pytest.approx(entry["area_px"], rel=0.05), class_id
    places = [(d["seq"], d["class_id"], d["x_mm_start"], d["x_mm_end"]) for d in summary["defects"]]
    assert [p[:2] for p in places] == [g[:2] for g in GOLDEN_DEFECTS]
    assert flat(places) == pytest.approx(flat(GOLDEN_DEFECTS), abs=2.0)
    # Every defect where the daemon found it: its strip's place plus its columns' share.
    expected = []
    for event in published:
        for d in event["defects"]:
            x, _, w, _ = union_bbox(d["components"]) or (0, 0, 0, 0)
            start = event["seq"] * STRIP_MM
            expected.append((event["seq"], d["class_id"], start + x * STRIP_MM / 1600,
                             start + (x + w) * STRIP_MM / 1600, d["area_px"]))  # fmt: skip
    got = [(d["seq"], d["class_id"], d["x_mm_start"], d["x_mm_end"], d["area_px"])
           for d in summary["defects"]]  # fmt: skip
    assert flat(sorted(got)) == pytest.approx(flat(sorted(expected)))
    for d in summary["defects"]:
        assert d["file"] == paths[d["seq"]].name
        assert d["strip_position_mm"] <= d["x_mm_start"] <= d["x_mm_end"]
        assert d["x_mm_end"] <= d["strip_position_mm"] + STRIP_MM

    # The PNG: a real image of the drawn size, with the classes' colours on it.
    png = (out / "coil_map.png").read_bytes()
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (400, 1200, 3)
    shutil.copyfile(out / "coil_map.png", EXAMPLE)
    shutil.copyfile(out / "report.html", EXAMPLE.with_suffix(".html"))
    for class_id, entry in summary["classes"].items():
        if entry["count"]:
            rgb = tuple(int(class_colour(int(class_id))[i : i + 2], 16) for i in (1, 3, 5))
            near = np.abs(image[..., ::-1].astype(int) - rgb).sum(axis=2) < 40
            assert near.any(), f"class {class_id}'s colour is not on the map"

    # The page: self-contained, the table and the figures in it.
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"(src|href)=['\"](?!data:)", page), "a reference to another file"
    assert "data:image/png;base64," in page and "<table id='classes'>" in page
    for class_id, entry in summary["classes"].items():
        assert f"<td>{entry['count']}</td><td>{entry['strips']}</td>" in page, class_id
    assert f"{summary['strips']} strips inspected" in page
    assert json.loads((out / "summary.json").read_text()) == summary
    # The daemon's crops (publish_crops): one per defect, in the gallery, each a real JPEG.
    assert [d["crop"] for d in summary["defects"]] == [True] * len(GOLDEN_DEFECTS)
    crops = re.findall(r"src='data:image/jpeg;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(crops) == len(GOLDEN_DEFECTS) == page.count("<figure>")
    for crop in crops:
        pixels = cv2.imdecode(np.frombuffer(base64.b64decode(crop), np.uint8), cv2.IMREAD_GRAYSCALE)
        assert pixels is not None and 0 < pixels.shape[0] <= 256 and 0 < pixels.shape[1] <= 256


def test_the_cli_reports_a_coil_and_names_an_unknown_one(
    recorded: dict[str, Any], tmp_path: Path
) -> None:
    if "summary" not in recorded:
        pytest.skip("needs the replayed coil of the test above")
    db = f"sqlite:///{recorded['db']}"
    got = runner("report", "--db", db, "--coil", COIL, "--out", str(tmp_path / "r"))
    assert got.exit_code == 0, got.output
    assert f"coil {COIL}: 25 strips" in got.output
    reported = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert reported["classes"] == recorded["summary"]["classes"]
    got = runner("report", "--db", db, "--coil", "C999", "--out", str(tmp_path / "x"))
    assert got.exit_code == 2
    assert f"error: coil 'C999' is not in the store at sqlite:///{recorded['db']}" in got.output
    assert f"known coils: {COIL}" in got.output
    assert not (tmp_path / "x").exists()
    # A shift: the coil's strips all came within the last hour, none after.
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    got = runner("report", "--db", db, "--coil", COIL, "--out", str(tmp_path / "s"),
                 "--since", hour_ago, "--until", later)  # fmt: skip
    assert got.exit_code == 0, got.output
    got = runner("report", "--db", db, "--out", str(tmp_path / "shift"), "--since", hour_ago)
    assert got.exit_code == 0, got.output
    shift = json.loads((tmp_path / "shift" / "summary.json").read_text())
    assert list(shift["coils"]) == [COIL] and shift["coils"][COIL]["strips"] == 25
    assert (
        f"<a href='{COIL}/report.html'>{COIL}</a>"
        in (tmp_path / "shift" / "index.html").read_text()
    )
    assert (tmp_path / "shift" / COIL / "coil_map.png").is_file()
    got = runner("report", "--db", db, "--out", str(tmp_path / "none"))
    assert got.exit_code == 2 and "give --coil C123, or --since" in got.output
    got = runner("report", "--db", db, "--coil", COIL, "--out", str(tmp_path / "t"),
                 "--since", later)  # fmt: skip
    assert got.exit_code == 2 and f"coil '{COIL}' has no inspected strip between" in got.output
    got = runner("report", "--db", db, "--coil", COIL, "--out", str(tmp_path / "u"),
                 "--since", "yesterday")  # fmt: skip
    assert got.exit_code == 2 and "not an ISO date/time: 'yesterday'" in got.output


def test_a_store_that_does_not_exist_is_not_created_by_the_report(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    got = runner("report", "--db", str(missing), "--coil", COIL, "--out", str(tmp_path / "r"))
    assert got.exit_code == 2 and "no such file" in got.output
    assert not missing.exists()


def test_crops_fill_the_gallery_inline(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "d.db"))
    sink = StoreSink(store, batch_s=0.05).start()
    jpeg = cv2.imencode(".jpg", np.full((24, 40), 30, np.uint8))[1].tobytes()
    for seq in range(3):
        components = [{"bbox": [100 + 200 * seq, 20, 40, 24], "area_px": 900}]
        defect = {"class_id": 1 + seq, "name": f"c{1 + seq}", "score": 0.8, "area_px": 900,
                  "mask_rle": "", "components": components,
                  "crop": {"bbox": components[0]["bbox"], "jpeg": jpeg}}  # fmt: skip
        sink.take("event/cam1", {
            "v": 1, "kind": "result", "camera": "cam1", "seq": seq, "ts_ns": seq,
            "shape": [256, 1600], "defective": True, "scores": [], "defects": [defect],
            "latency_ms": 1.0, "model": {},
            "meta": {"coil_id": "K1", "position_mm": 1000.0 * seq, "strip_length_mm": 1000.0},
        })  # fmt: skip
    wait_until(sink.idle, 10, "the store to write")
    sink.stop()
    summary = write_report(store, "K1", tmp_path / "r")
    store.close()
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("<figure>") == 3 and page.count("data:image/jpeg;base64,") == 3
    assert [d["crop"] for d in summary["defects"]] == [True] * 3
    assert [d["x_mm_start"] for d in summary["defects"]] == [62.5, 1187.5, 2312.5]
    for class_id in (1, 2, 3):
        assert CLASS_COLOURS[class_id] in page


def test_an_unknown_coil_lists_the_known_ones(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "d.db"))
    with pytest.raises(ReportError, match="known coils: none"):
        write_report(store, "C1", tmp_path / "r")
    store.close()
