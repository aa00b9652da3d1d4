"""A real PostgreSQL server for the store's tests: initdb + pg_ctl in a temporary folder.

Started once per session on a free loopback port, trust authentication on 127.0.0.1 only.
PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
``postgres`` user, in a folder it owns. Skipped, with the reason, where the binaries are missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port


def _tool(name: str) -> str | None:
    """A PostgreSQL program: on PATH, else in Debian's versioned folder (not on PATH there)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return str(versions[-1]) if versions else None


def _as_server_user() -> tuple[list[str], int | None]:
    """The command prefix and uid to run PostgreSQL's tools with."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser to start PostgreSQL as 'postgres'")
    return [runuser, "-u", "postgres", "--"], user.pw_uid


@dataclass
class PostgresServer:
    root: Path
    port: int
    prefix: list[str]
    database: str = "edge_test"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *command: str, timeout_s: float = 60) -> None:
        program = _tool(command[0]) or command[0]
        done = subprocess.run(
            [*self.prefix, program, *command[1:]], capture_output=True, text=True, timeout=timeout_s
        )
        assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w",
            "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def fresh_database(self, name: str) -> str:
        """A new empty database on the server; its URL."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    missing = [tool for tool in ("initdb", "pg_ctl", "postgres") if _tool(tool) is None]
    if missing:
        pytest.skip(
            f"PostgreSQL is not installed here ({', '.join(missing)} not on PATH "
            "nor in /usr/lib/postgresql/*/bin)"
        )
    pytest.importorskip("psycopg", reason="psycopg (the store extra) is not installed")
    prefix, uid = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="edge-pg-"))
    if uid is not None:
        os.chown(root, uid, -1)
    server = PostgresServer(root, free_port(), prefix)
    try:
        server._run(
            "initdb", "-D", str(server.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        server.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                server.fresh_database(server.database)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        try:
            if (server.data / "postmaster.pid").exists():
                server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
