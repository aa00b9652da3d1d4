"""The daemon's lifecycle: startup -> main loop -> shutdown, and the three threads it runs.

    receiver thread   SUB socket -> validate/decode -> WorkQueue (bounded; rejects and drops
                      become events right here)
    inference thread  WorkQueue -> batches across cameras -> Cascade.infer (the models)
    publisher thread  Cascade.finish (stitching) and post-processing of each inferred batch
                      into result events, while the models run the next one; events -> PUB
                      socket; a periodic status message (edge.publishing)

The main thread loads the models, binds the sockets (CURVE optional), starts the metrics/health
HTTP server if asked, tells systemd READY=1, then watches: watchdog pings only while the
inference loop goes round, reloads on SIGHUP. SIGTERM/SIGINT set ``should_exit``; shutdown stops
receiving, lets the inference thread finish what is queued (bounded by ``drain_timeout_s``;
frames it cannot finish get a ``drop`` event with reason ``shutdown``), publishes every event and
a final status, then closes the sockets.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from edge import protocol
from edge.cascade import Cascade
from edge.config import Config
from edge.frames import Frame
from edge.ledger import Ledger
from edge.metrics import HealthServer, Metrics, readiness
from edge.notify import Heartbeat, Notifier
from edge.protocol import ProtocolError
from edge.publishing import STOP, Batch, PublishLoop, Retire
from edge.reload import Handover, load_cascade, prepare, remove_pid_file, write_pid_file
from edge.security import CurveServer, SecurityError
from edge.sinks import EventPublisher
from edge.sinks import result_events as result_events  # re-exported: edge bench runs it
from edge.sources import FrameReceiver, read_frame
from edge.workqueue import Closed, WorkQueue

log = structlog.get_logger(__name__)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Batches inferred but not yet post-processed and published (see Server._infer).
_PENDING_BATCHES = 2


class Server:
    def __init__(
        self,
        config: Config,
        cascade: Cascade | None = None,
        read_config: Callable[[], Config] | None = None,
    ) -> None:
        """``read_config`` re-reads the configuration on reload (default: the same one)."""
        self.config = config
        self.cascade = cascade
        self._read_config = read_config
        self._reload_requested = threading.Event()
        self._reloader: threading.Thread | None = None
        self._handover = Handover()
        self.should_exit = threading.Event()
        self.started = threading.Event()
        self.ledger = Ledger()
        self.publish_endpoint: str | None = None
        self.bound_sources: list[str] = []
        self.failure: BaseException | None = None
        self._stop_receiving = threading.Event()
        self._abandon = threading.Event()  # drain ran out of time: stop after the current batch
        self._queue: WorkQueue[Frame] = WorkQueue(config.queue_size, config.overload)
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._context: zmq.Context | None = None
        self._threads: list[threading.Thread] = []
        self._started_at = time.monotonic()
        self.batches = 0
        self.batch_sizes: Counter[int] = Counter()  # strips per batch, for the shutdown log
        self._pending = threading.BoundedSemaphore(_PENDING_BATCHES)
        self.notifier = Notifier()
        # Monotonic time the inference loop last went round: the watchdog and /readyz trust
        # only this, so a hung model stops both even while every other thread looks alive.
        self.last_progress = time.monotonic()
        self.metrics = Metrics(
            queue_depth=lambda: len(self._queue),
            progress_age_s=lambda: time.monotonic() - self.last_progress,
        )
        self.health: HealthServer | None = None
        self.curve: CurveServer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Blocking: the whole life of the daemon. Returns the process exit code."""
        self.install_signal_handlers()
        try:
            self.startup()
            self.main_loop()
        finally:
            self.shutdown()
        return 1 if self.failure else 0

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may; an embedding caller sets should_exit itself
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self.handle_exit)
        signal.signal(signal.SIGHUP, self.handle_reload)

    def handle_exit(self, sig: int, frame: object) -> None:
        log.info("signal received, shutting down", signal=signal.Signals(sig).name)
        self.should_exit.set()

    def handle_reload(self, sig: int, frame: object) -> None:
        self._reload_requested.set()  # the main loop reloads: a signal handler must stay short

    def startup(self) -> None:
        cfg = self.config
        if self.cascade is None:
            self.cascade = load_cascade(cfg)
        self._context = zmq.Context()
        secure = None
        if cfg.curve_secret_key is not None and cfg.curve_authorized_clients is not None:
            self.curve = CurveServer(
                self._context, cfg.curve_secret_key, cfg.curve_authorized_clients
            )
            secure = self.curve.secure
        publisher = EventPublisher(self._context, cfg.publish, sndhwm=cfg.sndhwm, secure=secure)
        try:
            receiver = FrameReceiver(
                self._context,
                connect=cfg.sources,
                bind=cfg.bind_sources,
                rcvhwm=cfg.rcvhwm,
                max_message_bytes=cfg.max_message_bytes,
                secure=secure,
            )
            try:
                if cfg.metrics_address is not None:
                    self.health = HealthServer(*cfg.metrics_address, self.metrics, self.readiness)
            except BaseException:
                receiver.close()
                raise
        except BaseException:
            publisher.close(linger_ms=0)  # an open socket would hang Context.term() in shutdown
            raise
        self.publish_endpoint = publisher.endpoint
        self.bound_sources = receiver.bound
        self.metrics.serving(self.cascade.classifier.backend.name, self.cascade.model_ids)
        if self.health is not None:
            self.health.start()
        self._started_at = time.monotonic()
        self.last_progress = time.monotonic()
        self._publishing = PublishLoop(
            self._outbox, self._pending, self.ledger, self.metrics, self.status,
            lambda: self.config,
        )  # fmt: skip
        self._threads = [
            threading.Thread(target=self._guard(self._publishing.run, publisher), name="publisher"),
            threading.Thread(target=self._guard(self._inference_loop), name="inference"),
            threading.Thread(target=self._guard(self._receive_loop, receiver), name="receiver"),
        ]
        for thread in self._threads:
            thread.start()
        log.info(
            "daemon ready",
            publish=self.publish_endpoint,
            sources=cfg.sources,
            bind_sources=self.bound_sources,
            models=self.cascade.model_ids,
            backend=self.cascade.classifier.backend.name,
            metrics=self.health and "http://{}:{}/metrics".format(*self.health.address),
        )
        if cfg.pid_file is not None:
            write_pid_file(cfg.pid_file)
        self.started.set()
        self.notifier.ready(
            f"ready: models {self.cascade.model_ids}, publishing on {self.publish_endpoint}"
        )

    def progressing(self) -> bool:
        """Whether the inference loop went round within ``stall_timeout_s``."""
        return time.monotonic() - self.last_progress < self.config.stall_timeout_s

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for /readyz: models loaded and the inference loop going round."""
        return readiness(
            self.started.is_set(),
            self.should_exit.is_set(),
            time.monotonic() - self.last_progress,
            self.config.stall_timeout_s,
        )

    def main_loop(self) -> None:
        heartbeat = Heartbeat(self.notifier, self.ledger.snapshot, lambda: len(self._queue))
        while not self.should_exit.wait(0.2):
            if self.failure is not None:
                break
            if self._reload_requested.is_set() and not self.reloading:
                # On its own thread: loading models can outlast WatchdogSec, and the pings
                # must go on meanwhile. A SIGHUP during a reload runs once it is done.
                self._reload_requested.clear()
                self._reloader = threading.Thread(target=self.reload, name="reload", daemon=True)
                self._reloader.start()
            heartbeat.tick(self.progressing(), self.config.status_interval_s)

    @property
    def reloading(self) -> bool:
        return self._reloader is not None and self._reloader.is_alive()

    def reload(self) -> bool:
        """Swap in the re-read config and freshly loaded models, or keep serving the old ones."""
        self.notifier.reloading()
        log.info("reload: reading the config and loading the models")
        if self.curve is not None:
            try:
                self.curve.reload()
            except SecurityError as err:
                log.error("reload: authorized clients kept as they were", error=str(err))
        try:
            prepared = prepare(self.config, self._read_config)
        except Exception as err:  # any reason at all: the running daemon stays as it was
            log.error("reload refused; the running models keep serving", error=str(err))
            self.metrics.reloads.labels("refused").inc()
            self.notifier.ready(f"reload refused, still serving the previous models: {err}")
            return False
        for key in prepared.needs_restart:
            log.warning("reload: this key needs a restart; keeping the running value", key=key)
        cfg = self.config = prepared.config
        self._queue.capacity, self._queue.policy = cfg.queue_size, cfg.overload
        self._handover.offer(prepared.cascade)
        self.metrics.reloads.labels("ok").inc()
        self.metrics.serving(prepared.cascade.classifier.backend.name, prepared.cascade.model_ids)
        log.info("reloaded", models=prepared.cascade.model_ids)
        self.notifier.ready(f"reloaded: models {prepared.cascade.model_ids}")
        return True

    def shutdown(self) -> None:
        self.notifier.stopping()
        if not self._threads:  # startup failed part-way
            self._close_context()
            self.notifier.close()
            if self.health is not None:
                self.health.close()
            return
        receiver, inference, publisher = self._threads[2], self._threads[1], self._threads[0]
        self._stop_receiving.set()
        receiver.join()
        self._queue.close()
        inference.join(self.config.drain_timeout_s)
        if inference.is_alive():
            self._abandon.set()
            inference.join()
        for frame in self._queue.take_all():
            self._drop(frame, "shutdown")
        if self._reloader is not None:
            self._reloader.join(self.config.drain_timeout_s)
        self._handover.discard()
        self._outbox.put(STOP)
        publisher.join()
        self._close_context()
        if self.cascade is not None:
            self.cascade.close()
        log.info(
            "daemon stopped",
            counts=self.ledger.snapshot(),
            batches=self.batches,
            batch_sizes={str(k): v for k, v in sorted(self.batch_sizes.items())},
        )
        self.notifier.close()
        if self.health is not None:
            self.health.close()
        if self.config.pid_file is not None:
            remove_pid_file(self.config.pid_file)

    def _close_context(self) -> None:
        if self.curve is not None:
            self.curve.stop()  # its ZAP socket lives in the context: close it before term
            self.curve = None
        if self._context is not None:
            self._context.term()
            self._context = None

    def _guard(self, target: Any, *args: Any) -> Any:
        """Run a thread body; an unexpected error stops the daemon loudly instead of hanging it."""

        def body() -> None:
            try:
                target(*args)
            except BaseException as exc:
                self.failure = exc
                log.exception("thread failed, stopping", thread=threading.current_thread().name)
                self.should_exit.set()
                self._stop_receiving.set()
                self._queue.close()
                if threading.current_thread().name == "publisher":
                    return
                self._outbox.put(STOP)

        return body

    # -- receiver thread -------------------------------------------------------------------

    def _receive_loop(self, receiver: FrameReceiver) -> None:
        try:
            while not self._stop_receiving.is_set():
                parts = receiver.receive(timeout_ms=100)
                if parts is not None:
                    self._accept(parts)
        finally:
            receiver.close()

    def _accept(self, parts: list[zmq.Frame]) -> None:
        start = time.perf_counter()
        try:
            frame = read_frame(parts)
        except ProtocolError as err:
            self.ledger.count(err.camera, "received")
            self.metrics.frame_received(err.camera)
            if err.seq != protocol.UNKNOWN_SEQ:
                # Received, though rejected: it must not be reported missing in a gap too.
                self._observe_seq(err.camera, err.seq)
            self._reject(err.camera, err.seq, err.reason)
            return
        header = frame.header
        self.metrics.stage("decode", time.perf_counter() - start)
        self.ledger.count(header.camera, "received")
        self.metrics.frame_received(header.camera)
        self._observe_seq(header.camera, header.seq)
        left_over = self._queue.put(frame, stop=self._stop_receiving)
        if left_over is frame:  # blocked until shutdown: never queued
            self._drop(frame, "shutdown")
        elif left_over is not None:
            self._drop(left_over, "overload")

    def _observe_seq(self, camera: str, seq: int) -> None:
        for event in self.ledger.observe_seq(camera, seq):
            if event["kind"] == protocol.KIND_GAP:
                self.metrics.gap(camera, event["missing"])
            self._emit(camera, event)

    # -- inference thread ------------------------------------------------------------------

    def _inference_loop(self) -> None:
        max_strips = self._strips_per_batch()
        while not self._abandon.is_set():
            self.last_progress = time.monotonic()
            if self._handover.waiting:
                self._adopt_reloaded()
                max_strips = self._strips_per_batch()
            try:
                batch = self._queue.get_batch(max_strips, self.config.max_wait_ms / 1000)
            except Closed:
                return
            if batch:
                self._infer(batch)

    def _strips_per_batch(self) -> int:
        assert self.cascade is not None
        tiles_per_strip = max(1, len(self.cascade.classifier.inputs.windows(256, 1600)))
        return max(1, self.config.max_batch // tiles_per_strip)

    def _adopt_reloaded(self) -> None:
        """Between two batches: serve the reloaded cascade; retire the old one in order."""
        new = self._handover.take()
        if new is not None:
            if self.cascade is not None:
                self._outbox.put(Retire(self.cascade))
            self.cascade = new

    def _infer(self, frames: list[Frame]) -> None:
        cascade = self.cascade
        assert cascade is not None
        start = time.perf_counter()
        try:
            inferred = cascade.infer([f.pixels for f in frames])
        except Exception:
            if len(frames) > 1:
                # Find the frame that breaks the batch so the others still get results.
                for frame in frames:
                    self._infer([frame])
                return
            frame = frames[0]
            log.exception("inference failed", camera=frame.header.camera, seq=frame.header.seq)
            self._reject(
                frame.header.camera,
                frame.header.seq,
                f"inference failed on a {list(frame.header.shape)} frame",
                frame.header.ts_ns,
            )
            return
        self.metrics.stage("infer", time.perf_counter() - start)
        self.metrics.batch_strips.observe(len(frames))
        self.batches += 1
        self.batch_sizes[len(frames)] += 1
        # Stitching and post-processing (thresholds, components, RLE) run on the publisher
        # thread, so the models start on the next batch meanwhile. A few batches at most wait
        # for it: memory stays bounded, and a publisher that falls behind slows inference,
        # which sheds load.
        while not self._pending.acquire(timeout=0.1):
            if self.failure is not None:
                return  # the publisher died: nothing can be published any more
        self._outbox.put(Batch(frames, inferred, cascade))

    # -- events ----------------------------------------------------------------------------

    def _emit(self, camera: str, event: dict[str, Any]) -> None:
        self._outbox.put((protocol.event_topic(camera), event))

    def _reject(self, camera: str, seq: int, reason: str, ts_ns: int | None = None) -> None:
        self.ledger.count(camera, "rejects")
        self.metrics.reject(camera, reason)
        log.warning("frame rejected", camera=camera, seq=seq, reason=reason)
        self._emit(camera, protocol.reject_event(camera, seq, reason, ts_ns))

    def _drop(self, frame: Frame, reason: str) -> None:
        self.ledger.count(frame.header.camera, "drops")
        self.metrics.drop(frame.header.camera, reason)
        self._emit(frame.header.camera, protocol.drop_event(frame.header, reason))

    def status(self) -> dict[str, Any]:
        return protocol.status_event(
            self.config.daemon_id,
            uptime_s=round(time.monotonic() - self._started_at, 3),
            cameras=self.ledger.snapshot(),
            queue_depth=len(self._queue),
            batches=self.batches,
            models=self.cascade.model_ids if self.cascade else {},
        )
