"""The build command, shared by ``python -m build_engine`` and ``edge build``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from build_engine.build import BuildError, BuildOptions, build_model, find_models, require_tensorrt
from build_engine.fp16 import Fp16Error
from edge.modelspec import ModelConfigError


def run_build(paths: list[Path], out: Path, options: BuildOptions) -> int:
    """Build every model named; print one line per engine. Returns the exit code."""
    try:
        # Checked first: without tensorrt nothing else is worth reading or converting.
        require_tensorrt()
        models = find_models(paths)
        options.profile()
        for files in models:
            print(f"building {files.model_id} from {files.onnx_path} ...", file=sys.stderr)
            built = build_model(files, out, options)
            s = built.sidecar
            print(
                f"{built.plan}  {s.precision} {s.network} batch {s.min_batch}/{s.opt_batch}/"
                f"{s.max_batch}  TensorRT {s.tensorrt_version} on {s.gpu_name} "
                f"(sm {s.compute_capability}) in {s.build_seconds}s"
            )
    except (BuildError, ModelConfigError, Fp16Error) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


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
    """Build FP16 TensorRT engines (with JSON sidecars) from ONNX models.

    Example: edge build models/ --out engines/ --max-batch 32
    """
    options = BuildOptions(
        fp16=fp16,
        max_batch=max_batch,
        opt_batch=opt_batch,
        workspace_mib=workspace_mib,
        timing_cache=timing_cache,
    )
    raise typer.Exit(run_build(models, out, options))
