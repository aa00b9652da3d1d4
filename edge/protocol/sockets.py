"""ZeroMQ socket set-up that cameras, the daemon and clients share (pyzmq only)."""

from __future__ import annotations

import time

import zmq


def bind_when_free(sock: zmq.Socket, endpoint: str, patience_s: float = 2.0) -> str:
    """Bind, waiting briefly if the address is still held; return the endpoint really bound.

    A socket re-made on the same port (a restarted camera, the daemon replacing a socket after
    a CURVE key was revoked) finds it busy for a moment: ZeroMQ releases the old socket's
    listener in its I/O thread, after close() has returned.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            sock.bind(endpoint)
            return sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
