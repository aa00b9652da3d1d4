"""Numbers the bench reports: percentiles, histograms, memory, CPU load and the machine itself."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from edge.tools.bench.workload import StripPool
    from edge.vision.cascade import Cascade

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
PERCENTILES = (50, 95, 99)


def latency_summary(latencies_ms: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """p50/p95/p99/max/mean in ms and the sample count; None figures when there are no samples."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    if values.size == 0:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    p50, p95, p99 = np.percentile(values, PERCENTILES)
    return {
        "count": int(values.size),
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(float(values.max()), 3),
        "mean_ms": round(float(values.mean()), 3),
    }


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process (this one by default) from /proc, in MiB."""
    path = Path(f"/proc/{pid or 'self'}/statm")
    try:
        resident_pages = int(path.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return resident_pages * PAGE_BYTES / 2**20


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class CpuMeter:
    """How busy the whole machine was over an interval, and how much of that was not us.

    Other work on the same cores (another build, a noisy neighbour VM) makes every figure here
    smaller; the report carries this so a reader can tell a slow model from a busy machine.
    """

    def __init__(self) -> None:
        self._start = self._sample()
        self._wall = time.monotonic()

    @staticmethod
    def _machine_ticks() -> tuple[int, int]:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return 0, 0
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), sum(fields[:8]) - idle

    def _own_ticks(self) -> int:
        try:
            fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0
        # utime, stime, cutime, cstime (fields 14-17 of stat; 12-15 after the ")" split):
        # children count once they have been waited for, as the e2e processes are.
        return sum(int(v) for v in fields[11:15])

    def _sample(self) -> tuple[int, int, int]:
        total, busy = self._machine_ticks()
        return total, busy, self._own_ticks()

    def stop(self) -> dict[str, float | None]:
        """CPU use since construction, as % of all cores: the machine's, ours, everyone else's."""
        total0, busy0, own0 = self._start
        total1, busy1, own1 = self._sample()
        ticks = total1 - total0
        if ticks <= 0:
            return {"machine_busy_pct": None, "bench_pct": None, "other_pct": None}
        busy = 100 * (busy1 - busy0) / ticks
        own = 100 * (own1 - own0) / ticks
        return {
            "machine_busy_pct": round(busy, 1),
            "bench_pct": round(min(own, busy), 1),
            "other_pct": round(max(busy - own, 0.0), 1),
        }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _gpus() -> list[str]:
    """GPU names as the NVIDIA driver lists them (none on CPU-only machines)."""
    root = Path("/proc/driver/nvidia/gpus")
    names = []
    if root.is_dir():
        for info in sorted(root.glob("*/information")):
            for line in info.read_text(errors="replace").splitlines():
                if line.startswith("Model:"):
                    names.append(line.split(":", 1)[1].strip())
    return names


def machine_info() -> dict[str, Any]:
    import onnxruntime as ort

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        memory_gb = round(os.sysconf("SC_PHYS_PAGES") * PAGE_BYTES / 2**30, 1)
    except (ValueError, OSError):
        memory_gb = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "gpu": _gpus(),
        "onnxruntime_providers": ort.get_available_providers(),
        "versions": {
            name: _version(name)
            for name in (
                "edge",
                "onnxruntime",
                "numpy",
                "opencv-python-headless",
                "pyzmq",
                "msgpack",
                "tensorrt",
                "openvino",
            )
        },
    }


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_cpu_s(path: Path) -> float | None:
    """utime + stime of a /proc ``stat`` file, in seconds (None if it is gone)."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # utime, stime are fields 14 and 15 of stat: 12 and 13 after the ")" split.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far, all its threads together."""
    return _stat_cpu_s(Path(f"/proc/{pid}/stat"))


class ThreadUse(NamedTuple):
    comm: str  # the thread's OS name
    cpu_s: float  # user + system so far
    switches: int  # context switches so far, voluntary (it waited) and not (preempted)


def thread_use(pid: int) -> dict[int, ThreadUse]:
    """Per thread of a process: its OS name, the CPU seconds it has used and its context
    switches (on a VM each is a wake-up across vCPUs: for the daemon at a line's rates they,
    not the work, were most of a clean strip's CPU)."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        seconds = _stat_cpu_s(task / "stat")
        try:
            comm = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
        except OSError:
            continue
        switches = sum(
            int(line.split()[1])
            for line in status.splitlines()
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"))
        )
        if seconds is not None:
            threads[int(task.name)] = ThreadUse(comm, seconds, switches)
    return threads


def gate_counts(cascade: Cascade, pool: StripPool) -> dict[str, int]:
    """One classifier pass over the pool: classifier tiles, how many passed the gate (for any
    class), and the segmenter windows the gate then lets through."""
    classified = passed = segmented = 0
    for start in range(0, len(pool), 8):
        images = pool.images[start : start + 8]
        work, scores = cascade.classify(images)
        passing = (scores >= cascade.gate).any(axis=1)
        flagged: list[list[Any]] = [[] for _ in images]
        for (i, window), hit in zip(work, passing, strict=True):
            if hit:
                flagged[i].append(window)
        classified += len(work)
        passed += int(passing.sum())
        segmented += len(cascade.segment_work(images, flagged))
    return {
        "strips": len(pool),
        "classifier_tiles": classified,
        "passed_gate": passed,
        "segmenter_tiles": segmented,
    }


def gate_pass_share(counts: dict[str, int]) -> float | None:
    """Classifier tiles that passed the gate / classifier tiles."""
    tiles = counts["classifier_tiles"]
    return round(counts["passed_gate"] / tiles, 4) if tiles else None
