"""A model's declared inputs and outputs, checked against its config, and the model fused
with its prologue and epilogue (``build_engine.graph``) for the backends that run ONNX graphs.

Checked on the ONNX graph itself, so a wrong config key is named before anything is fused or
compiled, whichever runtime then loads it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.vision.backends.base import BackendError, check_input_shape
from edge.vision.modelspec import ModelFiles

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_ONNX_TYPES = {1: "tensor(float)", 10: "tensor(float16)"}  # onnx.TensorProto.FLOAT, FLOAT16


class Arg:
    """A graph input or output as ``_pick`` and the checks read it (ORT's NodeArg has these)."""

    def __init__(self, name: str, type: str, shape: list[Any]) -> None:
        self.name, self.type, self.shape = name, type, shape


def check_input_type(arg: Any, files: ModelFiles) -> None:
    if arg.type not in ORT_TYPES:
        raise BackendError(
            f"model {files.model_id} input {arg.name!r} is {arg.type}; "
            "only float32 and float16 inputs are supported"
        )


def fused_model(
    files: ModelFiles, sample_shape: tuple[int, ...]
) -> tuple[bytes, tuple[Arg, list[Any]]]:
    """The model's ONNX inside its prologue and epilogue (serialized), after checking its own
    I/O; with the model's own input and declared output shape."""
    from build_engine.graph import fuse
    from edge.vision.preprocess import OutputAdapter, graph_io

    try:
        import onnx
    except ImportError:  # a dependency of edge; only a broken install lacks it
        raise BackendError("a fused model needs the onnx package") from None
    try:
        model = onnx.load(str(files.onnx_path))
    except Exception as exc:
        raise BackendError(f"cannot read {files.onnx_path} as ONNX: {exc}") from None
    graph, spec = model.graph, files.spec
    initialized = {i.name for i in model.graph.initializer}
    inputs = [_arg(a) for a in graph.input if a.name not in initialized]
    model_input = pick(inputs, spec.input.name, "input", files)
    check_input_type(model_input, files)
    check_input_shape(files, model_input.name, list(model_input.shape), sample_shape)
    output = pick([_arg(a) for a in graph.output], spec.output.name, "output", files)
    shape = [d if isinstance(d, int) and d > 0 else None for d in output.shape]
    try:
        OutputAdapter(spec).check_declared(shape)
        fused = fuse(model, graph_io(spec), target="onnxruntime")
    except (ValueError, onnx.checker.ValidationError) as exc:  # FuseError is a ValueError
        raise BackendError(f"model {files.model_id}: {exc}") from None
    return fused.SerializeToString(), (model_input, output.shape)


def _arg(value: Any) -> Arg:
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor.shape.dim]  # fmt: skip
    return Arg(value.name, _ONNX_TYPES.get(tensor.elem_type, f"type {tensor.elem_type}"), dims)


def pick(args: list, wanted: str | None, what: str, files: ModelFiles):
    if wanted is None:
        return args[0]
    for arg in args:
        if arg.name == wanted:
            return arg
    names = [a.name for a in args]
    raise BackendError(
        f"model {files.model_id} has no {what} named {wanted!r} ({what}.name in its config); "
        f"its {what}s are {names}"
    )
