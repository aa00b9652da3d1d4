"""ZeroMQ endpoint strings, checked before any socket is made.

libzmq is lenient in ways that hurt: it reads the port with ``atoi`` into 16 bits, so
``tcp://127.0.0.1:99999`` silently binds port 34463, and a string without a scheme only fails
deep inside ``bind``/``connect`` as a bare ``Invalid argument``. This module holds the rules of
zmq_tcp(7), zmq_ipc(7) and zmq_inproc(7) for the schemes this product uses, so every command and
config key refuses a bad endpoint up front with a reason. Standard library only: it is meant to
move into the wire-protocol package, which depends on nothing but msgpack and pyzmq.
"""

from __future__ import annotations

import ipaddress
import re

SCHEMES = ("tcp", "ipc", "inproc")

# Host names (RFC 1123 labels, plus "_" which resolvers accept) and network interface names
# (eth0, enp3s0, br-lan, eth0.100), which libzmq also takes as a bind address.
_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
_NUMERIC = re.compile(r"[0-9.]+")
_HOST_MAX = 253
# sockaddr_un.sun_path is 108 bytes on Linux, one of them the NUL; a longer path fails to bind
# with ENAMETOOLONG (an abstract "@name" counts the same).
IPC_PATH_MAX = 107


def check_endpoint(value: str, *, bind: bool) -> str:
    """``value`` unchanged if libzmq can ``bind`` (or connect) to it, else a ValueError why.

    tcp://HOST:PORT, HOST a name, an IPv4 address or an [IPv6] address (binds: also ``*`` or
    an interface name), PORT 1-65535 (binds: also ``*`` or ``0``, any free port); a connect may
    name its local end first, tcp://SOURCE;HOST:PORT. ipc://PATH (binds: also ``*``, a fresh
    temporary socket). inproc://NAME.
    """
    scheme, sep, address = value.partition("://")
    if not sep or not scheme:
        raise ValueError(f"{value!r} is not a ZeroMQ endpoint like tcp://host:port or ipc:///path")
    if any(c.isspace() for c in value):
        raise ValueError(f"{value!r}: an endpoint has no spaces in it")
    if scheme not in SCHEMES:
        hint = " (schemes are lowercase)" if scheme.lower() in SCHEMES else ""
        raise ValueError(
            f"{value!r}: scheme {scheme!r} is not supported{hint}; "
            "use tcp://host:port, ipc:///path or inproc://name"
        )
    if scheme == "tcp":
        problem = _tcp(address, bind=bind)
    elif scheme == "ipc":
        problem = _ipc(address, bind=bind)
    else:
        problem = None if address else "an inproc endpoint needs a name: inproc://name"
    if problem is not None:
        raise ValueError(f"{value!r}: {problem}")
    return value


def _tcp(address: str, *, bind: bool) -> str | None:
    if not bind and ";" in address:
        # zmq_tcp(7): a connect may bind its local end first; libzmq takes that like a bind
        # address, without name lookups.
        source, _, address = address.rpartition(";")
        problem = _host_port(source, bind=True)
        if problem is not None:
            return f"source address {source!r}: {problem}"
    return _host_port(address, bind=bind)


def _host_port(address: str, *, bind: bool) -> str | None:
    host, sep, port = address.rpartition(":")
    if not sep or address.endswith("]"):
        return "no port: write tcp://host:port"
    if not host:
        every = ", or tcp://*:port for every interface" if bind else ""
        return f"no host: write tcp://host:port{every}"
    return _port(port, bind=bind) or _host(host, bind=bind)


def _port(port: str, *, bind: bool) -> str | None:
    if port in ("*", "0"):  # libzmq takes exactly these two as "any free port"
        if bind:
            return None
        return f"port {port} (any free port) is only for binding; connect to the peer's port"
    if not (port.isascii() and port.isdigit()):
        return f"port {port!r} is not a number"
    if not 1 <= int(port) <= 65535:
        return f"port {port} is out of range (1-65535)"
    return None


def _host(host: str, *, bind: bool) -> str | None:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])  # a zone, fe80::1%eth0, included
        except ValueError:
            return f"{host} is not an IPv6 address"
        return None
    if ":" in host:
        return f"host {host!r} looks like IPv6: put it in brackets, e.g. tcp://[{host}]:5556"
    if host == "*":
        if bind:
            return None
        return "host * (every interface) is only for binding; connect to a host name or address"
    if _NUMERIC.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not an IPv4 address"
        return None
    if len(host) > _HOST_MAX or not _NAME.fullmatch(host):
        return f"host {host!r} is not a host name, an IP address or an interface name"
    return None


def _ipc(path: str, *, bind: bool) -> str | None:
    if not path:
        return "an ipc endpoint needs a path: ipc:///run/edge/name.sock"
    if path == "*" and not bind:
        return "ipc://* (a fresh temporary socket) is only for binding"
    size = len(path.encode())
    if size > IPC_PATH_MAX:
        return f"the path is {size} bytes, longer than a Unix socket allows ({IPC_PATH_MAX})"
    return None
