"""Reloading a running daemon: what SIGHUP re-reads, and how ``edge reload`` finds the daemon.

The daemon writes its pid to ``pid_file`` (``--pid-file``; under systemd ``systemctl reload edge``
sends the SIGHUP itself). ``edge reload --pid-file PATH`` reads it, checks the process really is
an edge daemon (a stale file must not signal whatever reused the pid) and sends SIGHUP.

A reload builds a complete new configuration and model cascade beside the running one, self-test
included; only when all of it is good does the server swap it in, between two batches. Anything
wrong leaves the running daemon exactly as it was.

Startup loads the models and writes the pid file with these helpers too; each of its steps runs
in ``step(what)``, so what fails is reported as a ``StartupError`` naming the step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog
import zmq

from edge.daemon.config import Config
from edge.daemon.metrics import Metrics
from edge.daemon.notify import Notifier
from edge.daemon.security import CurveServer, SecurityError
from edge.vision.backends import auto
from edge.vision.replicas import (
    Replicas,
    WorkerPlan,
    load_replicas,
    plan_for_choice,
)

log = structlog.get_logger(__name__)

# Keys bound to sockets and identity: changing them means a restart. A reload keeps the running
# value and says so, rather than half-applying them.
RESTART_KEYS = (
    "sources",
    "bind_sources",
    "publish",
    "rcvhwm",
    "sndhwm",
    "max_message_bytes",
    "curve_secret_key",
    "metrics",
    "pid_file",
    "state_dir",
    "daemon_id",
    "workers",  # the inference threads are started once
    "cpu_scheduling",  # set as the threads start
)


class ReloadError(RuntimeError):
    """`edge reload` could not signal a daemon; the message says why."""


class StartupError(RuntimeError):
    """A startup step failed: ``what`` names the step and its address or path, ``cause`` why."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what}: {_why(cause, what)}")
        self.what, self.cause = what, cause


def _why(err: BaseException, what: str) -> str:
    if isinstance(err, OSError) and err.strerror:  # "Permission denied", not "[Errno 13] ..."
        other = err.filename is not None and str(err.filename) not in what
        return f"{err.strerror} ({err.filename})" if other else err.strerror
    if isinstance(err, zmq.ZMQError):
        return err.strerror  # without pyzmq's "(addr='...')": the step names the address
    return str(err)


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Run one startup step; an OS or ZeroMQ error becomes a StartupError naming the step."""
    try:
        yield
    except (OSError, zmq.ZMQError) as err:
        raise StartupError(what, err) from err


@dataclass
class Prepared:
    config: Config
    replicas: Replicas
    needs_restart: list[str]


def prepare(
    current: Config, read_config: Callable[[], Config] | None, workers: int | None
) -> Prepared:
    """Read the new config and load and self-test its models; raises whatever is wrong.

    Keys in RESTART_KEYS keep their running values (listed in ``needs_restart`` if changed);
    the models are loaded once for each of the ``workers`` running.
    """
    new = read_config() if read_config is not None else current
    changed = [key for key in RESTART_KEYS if getattr(new, key) != getattr(current, key)]
    if changed:
        new = new.model_copy(update={key: getattr(current, key) for key in changed})
    return Prepared(new, load_models(new, workers=workers), changed)


def worker_plan(cfg: Config, workers: int | None = None) -> WorkerPlan:
    """How many inference workers a config gets here, and threads for each."""
    # Chosen once: with backend auto, choosing probes the GPU.
    choice = auto.choose(cfg.backend, engines=cfg.engines, options=cfg.openvino)
    plan = plan_for_choice(choice, cfg.workers, cfg.threads)
    if workers is not None and workers != plan.workers:
        # A reload keeps the running workers; threads follow the new config for that count.
        plan = plan_for_choice(choice, workers, cfg.threads)
    return plan


def load_models(cfg: Config, workers: int | None = None) -> Replicas:
    """The models a config names, one copy per worker, loaded on its backend and self-tested."""
    plan = worker_plan(cfg, workers)
    log.info(
        "inference workers",
        workers=plan.workers,
        threads_per_worker=plan.threads or "onnxruntime default",
        reason=plan.reason,
    )
    check = None
    if cfg.backend == "auto" and cfg.check_images is not None:
        check = auto.read_check_strips(cfg.check_images)
    return load_replicas(
        cfg.models,
        cfg.backend,
        plan=plan,
        max_batch=cfg.max_batch,
        engines=cfg.engines,
        rebuild_stale=cfg.rebuild_stale,
        openvino=cfg.openvino,
        check=check,
    )


def write_pid_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(path)  # never a half-written pid for `edge reload` to read


def remove_pid_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        if int(path.read_text().strip()) == os.getpid():  # not a successor's
            path.unlink()


@contextlib.contextmanager
def pid_file(path: Path) -> Iterator[None]:
    """This process's pid in ``path`` (for ``edge reload``) until the block ends."""
    write_pid_file(path)
    try:
        yield
    finally:
        remove_pid_file(path)


def signal_reload(pid_file: Path) -> int:
    """Send SIGHUP to the daemon named in ``pid_file``; return its pid."""
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        raise ReloadError(
            f"no pid file at {pid_file}: is the daemon running with --pid-file {pid_file}?"
        ) from None
    except OSError as err:
        raise ReloadError(f"cannot read pid file {pid_file}: {err}") from None
    if not text.isdigit() or int(text) <= 1:
        raise ReloadError(f"pid file {pid_file} does not hold a pid: {text[:40]!r}")
    pid = int(text)
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        if cmdline.exists() and b"edge" not in cmdline.read_bytes():
            raise ReloadError(
                f"stale pid file {pid_file}: process {pid} is not an edge daemon; not signalled"
            )
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadError(f"stale pid file {pid_file}: no process {pid}") from None
    except PermissionError:
        raise ReloadError(
            f"not allowed to signal process {pid} (run as its user or root)"
        ) from None
    return pid


class Handover:
    """Reloaded models passed from the reload thread to the inference workers, between batches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: Replicas | None = None

    @property
    def waiting(self) -> bool:
        return self._waiting is not None

    def offer(self, replicas: Replicas) -> None:
        with self._lock:
            superseded, self._waiting = self._waiting, replicas
        if superseded is not None:  # two reloads in a row: the first never served
            superseded.close()

    def take(self) -> Replicas | None:
        with self._lock:
            replicas, self._waiting = self._waiting, None
        return replicas

    def discard(self) -> None:
        replicas = self.take()
        if replicas is not None:
            replicas.close()


class Reloads:
    """SIGHUP's work: the re-read config and its models, prepared beside the running ones.

    A reload runs on a thread of its own (loading models can outlast WatchdogSec, and the pings
    go on meanwhile), one at a time: a SIGHUP during a reload runs once it is done.
    """

    def __init__(self, handover: Handover, metrics: Metrics, notifier: Notifier) -> None:
        self.requested = threading.Event()  # set by the signal handler: it must stay short
        self._handover = handover
        self._metrics = metrics
        self._notifier = notifier
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start_if_requested(self, reload: Callable[[], object]) -> None:
        if self.requested.is_set() and not self.running:
            self.requested.clear()
            self._thread = threading.Thread(target=reload, name="reload", daemon=True)
            self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def prepare(
        self,
        load: Callable[[], Prepared],
        curve: CurveServer | None,
        reauthenticate: Callable[[], None],
    ) -> Prepared | None:
        """CURVE's authorized clients re-read (``reauthenticate()`` if keys went), then the new
        config and its models (``load``, ``prepare`` for the running config); None if refused:
        the running daemon stays as it was."""
        self._notifier.reloading()
        log.info("reload: reading the config and loading the models")
        if curve is not None:
            try:
                revoked = curve.reload()
            except SecurityError as err:
                log.error("reload: authorized clients kept as they were", error=str(err))
            else:
                if revoked:
                    # Peers authenticate once, at connect: to cut off revoked ones, both sockets
                    # are replaced and every peer connects again (a moment without events).
                    log.warning("reload: CURVE keys removed; replacing both sockets so "
                                "every camera and subscriber authenticates again",
                                revoked=revoked)  # fmt: skip
                    reauthenticate()
        try:
            prepared = load()
        except Exception as err:  # any reason at all: the running daemon stays as it was
            log.error("reload refused; the running models keep serving", error=str(err))
            self._metrics.reloads.labels("refused").inc()
            self._notifier.ready(f"reload refused, still serving the previous models: {err}")
            return None
        for key in prepared.needs_restart:
            log.warning("reload: this key needs a restart; keeping the running value", key=key)
        return prepared

    def swap_in(self, models: Replicas) -> None:
        """Hand the prepared models to the inference workers (between two batches)."""
        self._handover.offer(models)
        self._metrics.reloads.labels("ok").inc()
        self._metrics.serving(models.backend_name, models.model_ids)
        log.info("reloaded", models=models.model_ids)
        self._notifier.ready(f"reloaded: models {models.model_ids}")
