"""A real Mosquitto broker on a free loopback port, and a paho subscriber that keeps what it got.

The broker persists to its folder (saved at a clean stop), so a restart on the same port keeps
retained messages and the queued messages of persistent sessions, as a plant's broker would.
"""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None
)


def need_mosquitto() -> str:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    return MOSQUITTO


class Mosquitto:
    """``start()``, ``stop()``, ``start()`` again: same port, same persistence file."""

    def __init__(self, folder: Path, port: int | None = None, extra: str = "") -> None:
        """``extra``: more configuration lines (a TLS listener, a password file)."""
        self.binary = need_mosquitto()
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Run as root, mosquitto would switch to user mosquitto, who cannot write here.
            f"user {getpass.getuser()}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            "autosave_interval 0\n"  # save at shutdown only
            # A subscriber's persistent session may queue everything a test sends.
            "max_queued_messages 1000000\n"
            "max_inflight_messages 0\n"
            f"log_dest file {folder}/mosquitto.log\n"
            "log_type all\n"
            f"{extra}"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> Mosquitto:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    raise AssertionError(f"mosquitto exited at start: {err}") from None
                if time.monotonic() > deadline:
                    raise AssertionError("mosquitto did not listen") from None
                time.sleep(0.02)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: a clean shutdown, which writes the persistence file."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            if self.process.stderr is not None:
                self.process.stderr.close()
            self.process = None

    @property
    def log(self) -> str:
        path = self.folder / "mosquitto.log"
        return path.read_text(errors="replace") if path.is_file() else ""


class MqttListener:
    """A paho subscriber on ``topics`` (QoS 1) that records every message, in arrival order.

    ``persistent``: a fixed client id and clean_session off, so the broker queues what comes
    while it is away (or the broker restarts) and delivers it when it is back.
    """

    def __init__(
        self, port: int, topics: list[str], *, client_id: str = "", persistent: bool = False
    ) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self._topics = topics

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if not reason.is_failure:
                client.subscribe([(t, 1) for t in self._topics])

        def on_subscribe(client: Any, userdata: Any, mid: Any, codes: Any, props: Any) -> None:
            self.subscribed.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            with self._lock:
                self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def wait_subscribed(self, timeout_s: float = 10.0) -> MqttListener:
        assert self.subscribed.wait(timeout_s), "the MQTT subscriber never subscribed"
        return self

    def on(self, predicate: Callable[[str], bool]) -> list[tuple[str, Any, bool]]:
        """(topic, decoded JSON or text, retain) of the messages whose topic matches."""
        with self._lock:
            picked = [m for m in self.messages if predicate(m[0])]
        return [(t, _decode(p), r) for t, p, r in picked]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _decode(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace")


def tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificates for the TLS test")
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr = folder / "server.pem", folder / "server.key", folder / "server.csr"
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=edge-test-ca"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True)
    return ca, cert, key


def password_file(folder: Path, user: str, password: str) -> Path:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "passwords"
    subprocess.run([tool, "-b", "-c", str(path), user, password], check=True, capture_output=True)
    return path
