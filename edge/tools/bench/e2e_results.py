"""The e2e mode's figures: what each load step measured, and the report section from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.tools.bench.agents import KINDS
from edge.tools.bench.stats import latency_summary

SETTLE_S = 1.0  # the start of each step is left out: the queue is still filling or draining
LOW_LOAD = 0.1  # the low-load step, as a share of saturation: tail_inflation's reference
LOW_LOAD_MIN_RATE = 5.0  # strips/s: below that a short step has too few latency samples
RESULT, REJECT, DROP, GAP = (KINDS.index(k) for k in ("result", "reject", "drop", "gap"))


@dataclass
class Step:
    name: str
    offered: float  # strips/s, all cameras together
    seconds: float
    sent: int = 0
    start_ns: int = 0
    end_ns: int = 0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (s into the step, MiB)
    figures: dict[str, Any] = field(default_factory=dict)


def step_figures(step: Step, records: np.ndarray) -> dict[str, Any]:
    """Throughput, latency and load shed for the frames captured during ``step``."""
    settle_ns = int(min(SETTLE_S, step.seconds / 4) * 1e9)
    window_s = max((step.end_ns - step.start_ns - settle_ns) / 1e9, 1e-9)
    mine = records[(records["ts_ns"] >= step.start_ns) & (records["ts_ns"] <= step.end_ns)]
    results = mine[mine["kind"] == RESULT]
    # Throughput counts results as they reached the subscriber during the step (after the
    # settle time), whatever their capture time: under overload that is the daemon's pace.
    received = records[
        (records["kind"] == RESULT)
        & (records["recv_ns"] >= step.start_ns + settle_ns)
        & (records["recv_ns"] <= step.end_ns)
    ]
    steady = results[results["ts_ns"] >= step.start_ns + settle_ns]
    latencies = (steady["recv_ns"] - steady["ts_ns"]) / 1e6
    gaps = records[
        (records["kind"] == GAP)
        & (records["recv_ns"] >= step.start_ns)
        & (records["recv_ns"] <= step.end_ns + int(2e9))
    ]
    drops = int((mine["kind"] == DROP).sum())
    missing = int(gaps["missing"].sum())
    answered = len(mine)
    return {
        "offered_strips_per_s": round(step.offered, 3),
        "sent": step.sent,
        "seconds": round((step.end_ns - step.start_ns) / 1e9, 3),
        "strips_per_s": round(len(received) / window_s, 3),
        "results": len(results),
        "defective_results": int(results["defective"].sum()),
        "drops": drops,
        "rejects": int((mine["kind"] == REJECT).sum()),
        "missing_in_transport": missing,
        "unanswered": max(step.sent - answered - missing, 0),
        "latency": latency_summary(latencies),
        # Defective strips also go through the segmenter and post-processing: the tail.
        "latency_clean": latency_summary(latencies[steady["defective"] == 0]),
        "latency_defective": latency_summary(latencies[steady["defective"] == 1]),
        # The daemon's own part (frame received -> result event built), from the events.
        "daemon_latency": latency_summary(steady["daemon_ms"]),
    }


def shed(fig: dict[str, Any]) -> int:
    """Frames a step's figures show as lost to load: drop events and frames missing in gaps."""
    return int(fig["drops"] + fig["missing_in_transport"])


def saturated(fig: dict[str, Any]) -> bool:
    """A step's figures show load shed or a pace under 90 % of what was offered."""
    return shed(fig) > 0 or fig["strips_per_s"] < 0.9 * fig["offered_strips_per_s"]


def between_rate(ramp: list[Step]) -> float | None:
    """The rate to offer between the ramp's last two steps, or None.

    Where the last step was overloaded and delivered less than the step before it was offered
    (which kept up), the best step delivered is only a floor of the saturation: the daemon's
    pace lies anywhere between the two offers (1,500 and 2,250 on the host mode's null pair).
    One step at their mean narrows that by half."""
    if len(ramp) < 2:
        return None
    kept, over = ramp[-2], ramp[-1]
    if saturated(kept.figures) or not saturated(over.figures):
        return None
    if over.figures["strips_per_s"] >= kept.offered:
        return None
    return (kept.offered + over.offered) / 2


def low_rate(saturation: float) -> float:
    """The offered rate of the low-load step: LOW_LOAD x saturation, but at least
    LOW_LOAD_MIN_RATE strips/s (so the step has latency samples), and at most half of it."""
    return min(max(LOW_LOAD * saturation, LOW_LOAD_MIN_RATE), 0.5 * saturation)


def tail_inflation(at80: dict[str, Any], low: dict[str, Any]) -> float | None:
    """p99 latency at 80 % of saturation over p99 at low load: what queueing adds to the tail
    (the strips' own spread, clean against defective, is in both and cancels)."""
    loaded, idle = at80["latency"]["p99_ms"], low["latency"]["p99_ms"]
    if loaded is None or not idle:
        return None
    return round(loaded / idle, 3)


def load_shed_at(fig: dict[str, Any]) -> tuple[int, float | None]:
    """Frames shed in a step, and their share of the frames sent in it."""
    lost = shed(fig)
    return lost, (round(lost / fig["sent"], 6) if fig["sent"] else None)


def e2e_section(
    settings: dict[str, Any],
    warm: Step,
    ramp: list[Step],
    saturation: float,
    low: Step,
    at80: Step,
    over: Step | None,
    records: np.ndarray,
    stopped: dict[str, Any] | None,
    rss_samples: list[tuple[float, float]],
) -> dict[str, Any]:
    """The e2e section of the report; ``settings`` is what the run was told, as it is reported.

    ``over`` (the 2x step, for memory) is None when the run left it out.
    """
    counts = (stopped or {}).get("counts", {})
    steps = [*ramp, low, at80, *([over] if over is not None else [])]
    sent = sum(s.sent for s in (warm, *steps))
    kinds = records["kind"]
    answered = int(np.isin(kinds, (RESULT, REJECT, DROP)).sum())
    missing = int(records[kinds == GAP]["missing"].sum())
    drops_at_80, drop_share_at_80 = load_shed_at(at80.figures)
    return {
        "strips_per_s": round(saturation, 3),
        # False when no ramp step shed load: the daemon was never pushed past what it can do,
        # and strips_per_s is a lower bound of its saturation throughput.
        "saturated": any(saturated(s.figures) for s in ramp),
        "tiles_per_s": None,  # filled in by the caller from the tiles per strip
        "latency": at80.figures["latency"],
        "latency_at": "80% of saturation",
        "latency_low_load": low.figures["latency"],
        "tail_inflation": tail_inflation(at80.figures, low.figures),
        "tail_inflation_is": f"p99 latency at 80% of saturation / p99 at {low.name}",
        "drops_at_80": drops_at_80,
        "drop_share_at_80": drop_share_at_80,
        "drops": int((kinds == DROP).sum()),
        "missing_in_transport": missing,
        "steps": [{"name": s.name, **s.figures} for s in steps],
        "memory": _memory(over) if over is not None else None,
        "batch_size_histogram": (stopped or {}).get("batch_sizes"),
        # Every frame sent gets one result, reject or drop, or is reported missing in a gap.
        "accounting": {
            "sent": sent,
            "events": answered,
            "missing_in_transport": missing,
            "unaccounted": sent - answered - missing,
            "daemon_counts": counts,
        },
        "settings": settings,
        "rss_mb_all_samples": rss_samples,
    }


def _memory(over: Step) -> dict[str, Any]:
    """The daemon's RSS over the 2x step."""
    memory = [v for _, v in over.rss_mb]
    # The first seconds of the overload step fill the queue and ZeroMQ's buffers: growth is
    # measured from there, so "flat" means what a plant cares about (no leak, no creep).
    head = memory[: max(1, len(memory) // 5)]
    tail = memory[-max(1, len(memory) // 5) :]
    return {
        "offered_strips_per_s": round(over.offered, 3),
        "seconds": over.figures["seconds"],
        "drops": over.figures["drops"],
        "rss_mb_samples": over.rss_mb,
        "rss_mb_start": round(float(np.median(head)), 2) if memory else None,
        "rss_mb_end": round(float(np.median(tail)), 2) if memory else None,
        "rss_mb_max": round(max(memory), 2) if memory else None,
        "rss_growth_mb": round(float(np.median(tail) - np.median(head)), 2) if memory else None,
    }
