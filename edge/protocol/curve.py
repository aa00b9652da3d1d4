"""ZeroMQ CURVE for the daemon's clients: keys, and making a socket a client of the daemon.

Keys are the files ``edge keygen`` writes (``NAME.key`` public, ``NAME.key_secret`` secret,
ZeroMQ's certificate format). A camera's PUB or a subscriber's SUB becomes a CURVE client with
its own secret certificate and the daemon's public one; the daemon side (its keypair on both
sockets, the check of every client) is ``edge.daemon.security``.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth


class SecurityError(ValueError):
    """A key file or folder that cannot be used; the message names it."""


def keygen(folder: Path, name: str) -> tuple[Path, Path]:
    """Write ``folder/NAME.key`` (public) and ``folder/NAME.key_secret`` (owner-only)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in (folder / f"{name}.key", folder / f"{name}.key_secret"):
        if path.exists():
            raise SecurityError(f"{path} exists; refusing to overwrite a key")
    public, secret = zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_keypair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` certificate."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise SecurityError(f"cannot read CURVE certificate {path}: {err}") from None
    if not secret:
        raise SecurityError(
            f"{path} holds no secret key: give the .key_secret file written by `edge keygen`"
        )
    return public, secret


def load_public(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise SecurityError(f"cannot read CURVE certificate {path}: {err}") from None
    return public


def make_client(socket: zmq.Socket, server_public: Path, client_secret: Path) -> None:
    """Make ``socket`` (a camera's PUB or a subscriber's SUB) a CURVE client of the daemon."""
    public, secret = load_keypair(client_secret)
    socket.curve_publickey = public
    socket.curve_secretkey = secret
    socket.curve_serverkey = load_public(server_public)
