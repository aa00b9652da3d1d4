"""``edge view``'s lifecycle: subscribe, serve the page, and on SIGINT/SIGTERM stop both."""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from edge.line.bridges.subscriber import EventSubscriber
from edge.tools.view.app import Hub, create_app
from edge.tools.view.sources import FrameSubscriber, ViewSink
from edge.tools.view.state import ViewState

log = structlog.get_logger("edge.view")


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` -> (host, port), with an error that says what a good one looks like."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen takes HOST:PORT, e.g. 127.0.0.1:8080; got {listen!r}")
    return host.strip("[]"), int(port)


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound here, before uvicorn starts, so a taken port is a clear error, not a log line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(128)
    return sock


def _server_class() -> Any:
    import uvicorn

    class ViewServer(uvicorn.Server):
        """uvicorn's Server, whose SIGINT/SIGTERM only set ``should_exit``.

        uvicorn itself raises a captured signal again after its shutdown, which would kill the
        process before the subscribers are stopped and make every clean stop exit -15.
        """

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            signals = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return ViewServer


def run_view(
    source: str,
    cameras: list[str],
    listen: str,
    *,
    curve: tuple[Path, Path] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers), then stop the subscribers."""
    import uvicorn

    host, port = parse_listen(listen)
    sock = listening_socket(host, port)
    state, hub = ViewState(), Hub()
    state.listen(hub.publish)
    events = EventSubscriber(source, ViewSink(state), curve=curve, name="view-events")
    frames = FrameSubscriber(cameras, state) if cameras else None
    events.start()
    if frames is not None:
        frames.start()
    address = sock.getsockname()
    log.info("view serving", url=f"http://{address[0]}:{address[1]}/", source=source,
             cameras=cameras)  # fmt: skip
    config = uvicorn.Config(
        create_app(state, hub), log_level="warning", timeout_graceful_shutdown=2, lifespan="on"
    )
    try:
        _server_class()(config).run(sockets=[sock])
    finally:
        events.stop()
        if frames is not None:
            frames.stop()
        sock.close()
