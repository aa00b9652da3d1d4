"""What every CLI module shares: the error exit and the repeated --source option."""

from __future__ import annotations

from typing import Annotated

import typer

Sources = Annotated[
    list[str] | None,
    typer.Option("--source", "-s", help="Endpoint to CONNECT to; repeat for several."),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)
