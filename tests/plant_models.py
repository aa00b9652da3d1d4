"""Tiny ONNX stand-ins for the models plants already run, each with the config that serves it.

The daemon must serve a plant's existing model by configuration alone, so these reproduce the
I/O forms (layout, size, preprocessing, activation, output shape) of real exports while staying
small enough to run in milliseconds. Each model computes something simple and exact, so a test
can predict its output in numpy from the input tensor the daemon built:

* classifiers: per-channel spatial mean, then a fixed linear map (then a sigmoid when the real
  model applies it inside the graph). Channel weights differ, so feeding RGB where BGR is
  expected changes the score;
* segmenter: a fixed per-pixel linear map of the channels (a 1x1 convolution), then a sigmoid.

All weights are positive for the "defect" outputs, so a brighter strip scores higher.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# 17 keeps ReduceMean's axes an attribute and is within what every backend we target accepts.
OPSET = 17
BATCH = "N"
SEVERSTAL_CLASSES = ("defect_1", "defect_2", "defect_3", "defect_4")


@dataclass(frozen=True)
class PlantModel:
    name: str
    config: dict[str, Any]
    onnx_bytes: bytes
    # Maps the input batch exactly as the model receives it (after preprocessing) to the output
    # the model returns for it.
    expected: Callable[[np.ndarray], np.ndarray]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The input shape for batch size 1."""
        feed, inp = self.config["feed"], self.config["input"]
        h, w, c = feed["height"], feed["width"], inp["channels"]
        return (1, h, w, c) if inp.get("layout", "NCHW") == "NHWC" else (1, c, h, w)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _pooled_linear_graph(
    *,
    name: str,
    input_name: str,
    output_name: str,
    layout: str,
    height: int,
    width: int,
    weight: np.ndarray,
    bias: np.ndarray,
    sigmoid: bool,
) -> bytes:
    """x -> per-channel spatial mean [N, C] -> @ weight [C, K] + bias [K] (-> sigmoid) -> [N, K]."""
    channels, outputs = weight.shape
    if layout == "NHWC":
        in_shape: list[int | str] = [BATCH, height, width, channels]
        axes = [1, 2]
    else:
        in_shape = [BATCH, channels, height, width]
        axes = [2, 3]
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["pooled"], axes=axes, keepdims=0),
        helper.make_node("MatMul", ["pooled", "weight"], ["linear"]),
        helper.make_node("Add", ["linear", "bias"], ["logits" if sigmoid else output_name]),
    ]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["logits"], [output_name]))
    return _model_bytes(
        name,
        nodes,
        helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_shape),
        helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [BATCH, outputs]),
        [weight, bias],
    )


def _model_bytes(
    name: str,
    nodes: list[onnx.NodeProto],
    graph_input: onnx.ValueInfoProto,
    graph_output: onnx.ValueInfoProto,
    params: list[np.ndarray],
) -> bytes:
    initializers = [
        numpy_helper.from_array(arr.astype(np.float32), pname)
        for pname, arr in zip(("weight", "bias"), params, strict=True)
    ]
    graph = helper.make_graph(nodes, name, [graph_input], [graph_output], initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-tests",
    )
    # Pinned so onnxruntime releases older than the onnx package still load the file.
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _pooled_expected(
    layout: str, weight: np.ndarray, bias: np.ndarray, sigmoid: bool
) -> Callable[[np.ndarray], np.ndarray]:
    axes = (1, 2) if layout == "NHWC" else (2, 3)

    def expected(batch: np.ndarray) -> np.ndarray:
        pooled = batch.astype(np.float64).mean(axis=axes)
        out = pooled @ weight.astype(np.float64) + bias.astype(np.float64)
        return (_sigmoid(out) if sigmoid else out).astype(np.float32)

    return expected


def _classifier(
    *,
    name: str,
    config: dict[str, Any],
    weight: np.ndarray,
    bias: np.ndarray,
    sigmoid_in_graph: bool,
    input_name: str = "input",
    output_name: str = "output",
) -> PlantModel:
    layout = config["input"]["layout"]
    onnx_bytes = _pooled_linear_graph(
        name=name,
        input_name=input_name,
        output_name=output_name,
        layout=layout,
        height=config["feed"]["height"],
        width=config["feed"]["width"],
        weight=weight,
        bias=bias,
        sigmoid=sigmoid_in_graph,
    )
    expected = _pooled_expected(layout, weight, bias, sigmoid_in_graph)
    return PlantModel(name, config, onnx_bytes, expected)


def keras_resnet50_binary() -> PlantModel:
    """Keras ResNet50 + Dense(1, sigmoid): NHWC 224x224, caffe preprocessing, probabilities out."""
    config: dict[str, Any] = {
        "name": "keras_resnet50_binary",
        "role": "classifier",
        "classes": ["defect"],
        "description": "Keras ResNet50 binary classifier, whole strip resized to 224x224",
        "input": {
            "name": "input_1",
            "layout": "NHWC",
            "channels": 3,
            "normalization": "caffe",
        },
        "feed": {"mode": "resize", "height": 224, "width": 224},
        "output": {"name": "dense_1", "activation": "none"},
    }
    # Caffe inputs span about -124..152; these weights keep the score off the rails for greys.
    weight = np.array([[0.01], [0.02], [0.03]])
    bias = np.array([0.0])
    return _classifier(
        name=config["name"],
        config=config,
        weight=weight,
        bias=bias,
        sigmoid_in_graph=True,
        input_name="input_1",
        output_name="dense_1",
    )


def keras_resnet50_unet() -> PlantModel:
    """segmentation_models-style Keras U-Net: NHWC 128x800 in, 4 sigmoid channels NHWC out."""
    name = "keras_resnet50_unet"
    height, width = 128, 800
    config: dict[str, Any] = {
        "name": name,
        "role": "segmenter",
        "classes": list(SEVERSTAL_CLASSES),
        "description": "Keras ResNet50 U-Net, whole strip resized to 128x800",
        "input": {"layout": "NHWC", "channels": 3, "normalization": "caffe"},
        "feed": {"mode": "resize", "height": height, "width": width},
        "output": {"activation": "none", "layout": "NHWC"},
    }
    # Rows are input channels (B, G, R after caffe), columns the 4 classes: each class reacts to
    # a different channel mix so a swapped channel order or class axis shows in the output.
    weight = np.array(
        [
            [0.02, -0.02, 0.00, 0.01],
            [0.00, 0.02, -0.02, 0.01],
            [-0.02, 0.00, 0.02, 0.01],
        ]
    )
    bias = np.array([-1.0, -0.5, 0.0, 0.5])
    # In NHWC a 1x1 convolution is a MatMul over the last axis: no transposes needed.
    nodes = [
        helper.make_node("MatMul", ["input", "weight"], ["linear"]),
        helper.make_node("Add", ["linear", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    onnx_bytes = _model_bytes(
        name,
        nodes,
        helper.make_tensor_value_info("input", TensorProto.FLOAT, [BATCH, height, width, 3]),
        helper.make_tensor_value_info("output", TensorProto.FLOAT, [BATCH, height, width, 4]),
        [weight, bias],
    )

    def expected(batch: np.ndarray) -> np.ndarray:
        out = batch.astype(np.float64) @ weight + bias
        return _sigmoid(out).astype(np.float32)

    return PlantModel(name, config, onnx_bytes, expected)


def pytorch_resnet18_softmax() -> PlantModel:
    """torchvision ResNet18 with a 2-way head: NCHW 224x224 tiles, ImageNet norm, raw logits."""
    config: dict[str, Any] = {
        "name": "pytorch_resnet18_softmax",
        "role": "classifier",
        "classes": ["defect"],
        "description": "PyTorch ResNet18, logits [background, defect], 224x224 tiles",
        "input": {"layout": "NCHW", "channels": 3, "normalization": "imagenet"},
        "feed": {"mode": "tile", "height": 224, "width": 224},
        "output": {"activation": "softmax", "background_index": 0},
    }
    # Column 0 is the background logit, column 1 the defect logit.
    weight = np.array([[-0.5, 0.5], [-0.5, 1.0], [-0.5, 1.5]])
    bias = np.array([0.25, -0.25])
    return _classifier(
        name=config["name"], config=config, weight=weight, bias=bias, sigmoid_in_graph=False
    )


def resnet50_multilabel() -> PlantModel:
    """A 3-class multilabel ResNet50: NCHW 256x256 tiles, sigmoid logits, a gate per class."""
    config: dict[str, Any] = {
        "name": "resnet50_multilabel",
        "role": "classifier",
        "classes": ["a", "b", "c"],
        "description": "ResNet50 multilabel, 256x256 tiles, per-class gates",
        "input": {"layout": "NCHW", "channels": 3, "normalization": "imagenet"},
        "feed": {"mode": "tile", "height": 256, "width": 256},
        "output": {"activation": "sigmoid"},
        "thresholds": {"gate": [0.3, 0.5, 0.7]},
    }
    weight = np.array([[1.0, 0.2, 0.1], [0.2, 1.0, 0.2], [0.1, 0.2, 1.0]])
    bias = np.array([-0.5, 0.0, 0.5])
    return _classifier(
        name=config["name"], config=config, weight=weight, bias=bias, sigmoid_in_graph=False
    )


def efficientnet_binary_512() -> PlantModel:
    """EfficientNet binary classifier: whole strip resized to 512x512, NCHW, one sigmoid logit."""
    config: dict[str, Any] = {
        "name": "efficientnet_binary_512",
        "role": "classifier",
        "classes": ["defect"],
        "description": "EfficientNet binary classifier, whole strip resized to 512x512",
        "input": {"layout": "NCHW", "channels": 3, "normalization": "imagenet"},
        "feed": {"mode": "resize", "height": 512, "width": 512},
        "output": {"activation": "sigmoid"},
    }
    weight = np.array([[0.5], [1.0], [1.5]])
    bias = np.array([-0.1])
    return _classifier(
        name=config["name"], config=config, weight=weight, bias=bias, sigmoid_in_graph=False
    )


ALL_PLANT_MODELS: list[Callable[[], PlantModel]] = [
    keras_resnet50_binary,
    keras_resnet50_unet,
    pytorch_resnet18_softmax,
    resnet50_multilabel,
    efficientnet_binary_512,
]


# -- writing model folders ---------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(config: dict[str, Any]) -> str:
    """A model config (scalars at the top, one level of tables) as TOML, the way a person writes it."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for key, table in config.items():
        if isinstance(table, dict):
            lines += ["", f"[{key}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def with_edge_metadata(onnx_bytes: bytes, config: dict[str, Any]) -> bytes:
    """The model with ``config`` as JSON under metadata key ``edge``: a self-describing file."""
    model = onnx.load_from_string(onnx_bytes)
    helper.set_model_props(model, {"edge": json.dumps(config)})
    return model.SerializeToString()


def write_model_dir(
    root: Path, model: PlantModel, version: int = 1, *, config_in_metadata: bool = False
) -> Path:
    """Write ``root/<name>/config.toml`` and ``root/<name>/<version>/model.onnx``; return the folder.

    ``config_in_metadata``: write no config.toml and put the config in the ONNX metadata instead.
    """
    model_dir = root / model.name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    onnx_bytes = model.onnx_bytes
    if config_in_metadata:
        onnx_bytes = with_edge_metadata(onnx_bytes, model.config)
    else:
        (model_dir / "config.toml").write_text(to_toml(model.config))
    (model_dir / str(version) / "model.onnx").write_bytes(onnx_bytes)
    return model_dir


# Every form above, for tests that run each one through a backend: the docs' promise.
PLANT_FORMS: list[Callable[[], PlantModel]] = [
    keras_resnet50_binary,  # NHWC, caffe (BGR, per-channel mean), sigmoid
    pytorch_resnet18_softmax,  # softmax with a background logit, imagenet
    resnet50_multilabel,  # 3 classes, per-class gates
    efficientnet_binary_512,  # 512 px tiles
    keras_resnet50_unet,  # NHWC segmenter, resize feed
]
