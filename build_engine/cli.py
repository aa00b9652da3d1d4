"""The build command: ``python -m build_engine`` with this package's own model reader
(build_engine.models), and ``edge build`` (edge.cli.gpu) with edge's validated model configs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer

from build_engine.build import BuildError, BuildOptions, build_model, require_tensorrt
from build_engine.fp16 import Fp16Error
from build_engine.models import ModelError, ModelFacts, find_models

FindModels = Callable[[list[Path]], Sequence[ModelFacts]]


def run_build(
    paths: list[Path],
    out: Path,
    options: BuildOptions,
    *,
    find: FindModels = find_models,
    errors: tuple[type[Exception], ...] = (),
) -> int:
    """Build every model ``find`` reads from ``paths``; print one line per engine. Returns the
    exit code; ``errors`` are the reader's own exceptions, reported like the build's."""
    try:
        # Checked first: without tensorrt nothing else is worth reading or converting.
        require_tensorrt()
        models = find(paths)
        options.profile()
        for model in models:
            print(f"building {model.model_id} from {model.onnx_path} ...", file=sys.stderr)
            built = build_model(model, out, options)
            s = built.sidecar
            print(
                f"{built.plan}  {s.precision} {s.network} batch {s.min_batch}/{s.opt_batch}/"
                f"{s.max_batch}  TensorRT {s.tensorrt_version} on {s.gpu_name} "
                f"(sm {s.compute_capability}) in {s.build_seconds}s"
            )
    except (BuildError, ModelError, Fp16Error, *errors) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def build_command(
    find: FindModels = find_models, errors: tuple[type[Exception], ...] = ()
) -> Callable[..., None]:
    """The ``build`` command (its options and help), reading the models with ``find``."""

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
        raise typer.Exit(run_build(models, out, options, find=find, errors=errors))

    return build


build = build_command()
