"""The build command's body, shared by ``python -m build_engine`` and ``edge build``."""

from __future__ import annotations

import sys
from pathlib import Path

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
