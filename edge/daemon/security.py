"""ZeroMQ CURVE: encryption and authentication on both of the daemon's sockets.

The daemon is the CURVE *server* on its camera socket and its publish socket alike, whichever
side binds; cameras and subscribers are clients. Keys are the files ``edge keygen`` writes
(``NAME.key`` public, ``NAME.key_secret`` secret, ZeroMQ's certificate format). The daemon
needs its own secret certificate and a folder holding the public certificate of every camera
and subscriber allowed in; anyone else fails the handshake and never gets a frame or event
through. SIGHUP re-reads the folder.
"""

from __future__ import annotations

from pathlib import Path

import structlog
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from edge.protocol.curve import SecurityError, load_keypair

log = structlog.get_logger(__name__)


class CurveServer:
    """The daemon's side: its keypair on each socket, and a ZAP handler that checks clients."""

    def __init__(self, context: zmq.Context, secret_key: Path, authorized: Path) -> None:
        self.public, self._secret = load_keypair(secret_key)
        self.authorized = authorized
        self._allowed = self._load_allowed()
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve_callback("*", credentials_provider=self)

    def _load_allowed(self) -> set[bytes]:
        if not self.authorized.is_dir():
            raise SecurityError(
                f"curve_authorized_clients {str(self.authorized)!r} is not a folder"
            )
        try:
            allowed = {key for key, ok in zmq.auth.load_certificates(self.authorized).items() if ok}
        except (OSError, ValueError) as err:
            raise SecurityError(f"cannot read certificates in {self.authorized}: {err}") from None
        if not allowed:
            log.warning("no authorized CURVE clients: every camera and subscriber is refused",
                        folder=str(self.authorized))  # fmt: skip
        return allowed

    def callback(self, domain: str, client_key: bytes) -> bool:
        allowed = client_key in self._allowed
        if not allowed:
            key = client_key.decode(errors="replace")
            # Repeats at every reconnect attempt: rate-limited per key, like a per-frame line.
            log.warning(
                "CURVE client refused: its public key is not in curve_authorized_clients",
                client_key=key,
                folder=str(self.authorized),
                throttle=key,
            )
        return allowed

    def reload(self) -> int:
        """Re-read the authorized folder (SIGHUP); a bad folder keeps the previous set.

        Returns how many keys were removed: peers already connected with one of those stay
        connected until the sockets are replaced (ZeroMQ authenticates only at connect).
        """
        allowed = self._load_allowed()
        revoked = len(self._allowed - allowed)
        self._allowed = allowed
        log.info("CURVE authorized clients reloaded", clients=len(allowed), revoked=revoked)
        return revoked

    def secure(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server; call before bind/connect."""
        socket.curve_secretkey = self._secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def stop(self) -> None:
        self._auth.stop()
