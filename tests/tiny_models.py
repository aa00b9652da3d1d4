"""A tiny classifier + segmenter pair whose outputs are exact, known functions of the pixels.

Tests of the data path use these so they never depend on model quality:
- classifier: every class scores sigmoid(20 * max|x - 0.5| - 5), x = pixel / 255, so a tile
  holding any pixel below 64 or above 191 passes the 0.5 gate and a flat mid-gray tile does not;
- segmenter: per-pixel logits, class 1: 5 - 20x (dark, < 64), class 2: 20x - 15 (bright, > 191),
  class 3: 5 - 40x (very dark, < 32), class 4: 40x - 35 (very bright, > 223).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEG_WEIGHTS = np.array([-20.0, 20.0, -40.0, 40.0], np.float32)
SEG_BIASES = np.array([5.0, -15.0, 5.0, -35.0], np.float32)
CLASSES = ["dark", "bright", "very_dark", "very_bright"]


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def classifier_graph(tile: int = 256) -> onnx.GraphProto:
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    weight = numpy_helper.from_array(np.full((1, 4), 20.0, np.float32), "weight")
    bias = numpy_helper.from_array(np.full((4,), -5.0, np.float32), "bias")
    nodes = [
        helper.make_node("Sub", ["image", "half"], ["centered"]),
        helper.make_node("Abs", ["centered"], ["contrast"]),
        helper.make_node("ReduceMax", ["contrast"], ["peak"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["peak", "weight"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logits"]),
    ]
    return helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, tile, tile])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=[half, weight, bias],
    )


def segmenter_graph(tile: int = 256) -> onnx.GraphProto:
    weight = numpy_helper.from_array(SEG_WEIGHTS.reshape(4, 1, 1, 1), "weight")
    bias = numpy_helper.from_array(SEG_BIASES, "bias")
    nodes = [helper.make_node("Conv", ["image", "weight", "bias"], ["mask_logits"])]
    return helper.make_graph(
        nodes,
        "tiny_segmenter",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, tile, tile])],
        [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, ["N", 4, tile, tile])],
        initializer=[weight, bias],
    )


CLASSIFIER_TOML = """\
role = "classifier"
classes = {classes}
[feed]
mode = "tile"
height = {tile}
width = {tile}
[thresholds]
gate = [0.5]
"""

SEGMENTER_TOML = """\
role = "segmenter"
classes = {classes}
[feed]
mode = "tile"
height = {tile}
width = {tile}
[thresholds]
mask = [0.5]
min_area = [{min_area}]
"""


def write_tiny_repository(root: Path, *, tile: int = 256, min_area: int = 1) -> Path:
    """root/classifier and root/segmenter, Triton-style; returns root."""
    classes = "[" + ", ".join(f'"{c}"' for c in CLASSES) + "]"
    _save(classifier_graph(tile), root / "classifier" / "1" / "model.onnx")
    _save(segmenter_graph(tile), root / "segmenter" / "1" / "model.onnx")
    (root / "classifier" / "config.toml").write_text(
        CLASSIFIER_TOML.format(classes=classes, tile=tile)
    )
    (root / "segmenter" / "config.toml").write_text(
        SEGMENTER_TOML.format(classes=classes, tile=tile, min_area=min_area)
    )
    return root


def expected_masks(image: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The 4 x H x W masks the tiny segmenter gives where every pixel is segmented."""
    x = image.astype(np.float32) / 255.0
    logits = SEG_WEIGHTS[:, None, None] * x[None] + SEG_BIASES[:, None, None]
    return 1.0 / (1.0 + np.exp(-logits)) >= threshold
