"""The daemon's lifecycle: startup -> main loop -> shutdown, and the threads it runs.

    receiver thread    SUB socket -> validate/decode -> WorkQueue (bounded; rejects and drops
                       become events right here)
    inference workers  WorkQueue -> batches across cameras -> Cascade.infer on the worker's
                       own copy of the models; each batch gets a ticket (edge.inference)
    publisher thread   Cascade.finish (stitching) and post-processing of each inferred batch
                       into result events, in ticket order, while the models run the next
                       ones; events -> PUB socket; a periodic status message (edge.publishing)

The main thread loads the models, binds the sockets (CURVE optional), starts the metrics/health
HTTP server if asked, tells systemd READY=1, then watches: watchdog pings only while every
inference worker goes round, reloads on SIGHUP. SIGTERM/SIGINT set ``should_exit``; shutdown stops
receiving, lets the inference workers finish what is queued (bounded by ``drain_timeout_s``;
frames they cannot finish get a ``drop`` event with reason ``shutdown``), publishes every event and
a final status, then closes the sockets.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from edge import protocol
from edge.config import Config
from edge.frames import Frame
from edge.inference import InferenceWorkers
from edge.ledger import Ledger
from edge.metrics import HealthServer, Metrics, readiness
from edge.notify import Heartbeat, Notifier
from edge.protocol import ProtocolError
from edge.publishing import STOP, PublishLoop
from edge.reload import Handover, load_models, prepare, remove_pid_file, write_pid_file
from edge.replicas import Replicas
from edge.security import CurveServer, SecurityError
from edge.sinks import EventPublisher
from edge.sinks import result_events as result_events  # re-exported: edge bench runs it
from edge.sources import FrameReceiver, read_frame
from edge.workqueue import WorkQueue

log = structlog.get_logger(__name__)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Server:
    def __init__(
        self,
        config: Config,
        replicas: Replicas | None = None,
        read_config: Callable[[], Config] | None = None,
    ) -> None:
        """``read_config`` re-reads the configuration on reload (default: the same one)."""
        self.config = config
        self.replicas = replicas  # until startup hands them to the inference workers
        self.workers: InferenceWorkers | None = None
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
        self._queue: WorkQueue[Frame] = WorkQueue(config.queue_size, config.overload)
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._context: zmq.Context | None = None
        self._threads: list[threading.Thread] = []
        self._started_at = time.monotonic()
        self.notifier = Notifier()
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
        if self.replicas is None:
            self.replicas = load_models(cfg)
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
        replicas = self.replicas
        self.metrics.serving(replicas.backend_name, replicas.model_ids)
        if self.health is not None:
            self.health.start()
        self._started_at = time.monotonic()
        workers = self.workers = InferenceWorkers(
            replicas, self._queue, self._outbox, self._handover, self.metrics,
            lambda: self.config, lambda: self.failure is not None,
        )  # fmt: skip
        self._publishing = PublishLoop(
            self._outbox, workers.tickets, workers.unfinished, self.ledger, self.metrics,
            self.status, lambda: self.config,
        )  # fmt: skip
        self._threads = [
            threading.Thread(target=self._guard(self._publishing.run, publisher), name="publisher"),
            threading.Thread(target=self._guard(self._receive_loop, receiver), name="receiver"),
            *[
                threading.Thread(target=self._guard(workers.run, i), name=f"inference-{i}")
                for i in range(workers.count)
            ],
        ]
        for thread in self._threads:
            thread.start()
        log.info(
            "daemon ready",
            publish=self.publish_endpoint,
            sources=cfg.sources,
            bind_sources=self.bound_sources,
            models=replicas.model_ids,
            backend=replicas.backend_name,
            workers=workers.count,
            threads_per_worker=replicas.plan.threads,
            metrics=self.health and "http://{}:{}/metrics".format(*self.health.address),
        )
        if cfg.pid_file is not None:
            write_pid_file(cfg.pid_file)
        self.started.set()
        self.notifier.ready(
            f"ready: models {replicas.model_ids}, publishing on {self.publish_endpoint}"
        )

    @property
    def models(self) -> Replicas | None:
        """The models serving now (the workers' once started: a reload replaces them)."""
        return self.workers.replicas if self.workers is not None else self.replicas

    @property
    def last_progress(self) -> float:
        """Monotonic time the slowest inference worker last went round.

        The watchdog and /readyz trust only this, so a hung model stops both even while every
        other thread looks alive.
        """
        return self.workers.last_progress if self.workers is not None else self._started_at

    def progressing(self) -> bool:
        """Whether every inference worker went round within ``stall_timeout_s``."""
        return time.monotonic() - self.last_progress < self.config.stall_timeout_s

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for /readyz: models loaded and the inference workers going round."""
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
            running = self.workers.count if self.workers is not None else None
            prepared = prepare(self.config, self._read_config, workers=running)
        except Exception as err:  # any reason at all: the running daemon stays as it was
            log.error("reload refused; the running models keep serving", error=str(err))
            self.metrics.reloads.labels("refused").inc()
            self.notifier.ready(f"reload refused, still serving the previous models: {err}")
            return False
        for key in prepared.needs_restart:
            log.warning("reload: this key needs a restart; keeping the running value", key=key)
        cfg = self.config = prepared.config
        self._queue.capacity, self._queue.policy = cfg.queue_size, cfg.overload
        models = prepared.replicas
        self._handover.offer(models)
        self.metrics.reloads.labels("ok").inc()
        self.metrics.serving(models.backend_name, models.model_ids)
        log.info("reloaded", models=models.model_ids)
        self.notifier.ready(f"reloaded: models {models.model_ids}")
        return True

    def shutdown(self) -> None:
        self.notifier.stopping()
        if not self._threads:  # startup failed part-way
            self._close_context()
            self.notifier.close()
            if self.health is not None:
                self.health.close()
            return
        publisher, receiver, inference = self._threads[0], self._threads[1], self._threads[2:]
        self._stop_receiving.set()
        receiver.join()
        self._queue.close()
        deadline = time.monotonic() + self.config.drain_timeout_s
        for worker in inference:
            worker.join(max(0.0, deadline - time.monotonic()))
        if any(worker.is_alive() for worker in inference):
            assert self.workers is not None
            self.workers.abandon.set()
            for worker in inference:
                worker.join()
        for frame in self._queue.take_all():
            self._drop(frame, "shutdown")
        if self._reloader is not None:
            self._reloader.join(self.config.drain_timeout_s)
        self._handover.discard()
        self._outbox.put(STOP)
        publisher.join()
        self._close_context()
        if self.models is not None:
            self.models.close()
        sizes = self.workers.batch_sizes if self.workers is not None else {}
        log.info(
            "daemon stopped",
            counts=self.ledger.snapshot(),
            batches=self.batches,
            batch_sizes={str(k): v for k, v in sorted(sizes.items())},
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

    @property
    def batches(self) -> int:
        return self.workers.batches if self.workers is not None else 0

    def status(self) -> dict[str, Any]:
        return protocol.status_event(
            self.config.daemon_id,
            uptime_s=round(time.monotonic() - self._started_at, 3),
            cameras=self.ledger.snapshot(),
            queue_depth=len(self._queue),
            batches=self.batches,
            models=self.models.model_ids if self.models is not None else {},
        )
