"""The model's pre- and post-processing as graph nodes, so the accelerator does them.

``fuse`` wraps a model's ONNX graph in a prologue and an epilogue:

    pixels  uint8  N x h x w x C   (tiles as the strip holds them, channels as the model wants)
      -> Cast, x * gain + offset per channel, NHWC -> NCHW if the model wants it, its dtype
      -> the model
      -> its dtype -> float32, NHWC -> NCHW, sigmoid / softmax, background dropped
    scores  float32 N x K          (classifier)
    probs   uint8   N x K x h x w  (segmenter: round(255 * probability))

So the host copies uint8 tiles in and gets compact maps out: a quarter of the bytes of float32
maps, no ``exp`` on the host. TensorRT engines are built from the fused graph (DeepStream's
nvinfer normalises on the GPU too), and ONNX Runtime runs the same graph on the CPU. Only
standard ONNX operators that TensorRT parses are used (Cast, Mul, Add, Transpose, Sigmoid,
Softmax, Gather); uint8 is a network input and output type TensorRT supports since 8.6.

The numbers come in a ``GraphIO`` the caller derives from the model's config (edge does it from
its validated ``ModelSpec``): this module parses no config, so it stays standalone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

PIXELS = "edge_pixels"  # the fused graph's input
SCORES = "edge_scores"  # the fused classifier's output
PROBS = "edge_probs"  # the fused segmenter's output
PROB_SCALE = 255  # a probability p leaves a fused segmenter as round(255 * p)
FUSED_FORMAT = 1  # bumped when the fused graph's contract changes (engines then rebuild)
_PREFIX = "edge_fused_"
# Which operators do the uint8 <-> float steps: "tensorrt" (Cast, Mul, Add: TensorRT's Q/DQ
# layers take int8 only) or "onnxruntime" (DequantizeLinear / QuantizeLinear: one vectorised
# pass each on the CPU instead of three; measured for 7 tiles: 0.13 ms against 0.45 in, 0.39
# against 1.1 out). Both compute the same: x = pixel * gain + offset, q = round(255 * p).
Target = Literal["tensorrt", "onnxruntime"]


class FuseError(ValueError):
    """The model's graph does not fit its config; the message names what to fix."""


@dataclass(frozen=True)
class GraphIO:
    """What the prologue and epilogue do, for one model."""

    role: Literal["classifier", "segmenter"]
    input_name: str | None  # None: the model's first input
    input_layout: Literal["NCHW", "NHWC"]
    channels: int
    height: int
    width: int
    gain: tuple[float, ...]  # x = pixel * gain + offset, one per channel (or one for all)
    offset: tuple[float, ...]
    output_name: str | None  # None: the model's first output
    output_layout: Literal["NCHW", "NHWC"]  # segmenters only
    activation: Literal["sigmoid", "softmax", "none"]
    background_index: int | None  # softmax only: the logit whose probability is dropped
    classes: int
    format: int = FUSED_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """As JSON has it (lists for tuples): what a sidecar records and reads back."""
        return json.loads(json.dumps(asdict(self)))


def fuse(model: Any, io: GraphIO, target: Target = "tensorrt") -> Any:
    """A new ``onnx.ModelProto``: ``model`` inside its prologue and epilogue (see the module),
    with the operators of ``target`` for the uint8 <-> float steps (see ``Target``)."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    inp = _pick(graph.input, io.input_name, "input", _initializers(graph))
    out = _pick(graph.output, io.output_name, "output", set())
    in_type = inp.type.tensor_type.elem_type
    out_type = out.type.tensor_type.elem_type
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    if in_type not in floats or out_type not in floats:
        raise FuseError(
            f"input {inp.name!r} and output {out.name!r} must be float32 or float16 "
            f"(they are {TensorProto.DataType.Name(in_type)} and "
            f"{TensorProto.DataType.Name(out_type)})"
        )
    nodes: list[Any] = []
    consts: list[Any] = []
    nodes += _prologue(io, inp.name, in_type, consts, target)
    nodes += list(graph.node)
    result, epilogue = _epilogue(io, out.name, out_type, consts, target)
    nodes += epilogue
    output_type = TensorProto.FLOAT if io.role == "classifier" else TensorProto.UINT8
    out_shape: list[Any] = ["N", io.classes]
    if io.role == "segmenter":
        out_shape = ["N", io.classes, None, None]
    pixels = ["N", io.height, io.width, io.channels]
    fused_graph = helper.make_graph(
        nodes,
        graph.name or "model",
        [helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, pixels)],
        [helper.make_tensor_value_info(result, output_type, out_shape)],
        initializer=[*graph.initializer, *consts],
        value_info=list(graph.value_info),
    )
    # Other inputs (initializers listed as inputs in old exports) stay inputs with defaults.
    fused_graph.input.extend(i for i in graph.input if i.name != inp.name)
    fused = helper.make_model(fused_graph, opset_imports=list(model.opset_import))
    fused.ir_version = model.ir_version
    fused.producer_name = model.producer_name
    fused.metadata_props.extend(model.metadata_props)
    fused.functions.extend(model.functions)
    for i, node in enumerate(fused.graph.node):
        if not node.name and any(n.startswith(_PREFIX) for n in (*node.input, *node.output)):
            node.name = f"{_PREFIX}{node.op_type}_{i}"
    onnx.checker.check_model(fused)
    return fused


def is_fused_node(name: str) -> bool:
    """Whether a node of a fused graph belongs to the prologue or epilogue (kept float32 by
    the FP16 conversion: build_engine.fp16)."""
    return name.startswith(_PREFIX)


def _initializers(graph: Any) -> set[str]:
    return {i.name for i in graph.initializer}


def _pick(args: Any, wanted: str | None, what: str, skip: set[str]) -> Any:
    real = [a for a in args if a.name not in skip]
    if wanted is None:
        if not real:
            raise FuseError(f"the model has no {what}")
        return real[0]
    for arg in real:
        if arg.name == wanted:
            return arg
    raise FuseError(
        f"the model has no {what} named {wanted!r} ({what}.name in its config); its "
        f"{what}s are {[a.name for a in real]}"
    )


def _const(consts: list[Any], name: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    consts.append(numpy_helper.from_array(value, _PREFIX + name))
    return _PREFIX + name


def _prologue(
    io: GraphIO, model_input: str, dtype: int, consts: list[Any], target: Target
) -> list[Any]:
    from onnx import TensorProto, helper

    p = _PREFIX
    nchw = io.input_layout == "NCHW"
    nodes: list[Any] = []
    last = PIXELS
    # Layout first, on the uint8 pixels (a quarter of the bytes); for one channel a Reshape,
    # which costs nothing. Broadcasting the constants over a last axis of 1 would also be
    # slow: ONNX Runtime then loops per element (measured: 4.5 ms for 7 tiles, against 0.1).
    if nchw and io.channels == 1:
        shape = _const(consts, "nchw_shape", np.asarray([-1, 1, io.height, io.width], np.int64))
        nodes.append(helper.make_node("Reshape", [last, shape], [p + "pixels_nchw"]))
        last = p + "pixels_nchw"
    elif nchw:
        nodes.append(helper.make_node("Transpose", [last], [p + "pixels_nchw"], perm=[0, 3, 1, 2]))
        last = p + "pixels_nchw"
    elif io.channels == 1:
        shape = _const(consts, "flat_shape", np.asarray([-1, io.height, io.width], np.int64))
        nodes.append(helper.make_node("Reshape", [last, shape], [p + "pixels_hw"]))
        last = p + "pixels_hw"
    gain = np.asarray(io.gain, np.float32)
    offset = np.asarray(io.offset, np.float32)
    if gain.size > 1 or offset.size > 1:  # per channel
        axis = (1, io.channels, 1, 1) if nchw else (io.channels,)
        gain = np.broadcast_to(gain, (io.channels,)).reshape(axis).copy()
        offset = np.broadcast_to(offset, (io.channels,)).reshape(axis).copy()
    else:
        gain, offset = gain.reshape(()), offset.reshape(())
    if target == "onnxruntime":
        nodes += _dequantize(last, gain, offset, nchw, consts)
    else:
        nodes += [
            helper.make_node("Cast", [last], [p + "float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "float", _const(consts, "gain", gain)], [p + "scaled"]),
            helper.make_node("Add", [p + "scaled", _const(consts, "offset", offset)], [p + "x"]),
        ]
    last = p + "x"
    if not nchw and io.channels == 1:
        shape = _const(consts, "nhwc_shape", np.asarray([-1, io.height, io.width, 1], np.int64))
        nodes.append(helper.make_node("Reshape", [last, shape], [p + "x_nhwc"]))
        last = p + "x_nhwc"
    if dtype == TensorProto.FLOAT16:
        nodes.append(helper.make_node("Cast", [last], [model_input], to=TensorProto.FLOAT16))
    else:
        nodes.append(helper.make_node("Identity", [last], [model_input]))
    return nodes


def _dequantize(
    pixels: str, gain: np.ndarray, offset: np.ndarray, nchw: bool, consts: list[Any]
) -> list[Any]:
    """x = pixel * gain + offset as DequantizeLinear, (pixel - zero) * gain, where the offset
    is a whole number of steps below 0 (unit normalisation: 0); else plus an Add."""
    from onnx import helper

    p = _PREFIX
    steps = -offset / gain
    exact = bool(np.all(steps == np.round(steps)) and np.all((steps >= 0) & (steps <= 255)))
    zero = np.round(steps).astype(np.uint8) if exact else np.zeros_like(steps, np.uint8)
    axis = {} if gain.ndim == 0 else {"axis": 1 if nchw else -1}
    flat = (lambda a: a.reshape(-1)) if gain.ndim else (lambda a: a)
    scale_name = _const(consts, "gain", flat(gain).astype(np.float32))
    zero_name = _const(consts, "zero", flat(zero))
    inputs = [pixels, scale_name, zero_name]
    if exact:
        return [helper.make_node("DequantizeLinear", inputs, [p + "x"], **axis)]
    return [
        helper.make_node("DequantizeLinear", inputs, [p + "scaled"], **axis),
        helper.make_node("Add", [p + "scaled", _const(consts, "offset", offset)], [p + "x"]),
    ]


def _epilogue(
    io: GraphIO, model_output: str, dtype: int, consts: list[Any], target: Target
) -> tuple[str, list[Any]]:
    from onnx import TensorProto, helper

    p = _PREFIX
    nodes: list[Any] = []
    last = model_output
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [last], [p + "raw"], to=TensorProto.FLOAT))
        last = p + "raw"
    if io.role == "segmenter" and io.output_layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [last], [p + "nchw_out"], perm=[0, 3, 1, 2]))
        last = p + "nchw_out"
    if io.activation == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", [last], [p + "p"]))
        last = p + "p"
    elif io.activation == "softmax":
        nodes.append(helper.make_node("Softmax", [last], [p + "p"], axis=1))
        last = p + "p"
    if io.activation == "softmax" and io.background_index is not None:
        kept = [i for i in range(io.classes + 1) if i != io.background_index]
        index = _const(consts, "classes", np.asarray(kept, np.int64))
        nodes.append(helper.make_node("Gather", [last, index], [p + "kept"], axis=1))
        last = p + "kept"
    if io.role == "classifier":
        nodes.append(helper.make_node("Identity", [last], [SCORES]))
        return SCORES, nodes
    if target == "onnxruntime":
        # saturate(round(p / (1/255))): one vectorised pass in ONNX Runtime (half the time of
        # the Mul, Add, Cast below), but TensorRT quantises to int8 only.
        scale = _const(consts, "prob_step", np.asarray(1.0 / PROB_SCALE, np.float32))
        zero = _const(consts, "prob_zero", np.asarray(0, np.uint8))
        nodes.append(helper.make_node("QuantizeLinear", [last, scale, zero], [PROBS]))
        return PROBS, nodes
    # round(255 * p) with p in [0, 1]: Cast truncates, so + 0.5 first; "none" models may step
    # outside [0, 1], and a value out of uint8's range would not survive the Cast.
    scale = _const(consts, "prob_scale", np.asarray(float(PROB_SCALE), np.float32))
    half = _const(consts, "half", np.asarray(0.5, np.float32))
    nodes += [
        helper.make_node("Mul", [last, scale], [p + "p255"]),
        helper.make_node("Add", [p + "p255", half], [p + "rounded"]),
    ]
    last = p + "rounded"
    if io.activation == "none":
        low = _const(consts, "low", np.asarray(0.0, np.float32))
        high = _const(consts, "high", np.asarray(float(PROB_SCALE), np.float32))
        nodes.append(helper.make_node("Clip", [last, low, high], [p + "clipped"]))
        last = p + "clipped"
    nodes.append(helper.make_node("Cast", [last], [PROBS], to=TensorProto.UINT8))
    return PROBS, nodes
