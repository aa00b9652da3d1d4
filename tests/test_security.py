"""CURVE on both sockets: authorized cameras and subscribers work, anyone else is refused."""

from __future__ import annotations

import contextlib
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
from typer.testing import CliRunner

from edge.cli.main import app
from edge.daemon.config import ConfigError, load_config
from edge.daemon.server import Server
from edge.protocol import parse_event
from edge.protocol.curve import SecurityError, keygen, make_client
from tests.conftest import free_port, gray_strip
from tests.test_server import frame_parts


@dataclass
class Keys:
    folder: Path
    authorized: Path

    def public(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    def secret(self, name: str) -> Path:
        return self.folder / f"{name}.key_secret"

    def authorize(self, name: str) -> None:
        shutil.copy(self.public(name), self.authorized)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    folder = tmp_path / "keys"
    for name in ("server", "cam1", "dashboard", "intruder", "latecomer"):
        keygen(folder, name)
    found = Keys(folder, tmp_path / "authorized")
    found.authorized.mkdir()
    found.authorize("cam1")
    found.authorize("dashboard")
    return found


@contextlib.contextmanager
def running_curve_daemon(keys: Keys, tiny_repo: Path, **endpoints: Any) -> Iterator[Server]:
    """A daemon with CURVE on both sockets; ``endpoints``: sources or bind_sources."""
    config = load_config(
        None,
        publish="tcp://127.0.0.1:*",
        models=tiny_repo,
        threads=1,
        status_interval_s=0.1,
        curve_secret_key=keys.secret("server"),
        curve_authorized_clients=keys.authorized,
        **endpoints,
    )
    server = Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert server.started.wait(30)
        yield server
    finally:
        server.should_exit.set()
        thread.join(30)
    assert not thread.is_alive()


@pytest.fixture
def curve_daemon(keys: Keys, tiny_repo: Path) -> Iterator[Server]:
    with running_curve_daemon(keys, tiny_repo, bind_sources=["tcp://127.0.0.1:*"]) as server:
        yield server


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def subscriber(ctx: zmq.Context, server: Server, keys: Keys, name: str | None) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    if name is not None:
        make_client(sock, keys.public("server"), keys.secret(name))
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(server.publish_endpoint)
    return sock


def camera(ctx: zmq.Context, server: Server, keys: Keys, name: str | None) -> zmq.Socket:
    sock = ctx.socket(zmq.XPUB)
    if name is not None:
        make_client(sock, keys.public("server"), keys.secret(name))
    sock.connect(server.bound_sources[0])
    return sock


def test_authorized_camera_and_subscriber_work(
    curve_daemon: Server, keys: Keys, context: zmq.Context
) -> None:
    sub = subscriber(context, curve_daemon, keys, "dashboard")
    assert sub.poll(10000), "an authorized subscriber got nothing"
    cam = camera(context, curve_daemon, keys, "cam1")
    assert cam.poll(10000), "the daemon never subscribed to an authorized camera"
    cam.recv()
    cam.send_multipart(frame_parts("cam1", 0, gray_strip()))
    events: list[dict[str, Any]] = []
    while not events and sub.poll(10000):
        topic, body = parse_event(sub.recv_multipart())
        if topic.startswith("event/"):
            events.append(body)
    assert [(e["kind"], e["camera"], e["seq"]) for e in events] == [("result", "cam1", 0)]


@pytest.mark.parametrize("who", ["intruder", None], ids=["unknown key", "no CURVE"])
def test_an_unauthorized_subscriber_is_refused(
    curve_daemon: Server, keys: Keys, context: zmq.Context, who: str | None, capsys
) -> None:
    control = subscriber(context, curve_daemon, keys, "dashboard")
    assert control.poll(10000)
    refused = subscriber(context, curve_daemon, keys, who)
    assert not refused.poll(2000), "an unauthorized subscriber received daemon messages"
    if who is not None:
        captured = capsys.readouterr()
        assert "CURVE client refused" in captured.out + captured.err


@pytest.mark.parametrize("who", ["intruder", None], ids=["unknown key", "no CURVE"])
def test_an_unauthorized_camera_is_refused(
    curve_daemon: Server, keys: Keys, context: zmq.Context, who: str | None
) -> None:
    cam = camera(context, curve_daemon, keys, who)
    assert not cam.poll(2000), "the daemon subscribed to an unauthorized camera"
    for seq in range(5):
        cam.send_multipart(frame_parts("cam1", seq, gray_strip()))
    good = camera(context, curve_daemon, keys, "cam1")
    assert good.poll(10000)
    assert curve_daemon.ledger.snapshot() == {}, "frames from an unauthorized camera got in"


def test_sighup_reload_reads_newly_authorized_clients(
    curve_daemon: Server, keys: Keys, context: zmq.Context
) -> None:
    assert not subscriber(context, curve_daemon, keys, "latecomer").poll(1500)
    keys.authorize("latecomer")
    assert curve_daemon.reload()
    assert subscriber(context, curve_daemon, keys, "latecomer").poll(10000)


def test_keygen_command_writes_a_private_secret_and_never_overwrites(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["keygen", str(tmp_path / "k"), "--name", "cam7"])
    assert result.exit_code == 0, result.output
    secret = tmp_path / "k" / "cam7.key_secret"
    assert (tmp_path / "k" / "cam7.key").is_file()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    before = secret.read_bytes()
    again = runner.invoke(app, ["keygen", str(tmp_path / "k"), "--name", "cam7"])
    assert again.exit_code == 1 and "refusing to overwrite" in again.output
    assert secret.read_bytes() == before


def test_curve_config_is_checked_before_start(keys: Keys, tiny_repo: Path) -> None:
    base = {"sources": ["tcp://127.0.0.1:1"], "models": tiny_repo}
    with pytest.raises(ConfigError, match="both curve_secret_key and curve_authorized_clients"):
        load_config(None, **base, curve_secret_key=keys.secret("server"))
    with pytest.raises(ConfigError, match=r"curve_secret_key.*is not a file"):
        load_config(
            None,
            **base,
            curve_secret_key=keys.folder / "missing",
            curve_authorized_clients=keys.authorized,
        )


def test_a_public_key_given_as_the_secret_is_named(keys: Keys, tiny_repo: Path) -> None:
    config = load_config(
        None,
        bind_sources=["tcp://127.0.0.1:*"],
        publish="tcp://127.0.0.1:*",
        models=tiny_repo,
        curve_secret_key=keys.public("server"),
        curve_authorized_clients=keys.authorized,
    )
    server = Server(config)
    try:
        with pytest.raises(SecurityError, match=r"server\.key holds no secret key"):
            server.startup()
    finally:
        server.shutdown()


def test_the_default_endpoints_are_localhost_only() -> None:
    config = load_config(None, sources=["tcp://127.0.0.1:1"])
    assert config.publish.startswith("tcp://127.0.0.1:")
    assert config.metrics is None


def test_edge_listen_as_an_authorized_curve_client(
    curve_daemon: Server, keys: Keys, context: zmq.Context
) -> None:
    result: list[Any] = []
    args = ["listen", "--source", curve_daemon.publish_endpoint, "--json", "--count", "1",
            "--curve-server-key", str(keys.public("server")),
            "--curve-client-key", str(keys.secret("dashboard"))]  # fmt: skip
    listener = threading.Thread(target=lambda: result.append(CliRunner().invoke(app, args)))
    listener.start()
    cam = camera(context, curve_daemon, keys, "cam1")
    assert cam.poll(10000)
    cam.recv()
    for seq in range(50):  # until the listener is connected and has its one event
        if not listener.is_alive():
            break
        cam.send_multipart(frame_parts("cam1", seq, gray_strip()))
        listener.join(0.2)
    listener.join(10)
    assert result and result[0].exit_code == 0, result and result[0].output
    assert '"kind":"result"' in result[0].output


def test_edge_listen_needs_both_curve_keys(keys: Keys) -> None:
    result = CliRunner().invoke(
        app, ["listen", "--curve-server-key", str(keys.public("server")), "--count", "1"]
    )
    assert result.exit_code == 2 and "needs both" in result.output


def test_edge_camera_as_an_authorized_curve_client(
    keys: Keys, tiny_repo: Path, context: zmq.Context
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # The daemon connects; `edge camera` binds, as a real camera does.
    with running_curve_daemon(keys, tiny_repo, sources=[endpoint]) as server:
        sub = subscriber(context, server, keys, "dashboard")
        assert sub.poll(10000)  # subscribed (a status arrived) before any frame is sent
        args = ["camera", "--to", endpoint, "--count", "3", "--fps", "0", "--camera-id", "cam1",
                "--curve-server-key", str(keys.public("server")),
                "--curve-client-key", str(keys.secret("cam1"))]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        seqs = []
        while len(seqs) < 3 and sub.poll(10000):
            _, body = parse_event(sub.recv_multipart())
            if body["kind"] == "result":
                seqs.append(body["seq"])
        assert seqs == [0, 1, 2]


def test_edge_camera_needs_both_curve_keys(keys: Keys) -> None:
    result = CliRunner().invoke(
        app, ["camera", "--to", "tcp://127.0.0.1:1", "--curve-client-key", str(keys.secret("cam1"))]
    )
    assert result.exit_code == 2 and "needs both" in result.output


def events_of(sock: zmq.Socket, seconds: float) -> list[dict[str, Any]]:
    """The per-camera events a subscriber receives within ``seconds``."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            topic, body = parse_event(sock.recv_multipart())
            if topic.startswith("event/"):
                got.append(body)
    return got


def status_since(sock: zmq.Socket, uptime_s: float, timeout_s: float = 10.0) -> bool:
    """Drain ``sock`` until a status the daemon sent after ``uptime_s`` arrives."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            topic, body = parse_event(sock.recv_multipart())
            if topic.startswith("status/") and body["uptime_s"] > uptime_s:
                return True
    return False


def test_a_revoked_subscriber_and_camera_are_cut_off_at_reload(
    curve_daemon: Server, keys: Keys, context: zmq.Context
) -> None:
    keys.authorize("latecomer")
    keys.authorize("intruder")
    assert curve_daemon.reload()
    dashboard = subscriber(context, curve_daemon, keys, "dashboard")
    revoked = subscriber(context, curve_daemon, keys, "latecomer")
    assert dashboard.poll(10000) and revoked.poll(10000)
    cam, rogue = (
        camera(context, curve_daemon, keys, "cam1"),
        camera(context, curve_daemon, keys, "intruder"),
    )
    # Verbose: a connecting camera keeps its subscriptions across a reconnect, so only this
    # way does it see the daemon subscribe again.
    cam.setsockopt(zmq.XPUB_VERBOSE, 1)
    for sock in (cam, rogue):
        assert sock.poll(10000), "the daemon never subscribed to an authorized camera"
        sock.recv()
    rogue.send_multipart(frame_parts("intruder", 0, gray_strip()))
    assert [e["camera"] for e in events_of(revoked, 3) if e["kind"] == "result"] == ["intruder"]
    assert [e["camera"] for e in events_of(dashboard, 0.5) if e["kind"] == "result"] == ["intruder"]
    (keys.authorized / "latecomer.key").unlink()
    (keys.authorized / "intruder.key").unlink()
    assert curve_daemon.reload()
    reloaded_at = time.monotonic() - curve_daemon._started_at  # on the status' uptime_s clock
    assert cam.poll(10000), "the authorized camera was not subscribed to again"
    cam.recv()
    # The reload replaced the publishing socket too: the dashboard reconnects and authenticates
    # again, and a status sent after the reload proves it has, before the frames whose events
    # it must see (one the old socket sent may still be queued).
    assert status_since(dashboard, reloaded_at), "the authorized subscriber never reconnected"
    for seq in range(5):
        cam.send_multipart(frame_parts("cam1", seq, gray_strip()))
        rogue.send_multipart(frame_parts("intruder", seq + 1, gray_strip()))
        time.sleep(0.05)
    seen = events_of(dashboard, 5)
    assert [(e["camera"], e["seq"]) for e in seen if e["kind"] == "result"] == [
        ("cam1", seq) for seq in range(5)
    ], "the authorized subscriber missed events, or a revoked camera's frames got in"
    assert events_of(revoked, 1) == [], "a revoked subscriber still receives events"
    assert curve_daemon.ledger.snapshot()["intruder"]["received"] == 1
