"""What every CLI module shares: the error exit and the repeated --source option."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Sources = Annotated[
    list[str] | None,
    typer.Option("--source", "-s", help="Endpoint to CONNECT to; repeat for several."),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


CurveServerKey = Annotated[Path | None, typer.Option(help="CURVE: the daemon's public server.key.")]
CurveClientKey = Annotated[
    Path | None, typer.Option(help="CURVE: this client's .key_secret (authorized by the daemon).")
]


def curve_pair(server_key: Path | None, client_key: Path | None) -> tuple[Path, Path] | None:
    """Both CURVE keys, or neither; one alone is a mistake worth naming."""
    if server_key is not None and client_key is not None:
        return server_key, client_key
    if server_key is not None or client_key is not None:
        raise fail("CURVE needs both --curve-server-key and --curve-client-key")
    return None
