"""What the bench's figures add up to: the ratios against their targets, and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import numpy as np

# What the issue asks of this machine class (docs/performance.md).
TARGETS: Final = {
    "e2e_over_backend": (">=", 0.90),
    "cascade_over_naive": (">=", 3.0),
    # e2e: p99 at 80 % of saturation / p99 at 10 %, and the frames shed at 80 % / frames sent.
    "tail_inflation": ("<=", 2.0),
    "drop_share_at_80": ("<=", 0.001),
    # host: the daemon's own CPU per answered strip on null models, and e2e on them.
    "host_clean_cpu_ms": ("<=", 0.4),
    "host_defective_cpu_ms": ("<=", 5.0),
    "e2e_null_strips_per_s": (">=", 1500.0),
    # agreement (a backend other than ONNX Runtime): per class masks IoU against FP32 ONNX
    # Runtime over every strip, and the share of strips with the same defective/clean verdict.
    "agreement_min_class_iou": (">=", 0.98),
    "agreement_same_verdict_share": (">=", 0.99),
}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


def ratios(sections: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The figures the targets are about; None where a mode they need did not run."""
    ceiling = sections.get("backend", {}).get("strips_per_s")
    e2e = sections.get("e2e", {})
    host = sections.get("host", {})
    return {
        "e2e_over_backend": _ratio(e2e.get("strips_per_s"), ceiling),
        "cascade_over_naive": _ratio(
            sections.get("pipeline", {}).get("strips_per_s"),
            sections.get("naive", {}).get("strips_per_s"),
        ),
        "tail_inflation": e2e.get("tail_inflation"),
        "drop_share_at_80": e2e.get("drop_share_at_80"),
        "host_clean_cpu_ms": (host.get("clean") or {}).get("cpu_ms_per_strip"),
        "host_defective_cpu_ms": (host.get("defective") or {}).get("cpu_ms_per_strip"),
        "e2e_null_strips_per_s": (host.get("e2e_null") or {}).get("strips_per_s"),
        "agreement_min_class_iou": sections.get("agreement", {}).get("min_class_iou"),
        "agreement_same_verdict_share": sections.get("agreement", {}).get("same_verdict_share"),
    }


def targets(
    ratios: dict[str, float | None], sections: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each target, the value it was held to and whether it was met (None: not measured)."""
    met: dict[str, dict[str, Any]] = {
        key: {
            "target": f"{op} {bound:g}",
            "value": ratios[key],
            "met": None
            if ratios[key] is None
            else (ratios[key] >= bound if op == ">=" else ratios[key] <= bound),
        }
        for key, (op, bound) in TARGETS.items()
    }
    if sections.get("e2e", {}).get("memory"):
        memory = sections["e2e"]["memory"]
        growth, start = memory["rss_growth_mb"], memory["rss_mb_start"]
        flat = None if growth is None else bool(growth <= max(16.0, 0.05 * start))
        met["memory_bounded_at_2x"] = {
            "target": "RSS growth over the 2x step <= max(16 MiB, 5 % of its start)",
            "value": growth,
            "met": flat,
        }
    return met


def backend_in_strips(section: dict[str, Any], tiles_per_strip: int, seg_per_strip: float) -> None:
    """The bare models' best tiles/s as strips/s at this pool's gate rate: the ceiling."""
    cls = section["classifier"]["best_tiles_per_s"]
    seg = section["segmenter"]["best_tiles_per_s"]
    seconds_per_strip = tiles_per_strip / cls + seg_per_strip / seg
    strips = 1.0 / seconds_per_strip
    best = next(
        r
        for r in section["classifier"]["runs"]
        if r["batch"] == section["classifier"]["best_batch"]
    )
    section.update(
        {
            "strips_per_s": round(strips, 3),
            "tiles_per_s": round(strips * (tiles_per_strip + seg_per_strip), 2),
            "latency": best["call_latency"],
            "latency_is": "one classifier call at its best batch size",
            "batch_size_histogram": {
                role: section[role]["batch_size_histogram"] for role in ("classifier", "segmenter")
            },
            "drops": 0,
        }
    )


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
