"""python -m build_engine models/classifier models/segmenter --out engines/ --fp16 --max-batch 32"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from build_engine.build import BuildOptions
from build_engine.cli import run_build

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
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
    """Build FP16 TensorRT engines (with JSON sidecars) from ONNX models."""
    options = BuildOptions(
        fp16=fp16,
        max_batch=max_batch,
        opt_batch=opt_batch,
        workspace_mib=workspace_mib,
        timing_cache=timing_cache,
    )
    raise typer.Exit(run_build(models, out, options))


if __name__ == "__main__":
    app()
