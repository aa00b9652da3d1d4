"""Fixed-filter reference models written as ONNX graphs, not trained.

They were the first shipped models; the trained ones (``edge train``) replaced them in
``models/``. They remain a model pair that needs only ``onnx`` to build, with known behaviour
on ``edge.vision.synthetic`` strips: a torch-free fallback and a fixture. Every filter is a pooling or
convolution with fixed weights; the per-class responses become logits through a fixed affine
map, tuned on synthetic strips (numbers in docs/handcrafted-models.md).

    python -m edge.handcrafted DIR

writes ``classifier/`` and ``segmenter/`` (config.toml + 1/model.onnx) into a model repository,
byte-identical on every run.

Per class, on x = pixel / 255 (the strip travels along y, so scratches run vertically):

1. pits: a pixel darker than its neighbourhood along both axes and than each of its four sides
   (a rolling streak is darker than only its horizontal neighbourhood).
2. scratches: columns averaged along y, then a line brighter or darker than the columns on
   *both* sides; demanding both sides rejects the vertical edges of large blobs.
3. scale: dense roughness along y, where clean steel is smooth.
4. holes: dark relative to the brightest steel nearby (a ratio, so lighting cancels).

Then cross-inhibition: a response that another class explains better is suppressed (pits on
the rim of a hole or inside rough scale or along a scratch; holes that are rough; scale on a
hole's rim). The classifier is the same graph, box-smoothed and max-pooled over the tile.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.vision.modelspec import CONFIG_FILE, METADATA_KEY, MODEL_FILE

CLASSES = ("pits", "scratches", "scale", "holes")
TILE = 256
OPSET = 17
PRODUCER = "edge.handcrafted"
PRODUCER_VERSION = "1"  # fixed, not the package version, so rebuilds stay byte-identical
DESCRIPTION = (
    "Fixed-filter reference model built in code by edge.handcrafted (not trained): {what}. "
    "Tuned on edge.synthetic strips; for demos and wiring tests, not for production."
)

# Everything below is in units of x = pixel / 255 and was tuned on edge.vision.synthetic strips.
# Per class (pits, scratches, scale, holes): logit = gain * (response - offset), so the offset is
# where the probability crosses 0.5 and the config's thresholds can stay at 0.5.
SEG_GAIN = (100.0, 100.0, 1000.0, 25.0)
SEG_OFFSET = (0.05, 0.05, 0.012, 0.38)
CLS_GAIN = SEG_GAIN
CLS_OFFSET = (0.065, 0.08, 0.0155, 0.45)  # above clean tiles' 99.8th percentile
CLS_SMOOTH = (3, 3)  # box before the tile max, so one noisy pixel cannot carry a tile
# Bounded so a float32 probability never rounds to exactly 0 or 1 (and exp() never overflows
# in a consumer's sigmoid). Asymmetric so that where two overlapping tiles are each sure of the
# opposite, their average stays clearly below 0.5 instead of landing exactly on the threshold.
LOGIT_RANGE = (-16.0, 12.0)
GATE = (0.5, 0.5, 0.5, 0.5)
MASK = (0.5, 0.5, 0.5, 0.5)
MIN_AREA = (9, 150, 1000, 300)  # full-frame px: a pit's dot, a short scratch, a scale patch
# Roughness per pixel is capped at this so that a few strong edges or dots cannot pass for
# the dense moderate roughness of scale.
SCALE_CAP = 0.04
PITS_SIDES = (2, 7, 3.0)  # each side: offsets 2..7 px; its excess counts 3x
HOLE_REF_MAX = 0.5  # a hole is also darker than 0.62 * 0.5 (~80 gray) outright
# Cross-inhibition: responses that other classes explain are suppressed. "dark" is how much
# darker than the steel around it a >= 17 px area is (1 = black); "rough" is the scale response.
PITS_DARK_FROM = 0.4  # pits near a hole or dark patch are its rim, not pits
PITS_ROUGH_FROM = 0.016  # clean steel stays below this roughness; scale is above
PITS_LINE_FROM = 0.065  # a line that survives 31 rows of averaging is a scratch, not dots
SCALE_DARK_FROM = 0.55  # a hole's rim is rough; only really dark areas inhibit scale
HOLE_ROUGH_FROM = 0.016  # holes are smooth inside; dark scale is rough
INHIBIT_GAIN = {
    "pits_dark": 1.0,
    "pits_rough": 30.0,
    "pits_line": 2.0,
    "scale_dark": 0.05,
    "hole_rough": 100.0,
}


class _Graph:
    """Collects nodes and constants with deterministic names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, value: Any, stem: str = "c") -> str:
        name = self._name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def ints(self, value: list[int], stem: str = "i") -> str:
        name = self._name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        name = out or self._name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [name], name=f"n_{name}", **attrs)
        )
        return name

    # Filters. AveragePool without counting padding is a box mean whose border behaves like
    # clamping, unlike a zero-padded Conv that would darken every tile's rim.
    def box(self, x: str, ky: int, kx: int) -> str:
        return self.op(
            "AveragePool",
            x,
            kernel_shape=[ky, kx],
            pads=[ky // 2, kx // 2, ky // 2, kx // 2],
            count_include_pad=0,
        )

    def box2(self, x: str, k: int) -> str:
        """A k x k box as two 1-D passes: O(k) instead of O(k^2) per pixel."""
        return self.box(self.box(x, 1, k), k, 1)

    def sides(self, x: str, near: int, far: int, axis: int) -> tuple[str, str]:
        """Means of x over offsets -far..-near and near..far along ``axis`` (3: x, 2: y)."""
        k = 2 * far + 1
        kernels = np.zeros((2, k), dtype=np.float32)
        kernels[0, : far - near + 1] = 1.0 / (far - near + 1)
        kernels[1] = kernels[0, ::-1]
        shape = (2, 1, 1, k) if axis == 3 else (2, 1, k, 1)
        pads = [0, 0, 0, far, 0, 0, 0, far] if axis == 3 else [0, 0, far, 0, 0, 0, far, 0]
        # Edge padding, so a tile's border sees steel rather than zeros.
        padded = self.op("Pad", x, self.ints(pads), mode="edge")
        both = self.op("Conv", padded, self.const(kernels.reshape(shape), "w"))
        first = self.op("Slice", both, self.ints([0]), self.ints([1]), self.ints([1]))
        second = self.op("Slice", both, self.ints([1]), self.ints([2]), self.ints([1]))
        return first, second

    def ridge(self, x: str, near: int, far: int, axis: int) -> str:
        """How much x stands out from *both* sides (bright or dark); ~0 on a step edge."""
        before, after = self.sides(x, near, far, axis)
        d1, d2 = self.sub(x, before), self.sub(x, after)
        bright = self.op("Min", d1, d2)
        dark = self.op("Neg", self.op("Max", d1, d2))
        # A step edge leaves one side level and the other opposite: negative, so clamp to 0.
        return self.relu(self.op("Max", bright, dark))

    def maxpool(self, x: str, ky: int, kx: int | None = None) -> str:
        """A ky x kx dilation (square if kx is None), separable like the boxes."""
        kx = ky if kx is None else kx
        row = self.op("MaxPool", x, kernel_shape=[1, kx], pads=[0, kx // 2, 0, kx // 2])
        return self.op("MaxPool", row, kernel_shape=[ky, 1], pads=[ky // 2, 0, ky // 2, 0])

    def down_up(self, x: str, factor: int, inner: list[tuple[str, dict[str, Any]]]) -> str:
        """Run ``inner`` pooling ops at 1/factor resolution and resize back (large scales, cheap)."""
        y = self.op("AveragePool", x, kernel_shape=[factor, factor], strides=[factor, factor])
        for op_type, attrs in inner:
            y = self.op(op_type, y, **attrs)
        scales = self.const([1.0, 1.0, float(factor), float(factor)], "scales")
        return self.op(
            "Resize", y, "", scales, mode="linear", coordinate_transformation_mode="half_pixel"
        )

    def relu(self, x: str) -> str:
        return self.op("Relu", x)

    def sub(self, a: str, b: str) -> str:
        return self.op("Sub", a, b)

    def add(self, a: str, b: str) -> str:
        return self.op("Add", a, b)

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", a, b)


def _pool(op_type: str, k: int) -> tuple[str, dict[str, Any]]:
    attrs: dict[str, Any] = {"kernel_shape": [k, k], "pads": [k // 2] * 4}
    if op_type == "AveragePool":
        attrs["count_include_pad"] = 0
    return op_type, attrs


def _responses(g: _Graph, x: str) -> list[str]:
    """One [N,1,H,W] response per class, each in units of x."""

    def inhibit(response: str, cause: str, start: float, gain: str) -> str:
        excess = g.relu(g.sub(cause, g.const(start)))
        return g.sub(response, g.mul(excess, g.const(INHIBIT_GAIN[gain])))

    # Reference steel level: the brightest 8x8 mean within ~70 px, smoothed. Holes and dark
    # scale don't pull it down; a bright patch raises it only inside itself.
    ref = g.add(g.down_up(x, 8, [_pool("MaxPool", 9), _pool("AveragePool", 5)]), g.const(0.02))
    mid = g.box2(x, 9)
    small = g.box2(x, 3)

    # Holes: 1 - mid / ref, how much darker than the steel around it (lighting cancels), but
    # also dark outright: next to a bright patch the reference is raised and steel looks dark.
    holes = g.sub(g.const(1.0), g.op("Div", mid, g.op("Min", ref, g.const(HOLE_REF_MAX))))
    # Dark even at the brightest 9x9 mean nearby: a dark area wider than ~17 px, which a
    # cluster of pits is not. Dilated by 15 px so it also covers that area's rim.
    dark = g.maxpool(g.sub(g.const(1.0), g.op("Div", g.maxpool(mid, 9), ref)), 31)

    # Scale: dense roughness along y, where clean steel is smooth (it is rolled along y).
    band = g.op("Abs", g.sub(small, g.box(small, 9, 1)))
    scale = g.box2(g.op("Min", band, g.const(SCALE_CAP)), 25)
    scale = inhibit(scale, dark, SCALE_DARK_FROM, "scale_dark")
    holes = inhibit(holes, scale, HOLE_ROUGH_FROM, "hole_rough")

    # Scratches: columns averaged along y, then a ridge across x (columns 3..6 px either side).
    scratches = g.ridge(g.box(x, 15, 1), 3, 6, axis=3)

    # Pits: a pixel darker than its surroundings along both axes (a rolling streak is darker
    # than only its horizontal neighbourhood). No pre-smoothing: the dots are 3-7 px across and
    # blurring them costs more Dice than the sensor noise does.
    pits = g.op("Min", g.sub(g.box(x, 1, 15), x), g.sub(g.box(x, 15, 1), x))
    # ...and darker than each of its four sides on its own (scaled up: near a dot's rim the side
    # towards its centre is partly dot), which steel beside a bright patch is not.
    (left, right), (up, down) = (
        g.sides(x, PITS_SIDES[0], PITS_SIDES[1], 3),
        g.sides(x, PITS_SIDES[0], PITS_SIDES[1], 2),
    )
    four = g.mul(g.sub(g.op("Min", left, right, up, down), x), g.const(PITS_SIDES[2]))
    pits = g.op("Min", pits, four)
    pits = inhibit(pits, dark, PITS_DARK_FROM, "pits_dark")
    # Dilated so the rim of a rough patch (half-rough under the box) is covered too.
    pits = inhibit(pits, g.maxpool(scale, 15), PITS_ROUGH_FROM, "pits_rough")
    # Averaged over 31 rows a dot fades while a scratch (60+ px long) stays; dilated along y to
    # reach the scratch's ends and jaggies.
    long_line = g.maxpool(g.ridge(g.box(x, 31, 1), 3, 6, axis=3), 31, 5)
    pits = inhibit(pits, long_line, PITS_LINE_FROM, "pits_line")
    return [pits, scratches, scale, holes]


def _affine(g: _Graph, x: str, offset: tuple[float, ...], gain: tuple[float, ...], out: str) -> str:
    """logit = gain * (response - offset): offset is where the probability crosses 0.5."""
    shape = (1, 4, 1, 1) if out == "mask_logits" else (1, 4)
    off = g.const(np.asarray(offset).reshape(shape), "offset")
    logits = g.mul(g.sub(x, off), g.const(np.asarray(gain).reshape(shape), "gain"))
    return g.op("Clip", logits, g.const(LOGIT_RANGE[0]), g.const(LOGIT_RANGE[1]), out=out)


def build_model(role: str) -> onnx.ModelProto:
    g = _Graph()
    responses = g.op("Concat", *_responses(g, "image"), axis=1)
    if role == "segmenter":
        _affine(g, responses, SEG_OFFSET, SEG_GAIN, "mask_logits")
        out = helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, ["N", 4, TILE, TILE])
    else:
        smooth = g.box(g.box(responses, 1, CLS_SMOOTH[1]), CLS_SMOOTH[0], 1)
        pooled = g.op("ReduceMax", smooth, axes=[2, 3], keepdims=0)
        _affine(g, pooled, CLS_OFFSET, CLS_GAIN, "logits")
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])
    inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, TILE, TILE])
    graph = helper.make_graph(g.nodes, f"handcrafted_{role}", [inp], [out], initializer=g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
        ir_version=8,
    )
    model.doc_string = DESCRIPTION.format(what=role)
    helper.set_model_props(model, {METADATA_KEY: json.dumps(config(role), sort_keys=True)})
    onnx.checker.check_model(model, full_check=True)
    return model


def config(role: str) -> dict[str, Any]:
    """The model's config table (the same content as its config.toml)."""
    what = (
        "per-tile defect scores (sigmoid logits)"
        if role == "classifier"
        else "per-pixel defect masks (sigmoid logits)"
    )
    thresholds: dict[str, Any] = (
        {"gate": list(GATE)}
        if role == "classifier"
        else {"mask": list(MASK), "min_area": list(MIN_AREA)}
    )
    output: dict[str, Any] = {
        "name": "logits" if role == "classifier" else "mask_logits",
        "activation": "sigmoid",
    }
    if role == "segmenter":
        output["layout"] = "NCHW"
    return {
        "name": role,
        "role": role,
        "classes": list(CLASSES),
        "description": DESCRIPTION.format(what=what),
        "input": {"name": "image", "layout": "NCHW", "channels": 1, "normalization": "unit"},
        "feed": {"mode": "tile", "height": TILE, "width": TILE},
        "output": output,
        "thresholds": thresholds,
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def config_toml(role: str) -> str:
    data = config(role)
    lines = [
        f"# {PRODUCER}: written by `python -m edge.handcrafted models/`; edit the code, not this."
    ]
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines += [f"{k} = {_toml_value(v)}" for k, v in data.items() if k not in tables]
    for table, entries in tables.items():
        lines += ["", f"[{table}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in entries.items()]
    return "\n".join(lines) + "\n"


def write_repository(root: Path) -> list[Path]:
    """Write both models into ``root`` (overwriting); returns the files written."""
    written = []
    for role in ("classifier", "segmenter"):
        model_dir = root / role
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        config_path = model_dir / CONFIG_FILE
        config_path.write_text(config_toml(role))
        onnx_path = model_dir / "1" / MODEL_FILE
        onnx_path.write_bytes(build_model(role).SerializeToString(deterministic=True))
        written += [config_path, onnx_path]
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m edge.handcrafted MODEL_REPOSITORY_DIR", file=sys.stderr)
        return 2
    for path in write_repository(Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
