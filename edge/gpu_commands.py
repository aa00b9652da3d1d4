"""``edge build`` and ``edge doctor``: TensorRT engines and the machine check (CLI side)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.logs import configure


def build(
    models: Annotated[
        list[Path],
        typer.Argument(help="Model repository, model folders, or their model.onnx files."),
    ],
    out: Annotated[Path, typer.Option(help="Engine folder to write.")] = Path("engines"),
    fp16: Annotated[bool, typer.Option("--fp16/--fp32", help="Engine precision.")] = True,
    max_batch: Annotated[int, typer.Option(min=1, help="Largest batch the engine runs.")] = 32,
    opt_batch: Annotated[
        int | None, typer.Option(min=1, help="Batch TensorRT tunes for. (default: max)")
    ] = None,
    workspace_mib: Annotated[int, typer.Option(min=16, help="Builder workspace (MiB).")] = 4096,
    timing_cache: Annotated[
        Path | None, typer.Option(help="Timing cache to reuse. (default: <out>/timing.cache)")
    ] = None,
) -> None:
    """Build FP16 TensorRT engines from ONNX models (same as `python -m build_engine`).

    Example: edge build models/ --out engines/ --max-batch 32
    """
    from build_engine.build import BuildOptions
    from build_engine.cli import run_build

    options = BuildOptions(
        fp16=fp16,
        max_batch=max_batch,
        opt_batch=opt_batch,
        workspace_mib=workspace_mib,
        timing_cache=timing_cache,
    )
    raise typer.Exit(run_build(models, out, options))


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
