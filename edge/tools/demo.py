"""``edge demo``: a simulated line on one machine, with a live summary.

Synthetic cameras -> the real daemon (its real sockets, on loopback) -> a listener, each on its
own thread. Everything the daemon does on the line happens here too, only the strips are made up.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from edge.daemon.config import load_config
from edge.daemon.server import Server
from edge.line.camera import FramePublisher, Pacer
from edge.line.listen import listen
from edge.vision.synthetic import CLASS_NAMES, strip_stream


@dataclass
class Tally:
    """What the listener saw, for the summary table."""

    sent: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    defective: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    truth: Counter[str] = field(default_factory=Counter)  # what the synthetic strips really held
    truly_defective: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, topic: str, body: dict[str, Any]) -> None:
        with self.lock:
            if body.get("kind") == "status":
                self.statuses += 1
                return
            self.kinds[body.get("kind", "?")] += 1
            if body.get("kind") == "result":
                self.latencies.append(body["latency_ms"])
                drawn = body.get("meta", {}).get("synthetic_classes", [])
                self.truly_defective += bool(drawn)
                self.truth.update(CLASS_NAMES[c - 1] for c in drawn)
                if body["defective"]:
                    self.defective += 1
                    self.classes.update(d["name"] for d in body["defects"])

    def table(self, elapsed: float) -> Table:
        with self.lock:
            lat = sorted(self.latencies)
            table = Table(title=f"edge demo — {elapsed:.0f} s")
            table.add_column("", style="bold")
            table.add_column("daemon", justify="right")
            table.add_column("drawn", justify="right", style="dim")
            results = self.kinds["result"]
            table.add_row("frames sent", "", str(self.sent))
            table.add_row("results", str(results), "")
            table.add_row("  defective strips", str(self.defective), str(self.truly_defective))
            for name in CLASS_NAMES:
                table.add_row(f"    {name}", str(self.classes[name]), str(self.truth[name]))
            for kind in ("reject", "drop", "gap", "camera_restart"):
                table.add_row(f"{kind}s", str(self.kinds[kind]), "")
            if lat:
                table.add_row("latency p50", f"{statistics.median(lat):.1f} ms", "")
                table.add_row("latency p95", f"{lat[int(0.95 * (len(lat) - 1))]:.1f} ms", "")
                table.add_row("throughput", f"{results / max(elapsed, 1e-9):.1f} strips/s", "")
            return table


def _camera(
    name: str,
    seed: int,
    fps: float,
    defect_rate: float,
    ready: threading.Event,
    endpoints: dict[str, str],
    stop: threading.Event,
    tally: Tally,
    done: threading.Event,
    hang_up: threading.Event,
) -> None:
    """Send until ``stop``, say ``done``, and keep the socket open until ``hang_up``: a camera
    that hung up before the daemon stopped would be reported as a lost source."""
    with FramePublisher("tcp://127.0.0.1:*") as pub:
        endpoints[name] = pub.endpoint
        ready.set()
        try:
            _send(pub, name, seed, fps, defect_rate, stop, tally)
        finally:
            done.set()
            hang_up.wait(60)


def _send(
    pub: FramePublisher,
    name: str,
    seed: int,
    fps: float,
    defect_rate: float,
    stop: threading.Event,
    tally: Tally,
) -> None:
    while not pub.wait_for_subscriber(0.1):
        if stop.is_set():
            return
    pacer = Pacer(fps, sleep=stop.wait)
    for seq, strip in enumerate(strip_stream(seed, defect_rate=defect_rate)):
        pacer.wait()
        if stop.is_set():
            return
        pub.send_image(name, seq, strip.image, meta={"synthetic_classes": list(strip.classes)})
        with tally.lock:
            tally.sent += 1


def run_demo(
    *, duration: float, cameras: int, fps: float, defect_rate: float, models: Path | None, seed: int
) -> int:
    # The daemon keeps its cameras' last seqs here, as under systemd (and says nothing about it).
    with tempfile.TemporaryDirectory(prefix="edge-demo-") as state:
        return _run_demo(duration, cameras, fps, defect_rate, models, seed, Path(state))


def _run_demo(
    duration: float,
    cameras: int,
    fps: float,
    defect_rate: float,
    models: Path | None,
    seed: int,
    state_dir: Path,
) -> int:
    console = Console(stderr=False)
    tally = Tally()
    stop, hang_up = threading.Event(), threading.Event()
    endpoints: dict[str, str] = {}
    threads = []
    done = [threading.Event() for _ in range(cameras)]
    for i in range(cameras):
        ready = threading.Event()
        name = f"cam{i + 1}"
        thread = threading.Thread(
            target=_camera,
            args=(
                name,
                seed + i,
                fps,
                defect_rate,
                ready,
                endpoints,
                stop,
                tally,
                done[i],
                hang_up,
            ),
            name=name,
            daemon=True,
        )
        thread.start()
        ready.wait(5)
        threads.append(thread)

    config = load_config(
        None,
        sources=list(endpoints.values()),
        publish="tcp://127.0.0.1:*",
        models=models,
        daemon_id="demo",
        status_interval_s=0.5,
        state_dir=state_dir,
    )
    server = Server(config)
    server_thread = threading.Thread(target=server.run, name="daemon", daemon=True)
    console.print(
        f"[bold]edge demo[/]: {cameras} synthetic cameras at {fps:g} strips/s each, "
        f"{defect_rate:.0%} defective; loading models from {config.models} ..."
    )
    server_thread.start()
    if not server.started.wait(60):
        console.print("[red]the daemon did not start[/]")
        return 1
    # The listener outlives the cameras: it must see the events of the daemon's final drain.
    stop_listening = threading.Event()
    listener = threading.Thread(
        target=listen,
        args=(server.publish_endpoint, tally.add),
        kwargs={"stop": stop_listening},
        daemon=True,
    )
    listener.start()
    start = time.monotonic()
    with Live(tally.table(0), console=console, refresh_per_second=4) as live:
        try:
            while duration <= 0 or time.monotonic() - start < duration:
                time.sleep(0.25)
                live.update(tally.table(time.monotonic() - start))
                if server.failure is not None:
                    break
        except KeyboardInterrupt:
            pass
        elapsed = time.monotonic() - start
        stop.set()
        for sent in done:
            sent.wait(5)
        server.should_exit.set()
        server_thread.join(30)
        hang_up.set()
        for thread in threads:
            thread.join(5)
        time.sleep(0.5)  # the last events reach the listener
        stop_listening.set()
        listener.join(5)
        live.update(tally.table(elapsed))
    console.print()
    counts = server.ledger.snapshot()
    received = sum(c["received"] for c in counts.values())
    accounted = sum(c["results"] + c["rejects"] + c["drops"] for c in counts.values())
    console.print(
        f"daemon: {received} frames received, {accounted} accounted for "
        f"(results + rejects + drops), {server.batches} batches"
    )
    return 1 if server.failure else 0
