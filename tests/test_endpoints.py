"""Every endpoint, from a flag or a config file, is checked before any socket is made."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge.daemon.config import ConfigError, load_config
from edge.line.bridges.config import load_bridge_config
from edge.protocol.endpoints import IPC_PATH_MAX, check_endpoint

GOOD = [
    # (endpoint, bind)
    ("tcp://127.0.0.1:5556", False),
    ("tcp://127.0.0.1:5556", True),
    ("tcp://cam1:5555", False),
    ("tcp://edge-host.plant.example:5556", False),
    ("tcp://localhost:5556", True),
    ("tcp://[::1]:5556", False),
    ("tcp://[::1]:5556", True),
    ("tcp://[fe80::1%eth0]:5556", False),
    ("tcp://*:5556", True),
    ("tcp://0.0.0.0:5555", True),
    ("tcp://eth0:5555", True),  # an interface name
    ("tcp://127.0.0.1:*", True),  # what the test suite binds everywhere
    ("tcp://127.0.0.1:0", True),
    ("tcp://127.0.0.1:1", False),
    ("tcp://127.0.0.1:65535", False),
    ("tcp://192.168.1.1:0;192.168.1.17:5555", False),  # zmq_tcp(7): a source address first
    ("ipc:///tmp/x", True),
    ("ipc:///run/edge/cam1.sock", False),
    ("ipc://relative.sock", False),
    ("ipc://@abstract", True),
    ("ipc://*", True),
    ("ipc:///" + "x" * (IPC_PATH_MAX - 1), True),
    ("inproc://frames", False),
]

BAD = [
    # (endpoint, bind, what the message says)
    (
        "tcp://127.0.0.1:99999",
        True,
        "'tcp://127.0.0.1:99999': port 99999 is out of range (1-65535)",
    ),
    ("tcp://127.0.0.1:99999", False, "port 99999 is out of range (1-65535)"),
    ("tcp://127.0.0.1:65536", True, "port 65536 is out of range"),
    ("tcp://127.0.0.1:00", True, "port 00 is out of range"),
    ("tcp://127.0.0.1:0", False, "port 0 (any free port) is only for binding"),
    ("tcp://127.0.0.1:*", False, "port * (any free port) is only for binding"),
    ("tcp://*:5556", False, "host * (every interface) is only for binding"),
    ("tcp://127.0.0.1:-1", True, "port '-1' is not a number"),
    ("tcp://127.0.0.1:5556x", False, "port '5556x' is not a number"),
    ("tcp://127.0.0.1:", False, "port '' is not a number"),
    ("tcp://127.0.0.1", False, "no port"),
    ("tcp://[::1]", False, "no port"),
    ("tcp://:5556", True, "no host"),
    ("tcp://:5556", False, "no host"),
    ("tcp://::1:5556", False, "put it in brackets"),
    ("tcp://[::g]:5556", False, "[::g] is not an IPv6 address"),
    ("tcp://999.0.0.1:5556", False, "'999.0.0.1' is not an IPv4 address"),
    ("tcp://cam_1!:5556", False, "is not a host name, an IP address or an interface name"),
    ("tcp://-cam:5556", False, "is not a host name"),
    ("tcp://cam 1:5556", False, "no spaces"),
    (" tcp://cam1:5556", False, "no spaces"),
    ("tcp://:1;cam1:5556", False, "source address ':1': no host"),
    ("localhost:5556", False, "'localhost:5556' is not a ZeroMQ endpoint like tcp://host:port"),
    ("", True, "is not a ZeroMQ endpoint"),
    ("://x:1", True, "is not a ZeroMQ endpoint"),
    ("udp://x:1", False, "scheme 'udp' is not supported"),
    ("ws://x:1", True, "scheme 'ws' is not supported"),
    ("TCP://x:1", False, "scheme 'TCP' is not supported (schemes are lowercase)"),
    ("ipc://", True, "needs a path"),
    ("ipc://*", False, "ipc://* (a fresh temporary socket) is only for binding"),
    ("ipc:///" + "x" * IPC_PATH_MAX, True, f"longer than a Unix socket allows ({IPC_PATH_MAX})"),
    ("inproc://", False, "needs a name"),
]


@pytest.mark.parametrize(("endpoint", "bind"), GOOD)
def test_good_endpoints_pass_unchanged(endpoint: str, bind: bool) -> None:
    assert check_endpoint(endpoint, bind=bind) == endpoint


@pytest.mark.parametrize(("endpoint", "bind", "message"), BAD)
def test_bad_endpoints_are_refused_with_the_reason(endpoint: str, bind: bool, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_endpoint(endpoint, bind=bind)
    assert message in str(caught.value)
    assert repr(endpoint) in str(caught.value)  # which value, when a flag is repeated


@pytest.mark.parametrize(
    ("endpoint", "bind"),
    [
        ("tcp://127.0.0.1:*", True),
        ("tcp://127.0.0.1:0", True),
        ("tcp://localhost:*", True),
        ("tcp://*:*", True),
        ("tcp://lo:*", True),
        ("ipc://*", True),
        ("inproc://frames", True),
        ("tcp://cam1:5555", False),
        ("tcp://[::1]:5556", False),
        ("tcp://127.0.0.1:0;127.0.0.1:5556", False),
        ("ipc:///run/edge/cam1.sock", False),
    ],
)
def test_libzmq_takes_what_the_check_passes(endpoint: str, bind: bool) -> None:
    """The table is not stricter than libzmq where it matters: these all work there too."""
    import zmq

    assert check_endpoint(endpoint, bind=bind) == endpoint
    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.ipv6 = True
    sock.linger = 0
    try:
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)  # asynchronous: the address is parsed now, no peer needed
    finally:
        sock.close()
        context.term()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("publish", "tcp://127.0.0.1:99999", "publish: 'tcp://127.0.0.1:99999': port 99999"),
        ("sources", ["localhost:5556"], "sources: 'localhost:5556' is not a ZeroMQ endpoint"),
        ("sources", ["tcp://*:5555"], "sources: 'tcp://*:5555': host * (every interface)"),
        ("bind_sources", ["tcp://*:99999"], "bind_sources: 'tcp://*:99999': port 99999"),
    ],
)
def test_config_keys_name_the_bad_endpoint(key: str, value: object, message: str) -> None:
    overrides = {"sources": ["tcp://cam1:5555"], key: value}
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, **overrides)


def test_a_bind_source_may_bind_every_interface() -> None:
    cfg = load_config(None, bind_sources=["tcp://*:5555"], publish="tcp://*:5556")
    assert cfg.bind_sources == ["tcp://*:5555"] and cfg.publish == "tcp://*:5556"


def test_the_bridge_source_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('source = "tcp://daemon:99999"\n')
    with pytest.raises(ConfigError, match=r"source: 'tcp://daemon:99999': port 99999 is out"):
        load_bridge_config(path)
    assert load_bridge_config(None, source="tcp://daemon:5556").source == "tcp://daemon:5556"


def _edge(*args: str) -> subprocess.CompletedProcess[str]:
    # Wide, so Rich's error box does not wrap the message in the middle of a word.
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "edge.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


COMMANDS = [
    # (the command as a user types it, the option the error must name, the reason)
    (["run", "--source", "tcp://cam1:5555", "--publish", "tcp://127.0.0.1:99999"], "--publish",
     "port 99999 is out of range (1-65535)"),
    (["run", "--source", "localhost:5555"], "--source", "is not a ZeroMQ endpoint"),
    (["run", "--source", "tcp://*:5555"], "--source", "only for binding"),
    (["run", "--bind-source", "udp://x:1"], "--bind-source", "scheme 'udp' is not supported"),
    (["listen", "--source", "localhost:5556"], "--source", "is not a ZeroMQ endpoint"),
    (["listen", "-s", "tcp://daemon:0"], "--source", "port 0 (any free port)"),
    (["record", "--source", "localhost:5555", "--out", "x.edgerec"], "--source",
     "is not a ZeroMQ endpoint"),
    (["record", "--source", "tcp://*:5555", "--out", "x.edgerec"], "--source",
     "only for binding"),
    (["record", "--source", "tcp://*:99999", "--bind", "--out", "x.edgerec"], "--source",
     "port 99999"),
    (["camera", "--to", "localhost:5555"], "--to", "is not a ZeroMQ endpoint"),
    (["camera", "--to", "tcp://127.0.0.1:99999"], "--to", "port 99999 is out of range"),
    (["replay", "x.edgerec", "--to", "tcp://:5555"], "--to", "no host"),
    (["bridge", "modbus", "--source", "localhost:5556"], "--source", "is not a ZeroMQ endpoint"),
    (["bridge", "opcua", "--source", "tcp://daemon:99999"], "--source", "port 99999"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "option", "reason"), COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS]
)
def test_a_bad_endpoint_flag_is_a_usage_error(
    args: list[str], option: str, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # record and replay name files; none is made or read
    done = _edge(*args)
    stderr = _flat(done.stderr)
    assert done.returncode == 2, done.stderr
    assert f"Invalid value for '{option}'" in stderr
    assert reason in stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())


def test_run_refuses_a_bad_publish_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('sources = ["tcp://cam1:5555"]\npublish = "tcp://127.0.0.1:99999"\n')
    done = _edge("run", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert "publish: 'tcp://127.0.0.1:99999': port 99999 is out of range" in _flat(done.stderr)
    assert "Traceback" not in done.stderr
