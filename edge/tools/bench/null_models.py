"""Near-free stand-ins for a model pair: the same inputs and outputs, next to no arithmetic.

``edge bench --mode host`` runs the daemon on these so that what it measures is the daemon's own
work around the models (receive, tile, gate, stitch, threshold, components, RLE, publish), the
part a GPU does not make cheaper. Each stand-in keeps its model's config (names, layouts,
feed, classes, thresholds, activation) and answers one of three ways:

- ``clean``: every classifier window scores far below any gate; the segmenter never runs;
- ``defective``: every window passes the gate and every pixel is a defect of every class
  (the worst case for post-processing);
- ``contrast``: a verdict of the pixels, so a synthetic pool gives a realistic mix: a window is
  flagged where some pixel of every 2nd row and column is darker than 40 or brighter than 215,
  and a pixel is a defect of class 1/3 where it is dark and 2/4 where it is bright (as in the
  tiny test models).

The classifiers sample their window (every 2nd or 16th row and column) so that they cost next
to nothing, as the near-free models issue 14 measured with (about 0.05 ms per 7 tiles).

A softmax makes its classes exclusive (their probabilities sum to 1): there, "every class" is
the first class (every pixel of it, for ``defective``), and ``contrast`` has dark pixels of the
first class and bright ones of the second, the background logit (0) taking the rest. Without a
background logit a softmax cannot say "nothing here" at all; its clean verdict is then an even
spread over its classes, which is what its thresholds make of it.

The stand-ins are written as ONNX with their config in the ONNX metadata (``edge``), so a
repository is two files. ``onnx`` builds them: it is part of the ``test``, ``fp16`` and
``gpu`` extras, and imported here only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from edge.vision.modelspec import METADATA_KEY, MODEL_FILE, ModelFiles, ModelSpec, load_repository

Verdict = Literal["clean", "defective", "contrast"]
VERDICTS: tuple[Verdict, ...] = ("clean", "defective", "contrast")
SURE = 10.0  # a logit far from any threshold: sigmoid(10) = 0.99995
DARK, BRIGHT = 40.0, 215.0  # pixel values of the contrast verdict


def write_null_repository(like: Path, dst: Path, verdict: Verdict) -> Path:
    """A model repository at ``dst`` whose pair has the I/O of the pair in ``like``."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    for role, files in load_repository(like).items():
        model = _null_model(files, verdict)
        path = dst / role / "1" / MODEL_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model.SerializeToString())
    return dst


def _null_model(files: ModelFiles, verdict: Verdict):  # -> onnx.ModelProto
    import onnx
    from onnx import helper

    spec = files.spec
    graph = _classifier(spec, verdict) if spec.role == "classifier" else _segmenter(spec, verdict)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge bench"
    )
    model.ir_version = 8
    data = spec.model_dump(mode="json", exclude_none=True)
    data["description"] = f"null {spec.role} ({verdict}) with the I/O of {files.model_id}"
    helper.set_model_props(model, {METADATA_KEY: json.dumps(data)})
    onnx.checker.check_model(model)
    return model


def _raw_channels(spec: ModelSpec) -> int:
    """Class outputs the model emits: one per class, plus a background logit if it has one."""
    extra = spec.output.activation == "softmax" and spec.output.background_index is not None
    return spec.num_classes + int(extra)


def _class_channels(spec: ModelSpec) -> list[int]:
    """The raw output channels of the classes, in order (the background logit left out)."""
    background = spec.output.background_index if spec.output.activation == "softmax" else None
    return [i for i in range(_raw_channels(spec)) if i != background]


def _logits(spec: ModelSpec, defect: float) -> np.ndarray:
    """Raw outputs meaning "defect" (``defect`` = 1) or "clean" (0) in every class."""
    k = _raw_channels(spec)
    activation = spec.output.activation
    if activation == "none":
        return np.full(k, defect, np.float32)
    if activation == "sigmoid":
        return np.full(k, SURE if defect else -SURE, np.float32)
    # softmax: exclusive classes. Defect: the first class; clean: the background, or without
    # one an even spread (nothing better can be said).
    values = np.full(k, -SURE, np.float32)
    background = spec.output.background_index
    if defect:
        values[_class_channels(spec)[0]] = SURE
    elif background is not None:
        values[background] = SURE
    else:
        values[:] = 0.0
    return values


def _input_info(spec: ModelSpec):
    from onnx import TensorProto, helper

    h, w, c = spec.feed.height, spec.feed.width, spec.input.channels
    shape = ["N", c, h, w] if spec.input.layout == "NCHW" else ["N", h, w, c]
    return helper.make_tensor_value_info(spec.input.name or "image", TensorProto.FLOAT, shape)


def _normalisation(spec: ModelSpec) -> tuple[float, float]:
    """(gain, offset) of ``x = pixel * gain + offset``, one mean and std for all channels."""
    std = float(np.mean(spec.input.std))
    return spec.input.scale / std, -float(np.mean(spec.input.mean)) / std


def _unnormalised(spec: ModelSpec, name: str, nodes: list, consts: list) -> str:
    """Nodes bringing input ``name`` back to 0..255 pixel values (one mean/std, approximately)."""
    from onnx import helper, numpy_helper

    gain, offset = _normalisation(spec)
    consts += [
        numpy_helper.from_array(np.array(offset, np.float32), "null_offset"),
        numpy_helper.from_array(np.array(1.0 / gain, np.float32), "null_gain"),
    ]
    nodes += [
        helper.make_node("Sub", [name, "null_offset"], ["null_shifted"]),
        helper.make_node("Mul", ["null_shifted", "null_gain"], ["null_pixels"]),
    ]
    return "null_pixels"


def _sampled(spec: ModelSpec, name: str, step: int, nodes: list, consts: list) -> str:
    """Every ``step``-th row and column of input ``name`` (a strided Slice)."""
    from onnx import helper, numpy_helper

    axes = [2, 3] if spec.input.layout == "NCHW" else [1, 2]
    for key, value in (("starts", 0), ("ends", 1 << 30), ("axes", None), ("steps", step)):
        values = axes if value is None else [value, value]
        consts.append(numpy_helper.from_array(np.array(values, np.int64), f"null_{key}"))
    nodes.append(
        helper.make_node(
            "Slice",
            [name, "null_starts", "null_ends", "null_axes", "null_steps"],
            ["null_sampled"],
        )
    )
    return "null_sampled"


def _classifier(spec: ModelSpec, verdict: Verdict):
    from onnx import TensorProto, helper, numpy_helper

    inp = _input_info(spec)
    k = _raw_channels(spec)
    nodes: list = []
    consts: list = []
    # A classifier that looks at every pixel would cost more than the daemon's own work per
    # tile: it looks at every 2nd row and column (contrast) or every 16th (the constant ones,
    # which only need to depend on their input so that nothing folds them away).
    sampled = _sampled(spec, inp.name, 2 if verdict == "contrast" else 16, nodes, consts)
    if verdict == "contrast":
        pixels = _unnormalised(spec, sampled, nodes, consts)
        # Distance outside [DARK, BRIGHT], at its largest over the window: > 0 flags it.
        mid, half = (DARK + BRIGHT) / 2, (BRIGHT - DARK) / 2
        on, off = _logits(spec, 1.0), _logits(spec, 0.0)
        consts += [
            numpy_helper.from_array(np.array(mid, np.float32), "null_mid"),
            numpy_helper.from_array(np.array(half, np.float32), "null_half"),
            numpy_helper.from_array((on - off).reshape(1, k), "null_span"),
            numpy_helper.from_array(off.reshape(1, k), "null_off"),
        ]
        nodes += [
            helper.make_node("Sub", [pixels, "null_mid"], ["null_centered"]),
            helper.make_node("Abs", ["null_centered"], ["null_distance"]),
            helper.make_node(
                "ReduceMax", ["null_distance"], ["null_peak"], axes=[1, 2, 3], keepdims=1
            ),
            helper.make_node("Flatten", ["null_peak"], ["null_peak_2d"], axis=1),
            helper.make_node("Greater", ["null_peak_2d", "null_half"], ["null_hit"]),
            helper.make_node("Cast", ["null_hit"], ["null_flag"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["null_flag", "null_span"], ["null_scaled"]),
            helper.make_node("Add", ["null_scaled", "null_off"], ["null_out"]),
        ]
    else:
        values = _logits(spec, 1.0 if verdict == "defective" else 0.0)
        consts += [
            numpy_helper.from_array(np.zeros((1, k), np.float32), "null_zeros"),
            numpy_helper.from_array(values.reshape(1, k), "null_values"),
        ]
        # Depends on the input (so nothing folds it away) at the cost of one reduction.
        nodes += [
            helper.make_node("ReduceMin", [sampled], ["null_min"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Flatten", ["null_min"], ["null_min_2d"], axis=1),
            helper.make_node("Mul", ["null_min_2d", "null_zeros"], ["null_zero"]),
            helper.make_node("Add", ["null_zero", "null_values"], ["null_out"]),
        ]
    nodes.append(helper.make_node("Identity", ["null_out"], [spec.output.name or "logits"]))
    out = helper.make_tensor_value_info(spec.output.name or "logits", TensorProto.FLOAT, ["N", k])
    return helper.make_graph(nodes, f"null_{spec.name}", [inp], [out], initializer=consts)


def _plane(spec: ModelSpec, name: str, nhwc: bool, nodes: list) -> str:
    """One plane of input ``name`` per pixel, in the output's layout: N x 1 x h x w or
    N x h x w x 1 (the minimum over the input's channels)."""
    from onnx import helper

    in_axis = 1 if spec.input.layout == "NCHW" else 3
    nodes.append(helper.make_node("ReduceMin", [name], ["null_plane"], axes=[in_axis], keepdims=1))
    if (spec.input.layout == "NHWC") == nhwc:
        return "null_plane"
    perm = [0, 2, 3, 1] if nhwc else [0, 3, 1, 2]
    nodes.append(helper.make_node("Transpose", ["null_plane"], ["null_plane_t"], perm=perm))
    return "null_plane_t"


def _segmenter(spec: ModelSpec, verdict: Verdict):
    from onnx import TensorProto, helper, numpy_helper

    inp = _input_info(spec)
    k = _raw_channels(spec)
    h, w = spec.feed.height, spec.feed.width
    nhwc = spec.output.layout == "NHWC"
    shape = (1, 1, 1, k) if nhwc else (1, k, 1, 1)
    nodes: list = []
    consts: list = []
    if verdict == "contrast":
        plane = _plane(spec, inp.name, nhwc, nodes)
        # Dark pixels are classes 1 and 3, bright ones 2 and 4: logit = weight * pixel + bias,
        # crossing 0 at DARK (dark classes) or BRIGHT (bright ones).
        gain, offset = _normalisation(spec)
        weight = np.zeros(k, np.float32)
        bias = np.full(k, -SURE, np.float32)
        classes = _class_channels(spec)
        if spec.output.activation == "softmax":
            # Exclusive classes: one dark, one bright; the background (logit 0) takes the rest,
            # so a class wins exactly where its logit crosses 0.
            classes = classes[:2]
            if spec.output.background_index is not None:
                bias[spec.output.background_index] = 0.0
        for n, i in enumerate(classes):
            edge = DARK if n % 2 == 0 else BRIGHT
            slope = (-1.0 if n % 2 == 0 else 1.0) / gain  # one logit per pixel value
            weight[i] = slope
            bias[i] = -slope * (edge * gain + offset)
        consts += [
            numpy_helper.from_array(weight.reshape(shape), "null_weight"),
            numpy_helper.from_array(bias.reshape(shape), "null_bias"),
        ]
        nodes += [
            helper.make_node("Mul", [plane, "null_weight"], ["null_scaled"]),
            helper.make_node("Add", ["null_scaled", "null_bias"], ["null_out"]),
        ]
    else:
        # The constant logits broadcast to N x the output's own dimensions: one pass writing
        # the output, and the batch dimension read from the input (so nothing folds it away;
        # a reduction over the input, as the contrast verdict needs, cost 0.14 ms per 7 tiles).
        values = _logits(spec, 1.0 if verdict == "defective" else 0.0)
        per_tile = np.array([h, w, k] if nhwc else [k, h, w], np.int64)
        consts += [
            numpy_helper.from_array(values.reshape(shape), "null_values"),
            numpy_helper.from_array(np.array([0], np.int64), "null_zero"),
            numpy_helper.from_array(np.array([1], np.int64), "null_one"),
            numpy_helper.from_array(per_tile, "null_per_tile"),
        ]
        nodes += [
            helper.make_node("Shape", [inp.name], ["null_in_shape"]),
            helper.make_node("Slice", ["null_in_shape", "null_zero", "null_one"], ["null_n"]),
            helper.make_node("Concat", ["null_n", "null_per_tile"], ["null_out_shape"], axis=0),
            helper.make_node("Expand", ["null_values", "null_out_shape"], ["null_out"]),
        ]
    name = spec.output.name or "mask_logits"
    nodes.append(helper.make_node("Identity", ["null_out"], [name]))
    dims = ["N", h, w, k] if nhwc else ["N", k, h, w]
    out = helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)
    return helper.make_graph(nodes, f"null_{spec.name}", [inp], [out], initializer=consts)
