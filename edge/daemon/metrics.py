"""Prometheus metrics and the health endpoints, served over HTTP by ``edge run --metrics``.

Each Server has its own CollectorRegistry (not prometheus-client's global one), so several
daemons in one process, as in the tests, never share or clash over a metric.

    /metrics   Prometheus text format
    /healthz   200 while the process serves HTTP at all (liveness)
    /readyz    200 when the models are loaded and the inference loop went round within
               ``stall_timeout_s``; 503 with the reason otherwise (readiness)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    make_wsgi_app,
)

from edge.daemon.ledger import OVERFLOW
from edge.protocol import UNKNOWN_CAMERA

log = structlog.get_logger(__name__)

# A forged or misconfigured camera id must not grow the registry without bound: cameras past
# the daemon's table (max_cameras) are counted under the ledger's overflow label.
MAX_CAMERA_LABELS = 64
OTHER_CAMERAS = OVERFLOW
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
TILE_BUCKETS = (1, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Every label value a camera's counters can take, exported at 0 from its first frame: a
# dashboard then shows "0 drops", not "no data", and rate() in an alert has a series to read.
DROP_REASONS = ("overload", "deadline", "shutdown")
REJECT_CATEGORIES = ("protocol", "decode", "limit", "inference", "postprocess")
RELOAD_OUTCOMES = ("ok", "refused")


def reject_category(reason: str) -> str:
    """A bounded label for a reject reason (the full reason is in the event and the log)."""
    if reason.startswith(("undecodable", "decoded ", "jpeg image", "png image")):
        return "decode"
    if reason.startswith("inference failed"):
        return "inference"
    if reason.startswith("post-processing failed"):
        return "postprocess"
    if reason.startswith(("frame height", "frame width", "frame pixels", "camera table full")):
        return "limit"
    return "protocol"


class Metrics:
    def __init__(
        self,
        queue_depth: Callable[[], int],
        progress_age_s: Callable[[], float],
        max_cameras: int = MAX_CAMERA_LABELS,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.max_cameras = max_cameras
        self._cameras: set[str] = set()
        self._lock = threading.Lock()
        # Labelled children by (metric, label values): prometheus_client's labels() takes a
        # lock and builds a key on every call (a frame's metrics: 7.1 us with it, 3.4 us
        # cached, measured). Bounded as the series are: cameras x reasons or classes.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.received = Counter(
            "edge_frames_received", "Frames received per camera", ["camera"], registry=r
        )
        self.results = Counter("edge_results", "Result events per camera", ["camera"], registry=r)
        # Class names come from the segmenter's config: bounded by the models, not the traffic.
        self.defects = Counter(
            "edge_defects",
            "Results that found this defect class, per camera",
            ["camera", "defect_class"],
            registry=r,
        )
        self.defect_area = Counter(
            "edge_defect_area_pixels",
            "Pixels of this defect class found, per camera",
            ["camera", "defect_class"],
            registry=r,
        )
        # CPU seconds, resident memory, open file descriptors, start time: process_* series.
        ProcessCollector(registry=r)
        self.rejects = Counter(
            "edge_rejects", "Reject events per camera and reason", ["camera", "reason"], registry=r
        )
        self.drops = Counter(
            "edge_drops", "Drop events per camera and reason", ["camera", "reason"], registry=r
        )
        self.missing = Counter(
            "edge_missing_frames", "Frames never received (seq gaps)", ["camera"], registry=r
        )
        self.batch_strips = Histogram(
            "edge_batch_strips", "Strips per inference batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_tiles = Histogram(
            "edge_batch_tiles",
            "Model tiles per inference batch (at most max_batch, unless one strip has more)",
            buckets=TILE_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "edge_stage_seconds",
            "Time per stage: decode (per frame), infer and postprocess (per batch), "
            "end_to_end (per frame, receipt to result)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        Gauge("edge_queue_depth", "Strips waiting for inference", registry=r).set_function(
            queue_depth
        )
        Gauge(
            "edge_inference_progress_age_seconds",
            "Seconds since the inference loop last went round",
            registry=r,
        ).set_function(progress_age_s)
        self.ready = Gauge("edge_ready", "1 when /readyz would answer 200", registry=r)
        self.backend = Info("edge_backend", "Backend and model versions serving", registry=r)
        self.reloads = Counter("edge_reloads", "Reloads by outcome", ["outcome"], registry=r)
        for outcome in RELOAD_OUTCOMES:
            self.reloads.labels(outcome)
        # Labelled by the configured endpoints only: bounded by the config.
        self.source_up = Gauge(
            "edge_source_up",
            "1 while the daemon is connected to this source (--source endpoints)",
            ["endpoint"],
            registry=r,
        )
        self.source_losses = Counter(
            "edge_source_losses", "Times a --source connection was lost", ["endpoint"], registry=r
        )

    def _labelled(self, metric: Any, *values: str) -> Any:
        key = (metric, values)
        child = self._children.get(key)
        if child is None:  # two threads may both make it: labels() gives both the same child
            child = self._children[key] = metric.labels(*values)
        return child

    def camera(self, camera: str) -> str:
        if camera in self._cameras or camera in (UNKNOWN_CAMERA, OVERFLOW):
            return camera  # a set only grows: a camera seen once is in for good
        with self._lock:
            if camera in self._cameras:
                return camera
            if len(self._cameras) < self.max_cameras:
                self._cameras.add(camera)
                self._export_zeros(camera)
                return camera
        return OVERFLOW

    def _export_zeros(self, camera: str) -> None:
        for counter in (self.received, self.results, self.missing):
            counter.labels(camera)
        for reason in DROP_REASONS:
            self.drops.labels(camera, reason)
        for category in REJECT_CATEGORIES:
            self.rejects.labels(camera, category)

    def frame_received(self, camera: str) -> None:
        self._labelled(self.received, self.camera(camera)).inc()

    def result(self, camera: str, latency_s: float, defects: Sequence[dict[str, Any]] = ()) -> None:
        label = self.camera(camera)
        self._labelled(self.results, label).inc()
        self._labelled(self.stage_seconds, "end_to_end").observe(latency_s)
        for defect in defects:
            self._labelled(self.defects, label, defect["name"]).inc()
            self._labelled(self.defect_area, label, defect["name"]).inc(defect["area_px"])

    def reject(self, camera: str, reason: str) -> None:
        self._labelled(self.rejects, self.camera(camera), reject_category(reason)).inc()

    def drop(self, camera: str, reason: str) -> None:
        self._labelled(self.drops, self.camera(camera), reason).inc()

    def gap(self, camera: str, missing: int) -> None:
        self._labelled(self.missing, self.camera(camera)).inc(missing)

    def stage(self, stage: str, seconds: float) -> None:
        self._labelled(self.stage_seconds, stage).observe(seconds)

    def serving(self, backend: str, models: dict[str, str]) -> None:
        self.backend.info({"backend": backend, **models})


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news; errors still reach the WSGI app's log


class HealthServer:
    """The HTTP server on its own thread; ``ready()`` returns (ok, reason) for /readyz."""

    def __init__(
        self, host: str, port: int, metrics: Metrics, ready: Callable[[], tuple[bool, str]]
    ) -> None:
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._ready = ready
        self._metrics = metrics
        try:
            self._httpd = make_server(host, port, self._app, _Server, handler_class=_QuietHandler)
        except OSError as err:
            raise OSError(err.errno, f"metrics on {host}:{port}: {err.strerror}") from err
        self.address: tuple[str, int] = (host, self._httpd.server_port)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics"
        )
        self._thread.daemon = True

    def start(self) -> None:
        self._thread.start()

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            ok, _ = self._ready()
            self._metrics.ready.set(1 if ok else 0)
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok")
        if path == "/readyz":
            ok, reason = self._ready()
            return _text(start_response, "200 OK" if ok else "503 Service Unavailable", reason)
        return _text(start_response, "404 Not Found", "try /metrics, /healthz or /readyz")

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def _text(start_response: Any, status: str, body: str) -> list[bytes]:
    data = (body + "\n").encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    )
    return [data]


def readiness(
    started: bool,
    stopping: bool,
    progress_age_s: float,
    stall_timeout_s: float,
    sources_down: Iterable[tuple[str, bool, float]] = (),
) -> tuple[bool, str]:
    """(ready, why): what /readyz answers.

    ``sources_down``: (endpoint, ever connected, seconds since) for each source not connected.
    """
    if not started:
        return False, "starting: loading models"
    if stopping:
        return False, "shutting down"
    if progress_age_s >= stall_timeout_s:
        return False, (
            f"inference loop stalled: no progress for {progress_age_s:.1f}s "
            f"(stall_timeout_s = {stall_timeout_s})"
        )
    down = [
        f"{endpoint} ({'lost' if ever else 'not connected yet'}, {seconds:.1f}s)"
        for endpoint, ever, seconds in sources_down
    ]
    if down:
        return False, "source down: " + ", ".join(down)
    return True, "ready"
