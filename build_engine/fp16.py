"""FP32 ONNX -> FP16 ONNX on the CPU, the input TensorRT 11's strongly typed networks need.

TensorRT 11 removed the FP16 builder flag: precision lives in the graph. NVIDIA recommends
ModelOpt AutoCast for that; ``onnxconverter-common``'s float16 pass does the same job for our
convolutional models, installs anywhere, and keeps the graph's inputs and outputs float32
(``keep_io_types``), so the daemon feeds an FP16 model exactly as it feeds the FP32 one.
"""

from __future__ import annotations

from pathlib import Path

from edge.backends.engines import atomic_write


class Fp16Error(RuntimeError):
    """The FP16 conversion could not run; the message says why and how to fix it."""


def convert_to_fp16(onnx_path: Path, out_path: Path) -> Path:
    """Write an FP16 copy of ``onnx_path`` (float32 I/O kept) to ``out_path`` atomically."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError as exc:
        raise Fp16Error(
            f"the FP16 conversion needs onnx and onnxconverter-common ({exc.name} is missing): "
            "pip install 'edge[gpu]' (or 'edge[fp16]' on a machine without a GPU)"
        ) from None
    model = onnx.load(str(onnx_path))
    # keep_io_types: Cast nodes at the edges, so inputs/outputs stay float32.
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.checker.check_model(converted)
    atomic_write(out_path, converted.SerializeToString())
    return out_path


def fp16_path_for(onnx_path: Path, folder: Path) -> Path:
    """Where the FP16 copy of a model is kept (beside its engine), e.g. model.fp16.onnx."""
    return folder / (Path(onnx_path).stem + ".fp16.onnx")
