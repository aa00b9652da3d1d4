"""``edge report``: from the store to a folder with the coil map, the HTML page and a summary.

- ``coil_map.png``: the map (edge.tools.coilreport.draw);
- ``report.html``: the self-contained page (edge.tools.coilreport.page);
- ``summary.json``: what both show, as numbers, for a program to check or archive.

Without a coil (a shift report): every coil inspected in the time range gets those three files
in a folder of its own, and ``index.html`` with ``summary.json`` list them.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from edge.line.store.database import Store
from edge.tools.coilreport.draw import coil_map_png
from edge.tools.coilreport.page import report_html
from edge.tools.coilreport.query import CoilData, ReportError, coils_between, load_coil

PNG_NAME, HTML_NAME, SUMMARY_NAME = "coil_map.png", "report.html", "summary.json"
INDEX_NAME = "index.html"


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def summarise(data: CoilData) -> dict[str, Any]:
    placed = [s for s in data.strips if s.position_mm is not None and s.strip_length_mm]
    length = None
    if placed:
        length = [
            min(s.position_mm or 0.0 for s in placed),
            max((s.position_mm or 0.0) + (s.strip_length_mm or 0.0) for s in placed),
        ]
    return {
        "coil_id": data.coil_id,
        "since": _iso(data.since),
        "until": _iso(data.until),
        "first_at": _iso(data.first_at),
        "last_at": _iso(data.last_at),
        "strips": len(data.strips),
        "strips_defective": sum(1 for s in data.strips if s.defective),
        "strips_without_position": len(data.strips) - len(placed),
        "not_inspected": data.not_inspected,
        "length_mm": length,
        "classes": {str(k): v for k, v in data.per_class().items()},
        "defects": [
            {
                "class_id": d.class_id,
                "name": d.name,
                "camera": d.strip.camera,
                "seq": d.strip.seq,
                "file": d.strip.file,
                "strip_position_mm": d.strip.position_mm,
                "x_mm_start": d.x_mm_start,
                "x_mm_end": d.x_mm_end,
                "area_px": d.area_px,
                "boxes": d.boxes,
                "crop": d.crop_jpeg is not None,
            }
            for d in data.defects
        ],
    }


def write_report(
    store: Store,
    coil_id: str,
    out: Path,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """Write the three files into ``out`` (made if missing); the summary."""
    if since is not None and until is not None and since >= until:
        raise ReportError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    data = load_coil(store, coil_id, since, until)
    summary = summarise(data)
    png = coil_map_png(data)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / PNG_NAME).write_bytes(png)
        (out / HTML_NAME).write_text(report_html(data, png, summary), encoding="utf-8")
        (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    except OSError as err:
        raise ReportError(f"cannot write the report to {out}: {err}") from None
    return summary


def folder_name(coil_id: str, taken: set[str]) -> str:
    """A folder name for a coil id: safe characters only, unique among ``taken``."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", coil_id).strip(".") or "coil"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def write_shift(
    store: Store, out: Path, since: datetime | None, until: datetime | None
) -> dict[str, Any]:
    """A report for every coil inspected in [since, until) in ``out/<coil>/``, and an index."""
    if since is not None and until is not None and since >= until:
        raise ReportError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    coils, unplaced = coils_between(store, since, until)
    if not coils:
        raise ReportError(
            f"no coil was inspected between {_iso(since) or 'the start'} and {_iso(until) or 'now'}"
            f" in {store.where}" + (f" ({unplaced} strips without a coil_id)" if unplaced else "")
        )
    taken: set[str] = set()
    reports = {}
    for coil_id in coils:
        folder = folder_name(coil_id, taken)
        reports[folder] = write_report(store, coil_id, out / folder, since, until)
    summary = {"since": _iso(since), "until": _iso(until), "strips_without_coil": unplaced,
               "coils": {s["coil_id"]: {"folder": f, "strips": s["strips"],
                                         "classes": s["classes"]} for f, s in reports.items()}}  # fmt: skip
    rows = "".join(
        f"<tr><td><a href='{escape(folder)}/{HTML_NAME}'>{escape(s['coil_id'])}</a></td>"
        f"<td>{s['strips']}</td><td>{s['strips_defective']}</td>"
        f"<td>{sum(c['count'] for c in s['classes'].values())}</td></tr>"
        for folder, s in reports.items()
    )
    note = (
        f"<p>{unplaced} strips without a coil_id are not in any coil report.</p>"
        if unplaced
        else ""
    )
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>Shift report</title>"
        "</head><body style='font-family:sans-serif'><h1>Shift report</h1>"
        f"<p>{escape(_iso(since) or 'the start')} to {escape(_iso(until) or 'now')}</p>{note}"
        "<table border='1' cellpadding='4'><tr><th>coil</th><th>strips</th>"
        f"<th>with defects</th><th>defects</th></tr>{rows}</table></body></html>\n"
    )
    (out / INDEX_NAME).write_text(page, encoding="utf-8")
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
