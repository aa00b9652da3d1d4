"""``edge bench``: the CLI command (registered in ``edge.main``); the work is in ``runner``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.cli.common import OpenVinoDevice, OpenVinoPrecision, fail
from edge.logs import configure


def bench(
    backend: Annotated[
        str, typer.Option(help="onnxruntime | openvino | tensorrt | auto")
    ] = "onnxruntime",
    openvino_device: OpenVinoDevice = "CPU",
    openvino_precision: OpenVinoPrecision = "auto",
    models: Annotated[
        Path | None, typer.Option(help="Model repository. (default: the shipped reference models)")
    ] = None,
    engines: Annotated[
        Path | None, typer.Option(help="TensorRT engine folder, from `edge build`.")
    ] = None,
    batch: Annotated[
        str, typer.Option(help="Batch sizes for the backend mode, comma-separated.")
    ] = "1,8,32",
    defect_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of defective synthetic strips.")
    ] = 0.2,
    mode: Annotated[
        str,
        typer.Option(
            help="backend | pipeline | naive | e2e | host | agreement | all, or a "
            "comma-separated list (host: the daemon's own CPU per strip, on null models with "
            "the pair's I/O; agreement: the defects against FP32 ONNX Runtime's)."
        ),
    ] = "all",
    duration: Annotated[
        float, typer.Option(min=0.5, help="Seconds of measurement per mode (e2e: see docs).")
    ] = 20.0,
    memory_seconds: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="Seconds at 2x saturation in e2e (default: --duration; 60 for the full check).",
        ),
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder of real strip images instead of synthetic ones.")
    ] = None,
    pool: Annotated[int, typer.Option(min=1, help="Distinct strips, cycled.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic strips.")] = 0,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Inference workers, as the daemon's `workers` (0 = auto); the backend and "
            "pipeline modes run as many streams.",
        ),
    ] = 0,
    threads: Annotated[
        int, typer.Option(min=0, help="ONNX Runtime threads per worker; 0 = cores / workers.")
    ] = 0,
    max_batch: Annotated[
        int,
        typer.Option(
            min=0,
            help="The daemon's max_batch in pipeline and e2e; 0: the batch size the backend "
            "mode finds fastest (32 without it).",
        ),
    ] = 0,
    cameras: Annotated[int, typer.Option(min=1, max=8, help="Cameras in pipeline and e2e.")] = 2,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write every figure and the machine to this file.")
    ] = None,
) -> None:
    """Measure throughput and latency: bare models, the cascade, the naive way, the real daemon,
    and the daemon's own CPU per strip (host).

    Example: edge bench --mode all --json bench.json
    """
    from edge.daemon.config import shipped_models
    from edge.line.camera import ImageLoadError
    from edge.tools.bench import MODES, BenchSettings, run_bench, write_json
    from edge.tools.bench.e2e import E2EError
    from edge.vision.backends.auto import BACKENDS
    from edge.vision.backends.base import BackendError
    from edge.vision.modelspec import ModelConfigError

    if backend not in BACKENDS:
        raise fail(f"--backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise fail(f"--batch must be comma-separated integers, got {batch!r}") from None
    if not batches or min(batches) < 1:
        raise fail(f"--batch sizes must be >= 1, got {batch!r}")
    modes = list(MODES) if mode == "all" else [m.strip() for m in mode.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise fail(
            f"--mode must be one of {[*MODES, 'all']} (or a comma-separated list), got {mode!r}"
        )
    repository = models or shipped_models()
    if not repository.is_dir():
        raise fail(f"model repository {str(repository)!r} is not a folder")
    configure("console" if sys.stderr.isatty() else "json", "warning")
    settings = BenchSettings(
        models=repository,
        modes=[m for m in MODES if m in modes],
        backend=backend,
        engines=engines,
        openvino_device=openvino_device,
        openvino_precision=openvino_precision,
        batches=batches,
        defect_rate=defect_rate,
        duration_s=duration,
        memory_s=memory_seconds,
        images=images,
        pool_size=pool,
        seed=seed,
        workers=workers,
        threads=threads,
        max_batch=max_batch,
        cameras=cameras,
    )
    try:
        report = run_bench(settings)
    except (ModelConfigError, BackendError, ImageLoadError) as err:
        raise fail(str(err), 1) from None
    except E2EError as err:
        raise fail(f"e2e: {err}", 1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if json_out is not None:
        # The tables above are the summary; every figure, the ratios included, is in the file.
        write_json(report, json_out)
        typer.echo(f"wrote {json_out}", err=True)
    else:  # nowhere else for a script to read the ratios from: one JSON line, last
        typer.echo(json.dumps({"ratios": report["ratios"]}))
