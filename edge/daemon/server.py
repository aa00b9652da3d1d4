"""The daemon's lifecycle: startup -> main loop -> shutdown, and the threads it runs.

    receiver thread    SUB socket -> validate/decode -> WorkQueue (bounded; rejects and drops
                       become events right here)
    inference workers  WorkQueue -> batches across cameras -> Cascade.infer on the worker's
                       own copy of the models; each batch gets a ticket (edge.daemon.inference)
    finishing threads  Cascade.finish (stitching) and post-processing of each inferred batch
                       into result events, as many at once as there are inference workers,
                       while the models run the next ones (edge.daemon.finishers)
    publisher thread   events -> PUB socket in ticket order; a periodic status message
                       (edge.daemon.publisher)

The main thread loads the models, binds the sockets (CURVE optional), starts the metrics/health
HTTP server if asked, tells systemd READY=1, then watches: watchdog pings only while every
inference worker goes round, reloads on SIGHUP. SIGTERM/SIGINT set ``should_exit``; shutdown stops
receiving, lets the inference workers finish what is queued (bounded by ``drain_timeout_s``;
frames they cannot finish get a ``drop`` event with reason ``shutdown``), publishes every event and
a final status, then closes what startup opened, in reverse.
"""

from __future__ import annotations

import contextlib
import faulthandler
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
import zmq

from edge import __version__, protocol
from edge.daemon import cpu, seqstate
from edge.daemon.config import Config
from edge.daemon.finishers import Finishers
from edge.daemon.frames import Frame
from edge.daemon.inference import UNFINISHED_PER_WORKER, InferenceWorkers
from edge.daemon.ledger import Ledger
from edge.daemon.metrics import HealthServer, Metrics, readiness
from edge.daemon.models import (
    Handover,
    Reloads,
    StartupError,
    load_models,
    pid_file,
    prepare,
    step,
)
from edge.daemon.notify import Heartbeat, Notifier, name_os_thread
from edge.daemon.publisher import REBIND, STOP, PublishLoop
from edge.daemon.receiver import Receiver, open_frame_socket
from edge.daemon.security import CurveServer
from edge.daemon.sinks import EventPublisher
from edge.daemon.sinks import result_events as result_events  # re-exported: edge bench runs it
from edge.daemon.workqueue import WorkQueue
from edge.vision.replicas import Replicas, serial_opencv

log = structlog.get_logger(__name__)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RESTART_GRACE_S = 0.5
STUCK_AFTER_DRAIN_S = 5.0


class Server:
    def __init__(
        self,
        config: Config,
        replicas: Replicas | None = None,
        read_config: Callable[[], Config] | None = None,
    ) -> None:
        """``read_config`` re-reads the configuration on reload (default: the same one)."""
        self.config = config
        self._replicas = replicas  # until startup hands them to the inference workers
        self.workers: InferenceWorkers | None = None
        self._read_config = read_config
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
        self.finishers: Finishers | None = None
        self._threads: dict[str, threading.Thread] = {}
        self._started_at = time.monotonic()
        self.notifier = Notifier()
        self.metrics = Metrics(
            queue_depth=lambda: len(self._queue),
            progress_age_s=lambda: time.monotonic() - self.last_progress,
            max_cameras=config.max_cameras,
        )
        self.reloads = Reloads(self._handover, self.metrics, self.notifier)
        self.health: HealthServer | None = None
        self.curve: CurveServer | None = None
        # What startup opened, closed in reverse by shutdown (by startup itself if it fails).
        self._opened = contextlib.ExitStack()

    def run(self) -> int:
        """Blocking: the whole life of the daemon. Returns the process exit code."""
        with self.capture_signals():
            try:
                self.startup()
                self.main_loop()
            finally:
                self.shutdown()
        return 1 if self.failure else 0

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM set ``should_exit``, SIGHUP asks for a reload; the handlers that were
        there before come back on the way out (uvicorn's ``capture_signals``)."""
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread may; an embedding caller sets should_exit itself
            return
        handlers = {sig: self.handle_exit for sig in HANDLED_SIGNALS}
        handlers[signal.SIGHUP] = self.handle_reload
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            yield
        finally:
            for sig, handler in previous.items():  # None: not set from Python
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def handle_exit(self, sig: int, frame: object) -> None:
        log.info("signal received, shutting down", signal=signal.Signals(sig).name)
        self.should_exit.set()

    def handle_reload(self, sig: int, frame: object) -> None:
        self.reloads.requested.set()  # the main loop reloads: a signal handler must stay short

    def startup(self) -> None:
        """Open each resource onto one ExitStack, then start the threads: a step that fails is
        named, and closes exactly what was opened, in reverse (an open socket hangs term())."""
        cfg = self.config
        serial_opencv()
        with contextlib.ExitStack() as opened:
            if self._replicas is None:
                with step(f"cannot load the models from {cfg.models}"):
                    self._replicas = load_models(cfg)
            opened.callback(lambda: self.replicas and self.replicas.close())  # a reload's, once up
            with step("cannot create the ZeroMQ context"):
                context = zmq.Context()
                # libzmq starts its threads with the first socket, under the policy of the
                # thread that makes it: one now, under cpu_scheduling (the daemon's own threads
                # set theirs as they start).
                with cpu.for_threads_started_here(cfg.cpu_scheduling) as zmq_policy:
                    context.socket(zmq.PUB).close(linger=0)
            opened.callback(context.term)
            secure = None
            if cfg.curve_secret_key is not None and cfg.curve_authorized_clients is not None:
                with step("cannot start the CURVE authenticator"):
                    curve = self.curve = CurveServer(
                        context, cfg.curve_secret_key, cfg.curve_authorized_clients
                    )
                opened.callback(curve.stop)  # its ZAP socket lives in the context
                secure = curve.secure
            if cfg.state_dir is None:
                log.warning("no state_dir: frames lost while the daemon is down or crashing "
                            "cannot be reported as gaps after a restart (systemd's "
                            "StateDirectory= sets it)")  # fmt: skip
            else:
                with step(f"cannot read the camera state in {cfg.state_dir}"):
                    path = seqstate.state_file(cfg.state_dir)
                    self.ledger = Ledger(cfg.max_cameras, seqstate.load(path, cfg.max_cameras))
                    self._state = seqstate.StateWriter(path)
            with step(f"cannot bind the publish socket {cfg.publish}"):
                publisher = EventPublisher(context, cfg.publish, sndhwm=cfg.sndhwm, secure=secure)
            # Once started, the publisher thread closes it (lingering): then this is a no-op.
            opened.callback(publisher.close, linger_ms=0)
            if self.ledger.settled_seqs():
                # A restart: subscribers reconnect within ZeroMQ's 100 ms reconnect interval,
                # and events published before they are back would be lost to them.
                time.sleep(RESTART_GRACE_S)
            receiver = self.receiver = Receiver(
                lambda bound: open_frame_socket(context, self.config, secure, bound),
                self._queue, self._outbox, self.ledger, self.metrics, lambda: self.config,
            )  # fmt: skip
            opened.callback(lambda: receiver.socket.close())  # the current one (a no-op, too)
            replicas = self._replicas
            self.metrics.serving(replicas.backend_name, replicas.model_ids)
            if cfg.metrics_address is not None:
                host, port = cfg.metrics_address
                try:
                    self.health = HealthServer(host, port, self.metrics, self.readiness)
                except OSError as err:  # it says "metrics on HOST:PORT: why" itself
                    cause = err.__cause__ or err
                    raise StartupError(f"metrics on {host}:{port}", cause) from err
                self.health.start()  # before its close goes on the stack: close waits for it
                opened.callback(self.health.close)
            if cfg.pid_file is not None:
                with step(f"cannot write pid file {cfg.pid_file}"):
                    opened.enter_context(pid_file(cfg.pid_file))
            self._opened = opened.pop_all()
        self.publish_endpoint = publisher.endpoint
        self.bound_sources = receiver.bound
        self._started_at = time.monotonic()
        workers = self._start_threads(publisher, receiver, replicas)
        log.info(
            "daemon ready",
            version=__version__,
            publish=self.publish_endpoint,
            sources=cfg.sources,
            bind_sources=self.bound_sources,
            models=replicas.model_ids,
            backend=replicas.backend_name,
            workers=workers.count,
            threads_per_worker=replicas.plan.threads,
            cpu_scheduling=zmq_policy,  # ZeroMQ's threads'; the daemon's own set the same
            metrics=self.health and "http://{}:{}/metrics".format(*self.health.address),
        )
        self.started.set()
        self.notifier.ready(
            f"ready: models {replicas.model_ids}, publishing on {self.publish_endpoint}"
        )

    def _start_threads(
        self, publisher: EventPublisher, receiver: Receiver, replicas: Replicas
    ) -> InferenceWorkers:
        count = len(replicas.cascades)
        unfinished = threading.BoundedSemaphore(count * UNFINISHED_PER_WORKER)
        finishers = self.finishers = Finishers(
            self._outbox, unfinished, self.metrics, count,
            publish_crops=lambda: self.config.publish_crops,
        )  # fmt: skip
        workers = self.workers = InferenceWorkers(
            replicas, self._queue, finishers, self._handover, self.metrics,
            lambda: self.config, lambda: self.failure is not None, drop=receiver.drop,
            unfinished=unfinished,
        )  # fmt: skip
        publishing = PublishLoop(
            self._outbox, workers.tickets, self.ledger, self.metrics, self.status,
            lambda: self.config,
        )  # fmt: skip
        roles: dict[str, Callable[[], None]] = {
            "publisher": lambda: publishing.run(publisher),
            "receiver": receiver.run,
            **{f"inference-{i}": (lambda i=i: workers.run(i)) for i in range(workers.count)},
            **{f"finishing-{i}": (lambda i=i: finishers.run(i)) for i in range(finishers.count)},
        }
        self._threads = {
            name: threading.Thread(target=self._guard(body), name=name)
            for name, body in roles.items()
        }
        for thread in self._threads.values():
            thread.start()
        return workers

    @property
    def replicas(self) -> Replicas | None:
        """The models serving now (the workers' once started: a reload replaces them)."""
        return self.workers.replicas if self.workers is not None else self._replicas

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
                # Here, not on the publisher thread: a slow disk's fsync must not hold events.
                self._state.write(self.ledger.settled_seqs())
                next_state = time.monotonic() + self.config.state_interval_s
            if self.failure is not None:
                break
            self.reloads.start_if_requested(self.reload)
            heartbeat.tick(self.progressing(), self.config.status_interval_s)

    def reload(self) -> bool:
        """Swap in the re-read config and freshly loaded models, or keep serving the old ones."""
        running = self.workers.count if self.workers is not None else None
        prepared = self.reloads.prepare(
            lambda: prepare(self.config, self._read_config, workers=running),
            self.curve,
            self._reauthenticate,
        )
        if prepared is None:
            return False
        cfg = self.config = prepared.config
        self._queue.capacity, self._queue.policy = cfg.queue_size, cfg.overload
        self.ledger.max_cameras = self.metrics.max_cameras = cfg.max_cameras
        self.reloads.swap_in(prepared.replicas)
        return True

    def _reauthenticate(self) -> None:
        """Both sockets replaced: every peer connects and authenticates again (Reloads)."""
        if self.receiver is not None:
            self.receiver.request_rebuild()
        self._outbox.put(REBIND)

    def shutdown(self) -> None:
        """Stop receiving, drain within ``drain_timeout_s`` (drop the rest), publish everything
        and the final status, write the seqs, then close what startup opened, in reverse."""
        self.notifier.stopping()
        if self._threads:
            # The drain waits drain_timeout_s for the workers and as long for a reload in
            # progress; past that and STUCK_AFTER_DRAIN_S more it is stuck (a model call that
            # never returns): every thread's stack goes to stderr (the journal), saying where.
            stuck = 2 * self.config.drain_timeout_s + STUCK_AFTER_DRAIN_S
            faulthandler.dump_traceback_later(stuck, exit=False)
            try:
                self._drain()
            finally:
                faulthandler.cancel_dump_traceback_later()
        self._opened.close()  # pid file, health server, sockets, CURVE, context, models
        if self._threads:
            sizes = self.workers.batch_sizes if self.workers is not None else {}
            log.info(
                "daemon stopped",
                counts=self.ledger.snapshot(),
                batches=self.batches,
                batch_sizes={str(k): v for k, v in sorted(sizes.items())},
                batches_by_worker=self.workers.taken_by if self.workers is not None else [],
            )
        self.notifier.close()

    def _drain(self) -> None:
        threads = dict(self._threads)
        publisher, receiver = threads.pop("publisher"), threads.pop("receiver")
        finishing = [threads.pop(name) for name in list(threads) if name.startswith("finishing")]
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
        if self.finishers is not None:  # every inferred batch gets its events
            self.finishers.stop()
        for thread in finishing:
            thread.join()
        self.reloads.join(self.config.drain_timeout_s)
        self._handover.discard()
        self._outbox.put(STOP)
        publisher.join()
        if self._state is not None:  # every event has left: the seqs are exact now
            self._state.write(self.ledger.settled_seqs())

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        """Run a thread body; an unexpected error stops the daemon loudly instead of hanging it."""

        def body() -> None:
            name_os_thread(threading.current_thread().name)
            cpu.apply(self.config.cpu_scheduling)
            try:
                target()
            except BaseException as exc:
                self.failure = exc
                log.exception("thread failed, stopping", thread=threading.current_thread().name)
                self.should_exit.set()
                if self.receiver is not None:
                    self.receiver.stop.set()
                self._queue.close()
                if self.finishers is not None:
                    self.finishers.stop()
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
            models=self.replicas.model_ids if self.replicas is not None else {},
            sources={
                s.endpoint: s.describe(time.monotonic())
                for s in (self.receiver.watch.sources.values() if self.receiver else ())
            },
        )
