"""``edge build`` and ``edge doctor``: TensorRT engines and the machine check (CLI side).

``edge build`` is build_engine's command, given the models as edge reads them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from build_engine.cli import build_command
from build_engine.models import ModelFacts, walk_models
from edge.cli.common import OpenVinoDevice, OpenVinoPrecision, fail
from edge.logs import configure
from edge.vision.backends.engines import model_facts
from edge.vision.modelspec import (
    CONFIG_FILE,
    MODEL_FILE,
    ModelConfigError,
    ModelFiles,
    resolve_model_dir,
    spec_from_onnx_metadata,
)

__all__ = ["build", "doctor", "find_models"]


def find_models(paths: list[Path]) -> list[ModelFiles]:
    """Models named on the command line: a repository, a model folder, or a model's ONNX file."""
    return walk_models(
        paths, for_dir=resolve_model_dir, for_onnx=_model_for_onnx, name=lambda f: f.spec.name,
        error=ModelConfigError,
    )  # fmt: skip


def _model_for_onnx(path: Path) -> ModelFiles:
    model_dir = path.parent.parent
    if (
        path.name == MODEL_FILE
        and path.parent.name.isdigit()
        and (model_dir / CONFIG_FILE).is_file()
    ):
        files = resolve_model_dir(model_dir)
        if files.onnx_path.resolve() != path.resolve():
            # The config pins another version; build what was asked for, with that config.
            files = ModelFiles(spec=files.spec, onnx_path=path, version=int(path.parent.name))
        return files
    spec = spec_from_onnx_metadata(path, default_name=path.stem)
    return ModelFiles(spec=spec, onnx_path=path, version=spec.version or 1)


def _edge_models(paths: list[Path]) -> list[ModelFacts]:
    return [model_facts(files) for files in find_models(paths)]


# build_engine's command, reading the models as the daemon does (validated configs).
build = build_command(_edge_models, errors=(ModelConfigError,))


def doctor(
    models: Annotated[
        Path | None, typer.Option(help="Model repository. (default: the shipped reference models)")
    ] = None,
    engines: Annotated[
        Path | None, typer.Option(help="TensorRT engine folder to check against the models.")
    ] = None,
    batch: Annotated[int, typer.Option(min=1, max=64, help="Tiles in the test batch.")] = 4,
    check_images: Annotated[
        Path | None,
        typer.Option(
            help="Folder of recorded strips to compare the backends on (the first 8); "
            "unset: synthetic strips."
        ),
    ] = None,
    openvino_device: OpenVinoDevice = "CPU",
    openvino_precision: OpenVinoPrecision = "auto",
) -> None:
    """Check this machine: backends, GPU, versions, and each model/engine against ONNX Runtime."""
    from edge.daemon.config import shipped_models
    from edge.tools.doctor import run_doctor
    from edge.vision.backends.auto import read_check_strips
    from edge.vision.backends.base import BackendError
    from edge.vision.backends.openvino import OpenVinoOptions

    configure("console" if sys.stderr.isatty() else "json", "warning")
    try:
        check = read_check_strips(check_images) if check_images is not None else None
    except (BackendError, OSError) as err:
        raise fail(str(err)) from None
    options = OpenVinoOptions(device=openvino_device, precision=openvino_precision)  # type: ignore[arg-type]
    code = run_doctor(
        models or shipped_models(),
        engines,
        batch=batch,
        echo=typer.echo,
        check=check,
        options=options,
    )
    raise typer.Exit(code)
