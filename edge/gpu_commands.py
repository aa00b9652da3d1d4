"""``edge build`` and ``edge doctor``: TensorRT engines and the machine check (CLI side)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from build_engine.cli import build
from edge.logs import configure

__all__ = ["build", "doctor"]


def doctor(
    models: Annotated[
        Path | None, typer.Option(help="Model repository. (default: the shipped reference models)")
    ] = None,
    engines: Annotated[
        Path | None, typer.Option(help="TensorRT engine folder to check against the models.")
    ] = None,
    batch: Annotated[int, typer.Option(min=1, max=64, help="Tiles in the test batch.")] = 4,
) -> None:
    """Check this machine: backends, GPU, versions, and each model/engine against ONNX Runtime."""
    from edge.config import shipped_models
    from edge.doctor import run_doctor

    configure("console" if sys.stderr.isatty() else "json", "warning")
    raise typer.Exit(run_doctor(models or shipped_models(), engines, batch=batch, echo=typer.echo))
