"""The daemon's lifecycle: a startup that fails part-way closes exactly what it opened and names
the step that failed; the signal handlers come back after ``Server.run``; a failed inference and
a reject are typed values that still make the same events."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from edge.daemon.config import load_config
from edge.daemon.finishers import Finishers
from edge.daemon.metrics import Metrics
from edge.daemon.models import StartupError
from edge.daemon.outcomes import Batch, Finished, InferenceFailed, Rejected, Result
from edge.daemon.server import Server
from edge.daemon.sources import read_frame
from edge.protocol import VERSION, pack, reject_event
from edge.protocol.curve import SecurityError, keygen
from edge.protocol.sockets import bind_when_free
from tests.conftest import free_port, gray_strip
from tests.test_server import frame_parts, per_frame

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
INFERENCE_FAILED = "inference failed on a [256, 1600] frame"


@dataclass
class Ports:
    """The daemon's three listening addresses, all free, and one more that is taken."""

    publish: str
    camera: str
    metrics: str
    taken: int


@pytest.fixture
def ports() -> Iterator[Ports]:
    with socket.socket() as holder:  # a plain TCP listener: ZeroMQ and HTTP both get EADDRINUSE
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield Ports(
            publish=f"tcp://127.0.0.1:{free_port()}",
            camera=f"tcp://127.0.0.1:{free_port()}",
            metrics=f"127.0.0.1:{free_port()}",
            taken=holder.getsockname()[1],
        )


@dataclass
class Case:
    """A startup step that fails, what it must say, and what was open before it."""

    name: str
    settings: Callable[[Ports, Path], dict[str, Any]]
    message: Callable[[Ports, Path], str]
    error: type[Exception] = StartupError
    opened_before: tuple[str, ...] = ()  # of "publish", "camera", "metrics"


def _bad_curve(tmp_path: Path, authorized_key: str | None = None) -> dict[str, Any]:
    keygen(tmp_path / "keys", "server")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "cam1.key").write_text(authorized_key or "not a certificate\n")
    return {
        "curve_secret_key": tmp_path / "keys" / "server.key_secret",
        "curve_authorized_clients": authorized,
    }


def _good_curve(tmp_path: Path) -> dict[str, Any]:
    keygen(tmp_path / "keys", "cam1")
    return _bad_curve(tmp_path, (tmp_path / "keys" / "cam1.key").read_text())


def _unwritable_pid_file(tmp_path: Path) -> Path:
    (tmp_path / "run").write_text("a file where the pid file's folder should be\n")
    return tmp_path / "run" / "edge.pid"  # as root too: no folder can be made there


CASES = [
    Case(
        "publish port taken",
        lambda p, t: {"publish": f"tcp://127.0.0.1:{p.taken}"},
        lambda p, t: (
            f"cannot bind the publish socket tcp://127.0.0.1:{p.taken}: Address already in use"
        ),
    ),
    Case(
        "camera port taken",
        lambda p, t: {"bind_sources": [f"tcp://127.0.0.1:{p.taken}"]},
        lambda p, t: f"cannot bind camera socket tcp://127.0.0.1:{p.taken}: Address already in use",
        opened_before=("publish",),
    ),
    Case(
        "camera port taken with CURVE on",  # the authenticator's ZAP socket is open too
        lambda p, t: {"bind_sources": [f"tcp://127.0.0.1:{p.taken}"], **_good_curve(t)},
        lambda p, t: f"cannot bind camera socket tcp://127.0.0.1:{p.taken}: Address already in use",
        opened_before=("publish",),
    ),
    Case(
        "metrics port taken",
        lambda p, t: {"metrics": f"127.0.0.1:{p.taken}"},
        lambda p, t: f"metrics on 127.0.0.1:{p.taken}: Address already in use",
        opened_before=("publish", "camera"),
    ),
    Case(
        "pid file unwritable",
        lambda p, t: {"pid_file": _unwritable_pid_file(t)},
        lambda p, t: f"cannot write pid file {t / 'run' / 'edge.pid'}: ",
        opened_before=("publish", "camera", "metrics"),
    ),
    Case(
        "bad CURVE folder",
        lambda p, t: _bad_curve(t),
        lambda p, t: f"cannot read certificates in {t / 'authorized'}: No public key found",
        error=SecurityError,
    ),
]


def _settings(case: Case, ports: Ports, tmp_path: Path, tiny_repo: Path) -> dict[str, Any]:
    return {
        "models": tiny_repo,
        "threads": 1,
        "publish": ports.publish,
        "bind_sources": [ports.camera],
        "metrics": ports.metrics,
        **case.settings(ports, tmp_path),
    }


def _in_thread(
    body: Callable[[], object], what: str, timeout_s: float = 30
) -> BaseException | None:
    """Run ``body`` on a thread (a hang fails the test rather than the session); its error."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"{what} hung: a socket left open makes Context.term() wait"
    return caught[0] if caught else None


def _free_again(ports: Ports, opened: tuple[str, ...]) -> None:
    """What the failed startup had opened is closed: its addresses can be bound again."""
    context = zmq.Context()
    try:
        for name in ("publish", "camera"):
            if name in opened:
                sock = context.socket(zmq.PUB)
                sock.setsockopt(zmq.LINGER, 0)
                bind_when_free(sock, getattr(ports, name), patience_s=2.0)
                sock.close()
    finally:
        context.term()
    if "metrics" in opened:
        host, port = ports.metrics.split(":")
        with socket.socket() as probe:
            probe.bind((host, int(port)))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_failed_startup_closes_what_it_opened_and_names_its_step(
    case: Case, ports: Ports, tmp_path: Path, tiny_repo: Path
) -> None:
    server = Server(load_config(None, **_settings(case, ports, tmp_path, tiny_repo)))
    error = _in_thread(server.startup, "startup")
    assert isinstance(error, case.error), repr(error)
    assert case.message(ports, tmp_path) in str(error)
    _free_again(ports, case.opened_before)
    models = server.replicas
    assert models is not None
    assert not any(hasattr(cascade.classifier.backend, "session") for cascade in models.cascades), (
        "the models startup loaded were not closed"
    )
    assert not server.started.is_set() and not server._threads
    assert _in_thread(server.shutdown, "shutdown after a failed startup") is None


def _toml(settings: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v) if isinstance(v, int) else json.dumps(str(v))

    return "".join(f"{key} = {value(v)}\n" for key, v in settings.items())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_edge_run_reports_the_failed_step_itself(
    case: Case, ports: Ports, tmp_path: Path, tiny_repo: Path
) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(_toml(_settings(case, ports, tmp_path, tiny_repo)))
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli.main", "run", "--config", str(config),
         "--log-format", "json"],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert case.message(ports, tmp_path) in line
    if case.name == "pid file unwritable":
        assert "cannot open sockets" not in line  # it was never about sockets
    assert "Traceback" not in done.stderr


SIGNAL_SCRIPT = r"""
import json, os, signal, sys, threading
from edge.daemon.config import load_config
from edge.daemon.server import Server

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
called = []

def own(sig, frame):  # the embedding program's handler: must not run while the daemon does
    called.append(sig)

for sig in SIGNALS:
    signal.signal(sig, own)
server = Server(load_config(None, bind_sources=["tcp://127.0.0.1:*"],
                            publish="tcp://127.0.0.1:*", models=sys.argv[1], threads=1))
during = {}

def stop():
    assert server.started.wait(60)
    during.update(
        exit=signal.getsignal(signal.SIGTERM) == server.handle_exit
        and signal.getsignal(signal.SIGINT) == server.handle_exit,
        reload=signal.getsignal(signal.SIGHUP) == server.handle_reload,
    )
    os.kill(os.getpid(), signal.SIGTERM)  # what systemd sends

threading.Thread(target=stop, daemon=True).start()
code = server.run()
after = all(signal.getsignal(sig) is own for sig in SIGNALS)
print(json.dumps({"code": code, "during": during, "after": after, "called": called}))
"""


STUCK_SCRIPT = r"""
import os, signal, sys, threading
from edge.daemon.config import load_config
from edge.daemon.server import Server

server = Server(load_config(None, bind_sources=["tcp://127.0.0.1:*"], drain_timeout_s=0.2,
                            publish="tcp://127.0.0.1:*", models=sys.argv[1], threads=1))

def never_returns(images):  # a model call that hangs (a driver, a deadlocked runtime)
    inside.set()
    threading.Event().wait()

inside = threading.Event()

def stop():
    assert server.started.wait(60)
    import zmq, numpy as np
    from edge.protocol import FrameHeader, encode_frame
    for each in server.replicas.cascades:
        each.infer = never_returns
    camera = zmq.Context.instance().socket(zmq.PUB)
    camera.connect(server.bound_sources[0])
    header = FrameHeader(camera="cam1", seq=0, ts_ns=0, encoding="raw", shape=(256, 1600))
    while not inside.wait(0.1):
        camera.send_multipart(encode_frame(header, np.zeros((256, 1600), np.uint8).tobytes()))
    print("stuck in the model", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=stop, daemon=True).start()
server.run()
"""


def test_a_shutdown_stuck_in_a_model_call_dumps_every_threads_stack(tiny_repo: Path) -> None:
    """A model call that never returns keeps the drain from ending; past its bound (here
    2 x 0.2 s + STUCK_AFTER_DRAIN_S) the daemon says where every thread is, and systemd kills
    it at TimeoutStopSec."""
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_SCRIPT, str(tiny_repo)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")),
                              daemon=True)  # fmt: skip
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("_drain" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # the rest of the dump
    finally:
        proc.kill()
        proc.wait(10)
    seen = "".join(lines)
    assert "Thread 0x" in seen, seen[-2000:]
    assert "never_returns" in seen and "_drain" in seen, seen[-3000:]


def test_server_run_restores_the_signal_handlers_it_replaced(tiny_repo: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_SCRIPT, str(tiny_repo)],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {
        "code": 0,
        "during": {"exit": True, "reload": True},  # SIGTERM went to the daemon...
        "after": True,  # ...and the program's own handlers are back
        "called": [],
    }


def test_a_startup_that_fails_restores_the_signal_handlers_too(
    ports: Ports, tiny_repo: Path
) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Server.run installs handlers only on the main thread")
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    server = Server(
        load_config(
            None,
            models=tiny_repo,
            threads=1,
            bind_sources=[ports.camera],
            publish=f"tcp://127.0.0.1:{ports.taken}",
        )
    )
    with pytest.raises(StartupError, match="cannot bind the publish socket"):
        server.run()  # on pytest's main thread: fails before any thread starts
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == before


def test_a_daemon_on_another_thread_leaves_the_signal_handlers_alone(start_daemon) -> None:
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    daemon = start_daemon()
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == before
    daemon.stop()
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == before


def test_an_inference_failure_is_still_exactly_one_reject_with_its_reason(
    start_daemon, camera_socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = start_daemon()
    for cascade in daemon.server.replicas.cascades:  # every inference worker's copy of the models

        def infer_failing_on_marked(images: list[Any], real: Any = cascade.infer) -> Any:
            if any(image[0, 0] == 7 for image in images):  # a fault this one frame triggers
                raise RuntimeError("simulated model fault")
            return real(images)

        monkeypatch.setattr(cascade, "infer", infer_failing_on_marked)
    marked = gray_strip()
    marked[0, 0] = 7
    cam = camera_socket(daemon.source)
    for seq, image in enumerate([gray_strip(), marked, gray_strip()]):
        cam.send_multipart(frame_parts("cam1", seq, image))
    events = per_frame(daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= 3))
    daemon.stop()
    assert sorted((e["seq"], e["kind"]) for e in events) == [
        (0, "result"),
        (1, "reject"),
        (2, "result"),
    ]
    (reject,) = [e for e in events if e["kind"] == "reject"]
    assert reject == {
        "v": VERSION,
        "kind": "reject",
        "camera": "cam1",
        "seq": 1,
        "ts_ns": reject["ts_ns"],
        "reason": INFERENCE_FAILED,
    }
    assert isinstance(reject["ts_ns"], int)
    final = daemon.server.ledger.snapshot()["cam1"]
    assert (final["results"], final["rejects"]) == (2, 1)
    registry = daemon.server.metrics.registry
    labels = {"camera": "cam1", "reason": "inference"}
    assert registry.get_sample_value("edge_rejects_total", labels) == 1


def test_post_processing_turns_each_outcome_into_its_typed_event(tiny_repo: Path) -> None:
    unfinished = threading.BoundedSemaphore(1)
    outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    finishers = Finishers(outbox, unfinished, Metrics(lambda: 0, lambda: 0.0), 1)
    frames = [read_frame(frame_parts("cam1", seq, gray_strip())) for seq in (3, 4)]
    assert unfinished.acquire(timeout=1)  # as a worker holds it before handing a batch over
    parts: list[Any] = [(frames, InferenceFailed(INFERENCE_FAILED))]
    # Nothing to stitch: finished at once, by the thread that hands it over.
    finishers.put(Batch(0, parts, cascade=None))  # type: ignore[arg-type]
    assert unfinished.acquire(timeout=1), "the batch's permit was not given back"
    finished = outbox.get(timeout=1)
    assert isinstance(finished, Finished) and finished.ticket == 0
    made = finished.outgoing
    assert [type(out) for out in made] == [Rejected, Rejected]
    for frame, out in zip(frames, made, strict=True):
        assert isinstance(out, Rejected) and not isinstance(out, Result)
        assert out.reason == INFERENCE_FAILED and out.header == frame.header
        expected = reject_event("cam1", frame.header.seq, INFERENCE_FAILED, frame.header.ts_ns)
        assert pack(out.event) == pack(expected)  # byte for byte what a str reason made
