"""FP32 ONNX -> FP16 ONNX on the CPU, the input TensorRT 11's strongly typed networks need.

TensorRT 11 removed the FP16 builder flag: precision lives in the graph. NVIDIA recommends
ModelOpt AutoCast for that; ``onnxconverter-common``'s float16 pass does the same job for our
convolutional models, installs anywhere, and keeps the graph's inputs and outputs float32
(``keep_io_types``), so the daemon feeds an FP16 model exactly as it feeds the FP32 one.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from build_engine.graph import is_fused_node
from build_engine.sidecar import atomic_write


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
    _name_every_node(model)
    # keep_io_types: Cast nodes at the edges, so inputs/outputs stay float32. A fused graph's
    # prologue and epilogue (build_engine.graph) stay float32 too: the converter would retype
    # their uint8 -> float Casts' outputs without changing the Casts. So does the input's stem.
    fused = [n.name for n in model.graph.node if is_fused_node(n.name)]
    blocked = sorted({*fused, *stem_nodes(model.graph)})
    with warnings.catch_warnings():
        # "the float32 number 3.5e-08 will be truncated to 1e-07", once per tiny weight: FP16's
        # range, not a fault; the agreement check against FP32 judges the result.
        warnings.filterwarnings("ignore", "the float32 number", UserWarning)
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, node_block_list=blocked
        )
    _float32_outputs(converted, onnx)
    onnx.checker.check_model(converted)
    atomic_write(out_path, converted.SerializeToString())
    return out_path


def stem_nodes(graph: Any) -> list[str]:
    """Names of the nodes from the graph's inputs up to and through the first convolution on
    every path, and those after it up to the next one: the input's stem, kept in FP32.

    The first convolution sees the pixels themselves. In FP16 it moved the v3 reference
    classifier's scores by up to 0.013 on the real strips, over the 0.01 bar; the stem is a
    small share of a model's work. (OpenVINO's bf16 keeps the same ops in f32.)
    """
    producer = {out: node.name for node in graph.node for out in node.output}
    depth: dict[str, int] = {}  # convolutions on the longest path from an input, through it
    stem = []
    for node in graph.node:  # ONNX graphs list their nodes in topological order
        before = [depth[producer[i]] for i in node.input if i in producer]
        depth[node.name] = max(before, default=0) + (node.op_type in _CONVOLUTIONS)
        if depth[node.name] <= 1 and node.op_type != "Constant":
            stem.append(node.name)
    return stem


_CONVOLUTIONS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"}


def _name_every_node(model: Any) -> None:
    """Give each unnamed node a unique name: the converter blocks nodes by name and names its
    Casts after them (unnamed, every Cast of a blocked node is "_input_cast0", and its cast
    pass fails on the clash)."""
    taken = {node.name for node in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _float32_outputs(model: object, onnx: object) -> None:
    """Make every graph output float32 again where the converter left it float16.

    keep_io_types misses an output made by an op on its keep-in-float32 list (Resize, as in a
    U-Net's final upsampling): it casts that op's result back to float16 and types the graph
    output float16. Such an output's producer is that Cast: it is pointed at float32 instead.
    Any other float16 output gets a Cast to float32 appended.
    """
    graph = model.graph  # type: ignore[attr-defined]
    tensor = onnx.TensorProto  # type: ignore[attr-defined]
    producers = {out: node for node in graph.node for out in node.output}
    for output in graph.output:
        elem = output.type.tensor_type
        if elem.elem_type != tensor.FLOAT16:
            continue
        producer = producers.get(output.name)
        if producer is not None and producer.op_type == "Cast":
            for attr in producer.attribute:
                if attr.name == "to":
                    attr.i = tensor.FLOAT
        else:
            inner = output.name + "_float16"
            for node in graph.node:
                node.output[:] = [inner if o == output.name else o for o in node.output]
                node.input[:] = [inner if i == output.name else i for i in node.input]
            graph.node.append(
                onnx.helper.make_node("Cast", [inner], [output.name], to=tensor.FLOAT)  # type: ignore[attr-defined]
            )
        elem.elem_type = tensor.FLOAT


def fp16_path_for(onnx_path: Path, folder: Path) -> Path:
    """Where the FP16 copy of a model is kept (beside its engine), e.g. model.fp16.onnx."""
    return folder / (Path(onnx_path).stem + ".fp16.onnx")
