"""The coil report as one self-contained HTML page: the map inline, per-class table, crops.

Nothing external: the PNG and every JPEG crop are data: URLs, the style is inline, so the file
can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from edge.tools.coilreport.draw import time_range
from edge.tools.coilreport.palette import class_colour
from edge.tools.coilreport.query import CoilData, Defect

MAX_CROPS = 500  # crops shown in the gallery; the page says how many more there were

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f4f4f4; }
td.name { text-align: left; }
span.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.6em; }
figure { margin: 0; border: 1px solid #ddd; padding: 0.3em; font-size: 0.8em; }
figure img { display: block; max-height: 128px; }
img.map { max-width: 100%; }
"""


def _data_url(kind: str, data: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _metres(mm: float | None) -> str:
    return "-" if mm is None else f"{mm / 1000:.3f}"


def class_table(data: CoilData) -> str:
    rows = []
    for class_id, entry in data.per_class().items():
        swatch = f'<span class="swatch" style="background:{class_colour(class_id)}"></span>'
        rows.append(
            f"<tr><td class='name'>{swatch} {class_id}</td><td class='name'>"
            f"{escape(entry['name'])}</td><td>{entry['count']}</td><td>{entry['strips']}</td>"
            f"<td>{entry['components']}</td><td>{entry['area_px']:,}</td></tr>"
        )
    if not rows:
        rows.append("<tr><td class='name' colspan='6'>no defects</td></tr>")
    head = (
        "<tr><th>class</th><th>name</th><th>defects</th><th>strips</th><th>components</th>"
        "<th>area (px)</th></tr>"
    )
    return f"<table id='classes'>{head}{''.join(rows)}</table>"


def defect_table(data: CoilData) -> str:
    head = (
        "<tr><th>class</th><th>camera</th><th>seq</th><th>from (m)</th><th>to (m)</th>"
        "<th>area (px)</th><th>score</th><th>file</th></tr>"
    )
    rows = [
        f"<tr><td>{d.class_id}</td><td class='name'>{escape(d.strip.camera)}</td>"
        f"<td>{d.strip.seq}</td><td>{_metres(d.x_mm_start)}</td><td>{_metres(d.x_mm_end)}</td>"
        f"<td>{d.area_px:,}</td><td>{'-' if d.score is None else f'{d.score:.3f}'}</td>"
        f"<td class='name'>{escape(d.strip.file or '')}</td></tr>"
        for d in data.defects
    ]
    return f"<table id='defects'>{head}{''.join(rows)}</table>"


def _caption(defect: Defect) -> str:
    where = _metres(defect.x_mm_start)
    return escape(f"{defect.class_id} {defect.name} · {defect.strip.camera} #{defect.strip.seq}"
                  f" · {where} m")  # fmt: skip


def gallery(data: CoilData) -> str:
    cropped = [d for d in data.defects if d.crop_jpeg]
    if not cropped:
        return "<p>No crops in the store for this coil (edge store keeps them when the daemon sends them).</p>"
    figures = [
        f"<figure><img alt='{_caption(d)}' src='{_data_url('image/jpeg', d.crop_jpeg or b'')}'"
        f" style='border:3px solid {class_colour(d.class_id)}'><figcaption>{_caption(d)}"
        "</figcaption></figure>"
        for d in cropped[:MAX_CROPS]
    ]
    more = len(cropped) - MAX_CROPS
    tail = f"<p>{more} more crops not shown.</p>" if more > 0 else ""
    return f"<div class='gallery'>{''.join(figures)}</div>{tail}"


def report_html(data: CoilData, png: bytes, summary: dict[str, Any]) -> str:
    title = f"Coil {data.coil_id}"
    dropped = sum(data.not_inspected.values())
    facts = [
        f"received {time_range(data)}",
        f"{summary['strips']} strips inspected, {summary['strips_defective']} with defects",
    ]
    if summary.get("length_mm"):
        start, end = summary["length_mm"]
        facts.append(f"from {_metres(start)} m to {_metres(end)} m along the coil")
    if dropped:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(data.not_inspected.items()))
        facts.append(f"{dropped} strips NOT inspected (dropped: {reasons})")
    items = "".join(f"<li>{escape(fact)}</li>" for fact in facts)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><ul>{items}</ul>"
        f"<img class='map' alt='coil map' src='{_data_url('image/png', png)}'>"
        f"<h2>Per class</h2>{class_table(data)}"
        f"<h2>Crops</h2>{gallery(data)}"
        f"<h2>Defects</h2>{defect_table(data)}"
        "</body></html>\n"
    )
