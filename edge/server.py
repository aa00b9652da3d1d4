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

from edge import protocol, seqstate
from edge.config import Config
from edge.frames import Frame
from edge.inference import InferenceWorkers
from edge.ledger import Ledger
from edge.metrics import HealthServer, Metrics, readiness
from edge.notify import Heartbeat, Notifier
from edge.publishing import REBIND, STOP, PublishLoop
from edge.receiver import Receiver
from edge.reload import Handover, load_models, prepare, remove_pid_file, write_pid_file
from edge.replicas import Replicas
from edge.security import CurveServer, SecurityError
from edge.sinks import EventPublisher
from edge.sinks import result_events as result_events  # re-exported: edge bench runs it
from edge.sources import FrameReceiver
from edge.workqueue import WorkQueue

log = structlog.get_logger(__name__)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RESTART_GRACE_S = 0.5


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
        self.ledger = Ledger(config.max_cameras)
        self._state: seqstate.StateWriter | None = None
        self.publish_endpoint: str | None = None
        self.bound_sources: list[str] = []
        self.failure: BaseException | None = None
        self.receiver: Receiver | None = None
        self._queue: WorkQueue[Frame] = WorkQueue(config.queue_size, config.overload)
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._context: zmq.Context | None = None
        self._threads: dict[str, threading.Thread] = {}
        self._started_at = time.monotonic()
        self.notifier = Notifier()
        self.metrics = Metrics(
            queue_depth=lambda: len(self._queue),
            progress_age_s=lambda: time.monotonic() - self.last_progress,
            max_cameras=config.max_cameras,
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
        if cfg.state_dir is not None:
            path = seqstate.state_file(cfg.state_dir)
            self.ledger = Ledger(cfg.max_cameras, seqstate.load(path, cfg.max_cameras))
            self._state = seqstate.StateWriter(path)
        else:
            log.warning("no state_dir: frames lost while the daemon is down or crashing cannot "
                        "be reported as gaps after a restart (systemd's StateDirectory= sets it)")  # fmt: skip
        publisher = EventPublisher(self._context, cfg.publish, sndhwm=cfg.sndhwm, secure=secure)
        if self.ledger.settled_seqs():
            # A restart: subscribers reconnect within ZeroMQ's 100 ms reconnect interval, and
            # events published before they are back would be lost to them.
            time.sleep(RESTART_GRACE_S)
        context = self._context

        def open_socket(bound: list[str] | None) -> FrameReceiver:
            return FrameReceiver(
                context,
                connect=cfg.sources,
                bind=cfg.bind_sources,
                rcvhwm=cfg.rcvhwm,
                max_message_bytes=cfg.max_message_bytes,
                secure=secure,
                bound=bound,
            )

        try:
            receiver = self.receiver = Receiver(
                open_socket, self._queue, self._outbox, self.ledger, self.metrics,
                lambda: self.config,
            )  # fmt: skip
            try:
                if cfg.metrics_address is not None:
                    self.health = HealthServer(*cfg.metrics_address, self.metrics, self.readiness)
            except BaseException:
                receiver.socket.close()
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
        roles: dict[str, Callable[[], None]] = {
            "publisher": lambda: self._publishing.run(publisher),
            "receiver": receiver.run,
            **{f"inference-{i}": (lambda i=i: workers.run(i)) for i in range(workers.count)},
        }
        self._threads = {
            name: threading.Thread(target=self._guard(body), name=name)
            for name, body in roles.items()
        }
        for thread in self._threads.values():
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
        """(ready, why) for /readyz: models loaded, the inference workers going round, and
        every source the daemon connects to connected."""
        now = time.monotonic()
        down = self.receiver.watch.down() if self.receiver is not None else []
        return readiness(
            self.started.is_set(),
            self.should_exit.is_set(),
            now - self.last_progress,
            self.config.stall_timeout_s,
            [(s.endpoint, s.ever_up, now - s.since) for s in down],
        )

    def main_loop(self) -> None:
        heartbeat = Heartbeat(self.notifier, self.ledger.snapshot, lambda: len(self._queue))
        next_state = time.monotonic()
        while not self.should_exit.wait(0.2):
            if self._state is not None and time.monotonic() >= next_state:
                # Here, not on the publisher thread: an fsync on a slow disk must not hold
                # events up.
                self._state.write(self.ledger.settled_seqs())
                next_state = time.monotonic() + self.config.state_interval_s
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
                revoked = self.curve.reload()
            except SecurityError as err:
                log.error("reload: authorized clients kept as they were", error=str(err))
            else:
                if revoked:
                    self._reauthenticate(revoked)
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
        self.ledger.max_cameras = self.metrics.max_cameras = cfg.max_cameras
        models = prepared.replicas
        self._handover.offer(models)
        self.metrics.reloads.labels("ok").inc()
        self.metrics.serving(models.backend_name, models.model_ids)
        log.info("reloaded", models=models.model_ids)
        self.notifier.ready(f"reloaded: models {models.model_ids}")
        return True

    def _reauthenticate(self, revoked: int) -> None:
        """Peers authenticate once, at connect: to cut off revoked ones, both sockets are
        replaced and every peer connects again (a moment without events or frames)."""
        log.warning("reload: CURVE keys removed; replacing both sockets so every camera and "
                    "subscriber authenticates again", revoked=revoked)  # fmt: skip
        if self.receiver is not None:
            self.receiver.request_rebuild()
        self._outbox.put(REBIND)

    def shutdown(self) -> None:
        self.notifier.stopping()
        if not self._threads:  # startup failed part-way
            self._close_context()
            self.notifier.close()
            if self.health is not None:
                self.health.close()
            return
        threads = dict(self._threads)
        publisher, receiver = threads.pop("publisher"), threads.pop("receiver")
        inference = list(threads.values())
        assert self.receiver is not None
        self.receiver.stop.set()
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
            self.receiver.drop(frame, "shutdown")
        if self._reloader is not None:
            self._reloader.join(self.config.drain_timeout_s)
        self._handover.discard()
        self._outbox.put(STOP)
        publisher.join()
        if self._state is not None:  # every event has left: the seqs are exact now
            self._state.write(self.ledger.settled_seqs())
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

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        """Run a thread body; an unexpected error stops the daemon loudly instead of hanging it."""

        def body() -> None:
            try:
                target()
            except BaseException as exc:
                self.failure = exc
                log.exception("thread failed, stopping", thread=threading.current_thread().name)
                self.should_exit.set()
                if self.receiver is not None:
                    self.receiver.stop.set()
                self._queue.close()
                if threading.current_thread().name == "publisher":
                    return
                self._outbox.put(STOP)

        return body

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
            sources={
                s.endpoint: s.describe(time.monotonic())
                for s in (self.receiver.watch.sources.values() if self.receiver else ())
            },
        )
