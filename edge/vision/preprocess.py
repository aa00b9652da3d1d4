"""Between pixels and tensors: what a model's config says about its input and output.

``InputAdapter`` turns strips into windows (tiles, or the whole strip to resize) and writes them
into a preallocated batch buffer: uint8 pixels for a fused model (``build_engine.graph``: the
normalisation and layout run in the model's graph), else in the model's layout and
normalization. ``OutputAdapter`` turns outputs into per-class probabilities: scores (N x K,
float32) for classifiers, maps (N x K x h x w, uint8 ``round(255 * p)``) for segmenters, from a
fused model's outputs as they are or from a raw model's logits on the host.
"""

from __future__ import annotations

import cv2
import numpy as np

from build_engine.graph import PROB_SCALE, GraphIO
from edge.vision.modelspec import ModelSpec
from edge.vision.tiling import Window, cut_tile, tile_grid


def graph_io(spec: ModelSpec) -> GraphIO:
    """What the fused graph's prologue and epilogue must do for this model's config."""
    adapter = InputAdapter(spec)
    gain, offset = adapter.gain, adapter.offset
    if adapter.uniform:  # one multiply-add for every channel: scalar constants in the graph
        gain, offset = gain[:1], offset[:1]
    return GraphIO(
        role=spec.role,
        input_name=spec.input.name,
        input_layout=spec.input.layout,
        channels=spec.input.channels,
        height=spec.feed.height,
        width=spec.feed.width,
        gain=tuple(float(g) for g in gain),
        offset=tuple(float(o) for o in offset),
        output_name=spec.output.name,
        output_layout=spec.output.layout,
        activation=spec.output.activation,
        background_index=spec.output.background_index,
        classes=spec.num_classes,
    )


def quantise(probs: np.ndarray) -> np.ndarray:
    """Float probabilities as a fused segmenter returns them: uint8 round(255 * p)."""
    scaled = np.multiply(probs, np.float32(PROB_SCALE), dtype=np.float32)
    np.add(scaled, np.float32(0.5), out=scaled)
    np.clip(scaled, 0.0, float(PROB_SCALE), out=scaled)
    return scaled.astype(np.uint8)


def mask_level(threshold: float) -> int:
    """The uint8 map value a probability threshold means: ``p >= t`` is ``q >= mask_level(t)``.

    A map holds q = round(255 p), so q >= L is p >= (L - 0.5) / 255: L = round(255 t + 0.5)
    puts that within 0.5 / 255 of t. At least 1 for any t > 0 (0, outside what was
    segmented, never passes a positive threshold); 256 (nothing passes) above 1.
    """
    if threshold <= 0:
        return 0
    if threshold > 1:
        return PROB_SCALE + 1
    return max(1, min(PROB_SCALE, round(threshold * PROB_SCALE + 0.5)))


class InputAdapter:
    def __init__(self, spec: ModelSpec, dtype: np.dtype = np.dtype(np.float32)) -> None:
        self.spec = spec
        self.dtype = dtype
        self.feed = spec.feed
        self.channels = spec.input.channels
        self._windows: dict[tuple[int, int], list[Window]] = {}
        inp = spec.input
        std = np.broadcast_to(np.asarray(inp.std, np.float32), (self.channels,))
        mean = np.broadcast_to(np.asarray(inp.mean, np.float32), (self.channels,))
        # x = (p * scale - mean) / std, folded into one multiply-add per pixel.
        self.gain = (inp.scale / std).astype(np.float32)
        self.offset = (-mean / std).astype(np.float32)
        self.uniform = bool(
            np.all(self.gain == self.gain[0]) and np.all(self.offset == self.offset[0])
        )

    @property
    def model_hw(self) -> tuple[int, int]:
        return self.feed.height, self.feed.width

    def sample_shape(self) -> tuple[int, int, int]:
        h, w = self.model_hw
        return (self.channels, h, w) if self.spec.input.layout == "NCHW" else (h, w, self.channels)

    def new_batch(self, max_batch: int, fused: bool = False) -> np.ndarray:
        """A batch buffer: the model's input, or a fused model's uint8 N x h x w x C pixels."""
        if fused:
            return np.empty((max_batch, *self.model_hw, self.channels), np.uint8)
        return np.empty((max_batch, *self.sample_shape()), dtype=self.dtype)

    def windows(self, height: int, width: int) -> list[Window]:
        """Where on a height x width strip this model looks; one window per model input.

        The same list object for the same shape (do not change it): cached, as every strip
        asks, for up to 256 shapes (shapes come from the wire).
        """
        key = (height, width)
        found = self._windows.get(key)
        if found is not None:
            return found
        if self.feed.mode == "resize":
            found = [Window(0, 0, height, width)]
        else:
            found = tile_grid(height, width, *self.model_hw, self.feed.rows, self.feed.columns)
        if len(self._windows) < 256:
            self._windows[key] = found
        return found

    def pixels_for(self, image: np.ndarray, window: Window) -> np.ndarray:
        """The window's pixels at the model's size and channel count (h x w x C, uint8)."""
        h, w = self.model_hw
        if self.feed.mode == "resize":
            if image.shape[:2] == (h, w):
                sized = image
            else:
                shrinking = h * w < image.shape[0] * image.shape[1]
                sized = cv2.resize(
                    image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
                )
        else:
            sized = cut_tile(image, window, h, w)
        return self._match_channels(sized)

    def _match_channels(self, pixels: np.ndarray) -> np.ndarray:
        have = 1 if pixels.ndim == 2 else pixels.shape[2]
        if have == self.channels:
            if have == 3 and self.spec.input.color_order == "bgr":
                return pixels[:, :, ::-1]
            return pixels if pixels.ndim == 3 else pixels[:, :, None]
        if self.channels == 1:
            return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)[:, :, None]
        # A grayscale strip for a 3-channel model: the same value in every channel.
        return np.repeat(pixels.reshape(*pixels.shape[:2], 1), 3, axis=2)

    def write(self, batch: np.ndarray, index: int, pixels: np.ndarray) -> None:
        """Normalise h x w x C uint8 pixels into batch[index] in the model's layout."""
        target = batch[index]
        source = pixels.transpose(2, 0, 1) if self.spec.input.layout == "NCHW" else pixels
        if self.uniform:
            np.multiply(source, self.gain[0], out=target, casting="unsafe")
            target += self.offset[0]
            return
        axis_shape = (-1, 1, 1) if self.spec.input.layout == "NCHW" else (1, 1, -1)
        np.multiply(source, self.gain.reshape(axis_shape), out=target, casting="unsafe")
        target += self.offset.reshape(axis_shape)


def _resized(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """N x K x h x w maps at height x width, bilinear, in their dtype."""
    resized = np.empty((*maps.shape[:2], height, width), maps.dtype)
    for i in range(maps.shape[0]):
        # cv2.resize takes up to 512 channels as H x W x C.
        hwc = np.ascontiguousarray(maps[i].transpose(1, 2, 0))
        out = cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR)
        resized[i] = out.reshape(height, width, -1).transpose(2, 0, 1)
    return resized


def sigmoid(x: np.ndarray) -> np.ndarray:
    # Clipping keeps exp() finite for the extreme logits FP16 models produce. The steps run in
    # place on clip's output: the same arithmetic as 1 / (1 + exp(-x)) with one allocation
    # instead of five (segmenter maps are megabytes per batch).
    out = np.clip(x, -60.0, 60.0)
    np.negative(out, out=out)
    np.exp(out, out=out)
    np.add(out, 1.0, out=out)
    return np.divide(1.0, out, out=out)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


class OutputAdapter:
    """``fused``: outputs come from a fused graph (probabilities already); else raw outputs."""

    def __init__(self, spec: ModelSpec, fused: bool = False) -> None:
        self.spec = spec
        self.out = spec.output
        self.fused = fused

    def check_declared(self, shape: list[int | None]) -> None:
        """An output shape (None: a dim unknown) against the config, the error naming the key:
        the declared one before a graph is fused on those axes, and each raw output."""
        if self.spec.role == "classifier":
            if len(shape) != 2:
                raise ValueError(
                    f"classifier {self.spec.name!r} output has shape {shape}; expected "
                    f"[N, {self._expected_channels()}] (one per class; check output.name)"
                )
            if shape[1] is not None:
                self._check_channels(shape, axis=1)
            return
        if len(shape) != 4:
            raise ValueError(
                f"segmenter {self.spec.name!r} output has shape {shape}; expected 4-D "
                f"(output.layout = {self.out.layout!r}; check output.name)"
            )
        axis = 1 if self.out.layout == "NCHW" else 3
        if shape[axis] is not None or shape[4 - axis] is not None:
            self._check_channels(shape, axis=axis)

    def _fused_shape(self, raw: np.ndarray, ndim: int) -> None:
        k = self.spec.num_classes
        if raw.ndim != ndim or raw.shape[1] != k:
            raise ValueError(
                f"fused {self.spec.role} {self.spec.name!r} returned shape {list(raw.shape)}; "
                f"expected [N, {k}{', h, w' if ndim == 4 else ''}]"
            )

    def _probabilities(self, raw: np.ndarray, class_axis: int) -> np.ndarray:
        raw = raw.astype(np.float32, copy=False)
        if self.out.activation == "sigmoid":
            probs = sigmoid(raw)
        elif self.out.activation == "softmax":
            probs = softmax(raw, axis=class_axis)
        else:
            probs = raw
        if self._drops_background:
            probs = np.delete(probs, self.out.background_index, axis=class_axis)
        if probs.shape[class_axis] != self.spec.num_classes:
            raise ValueError(self._mismatch(raw.shape[class_axis], list(raw.shape)))
        return probs

    @property
    def _drops_background(self) -> bool:
        return self.out.activation == "softmax" and self.out.background_index is not None

    def _expected_channels(self) -> int:
        """Raw class outputs the config implies: one per class, plus a dropped background."""
        return self.spec.num_classes + int(self._drops_background)

    def _mismatch(self, channels: int, shape: list[int]) -> str:
        """Why ``channels`` raw class outputs contradict the config, naming the key to fix."""
        k = self.spec.num_classes
        message = (
            f"model {self.spec.name!r} output has shape {shape}: {channels} class outputs "
            f"(output.activation = {self.out.activation!r}"
            + (
                f", output.background_index = {self.out.background_index}"
                if self.out.background_index is not None
                else ""
            )
            + f"), but classes = {list(self.spec.classes)} has {k}"
        )
        if channels == k + 1 and not self._drops_background:
            if self.out.activation == "softmax":
                return (
                    f"{message}; if the extra output is a background logit, set "
                    f"output.background_index to its index (0..{k}), else add its class to classes"
                )
            return (
                f"{message}; if the extra output is a background logit, set "
                f"output.activation = 'softmax' and output.background_index to its index "
                f"(0..{k}), else add its class to classes"
            )
        if channels == k and self._drops_background:
            return (
                f"{message}; output.background_index drops one of them: remove "
                "output.background_index, or add the missing class to classes"
            )
        return f"{message}; give classes one name per class output"

    def scores(self, raw: np.ndarray) -> np.ndarray:
        """Classifier output (N x K logits or probabilities) -> N x K probabilities."""
        if self.fused:
            self._fused_shape(raw, 2)
            return raw
        self.check_declared(list(raw.shape))
        return self._probabilities(raw, class_axis=1)

    def maps(self, raw: np.ndarray, height: int, width: int) -> np.ndarray:
        """Segmenter output -> N x K x height x width uint8 maps, round(255 * p), at the
        window's size: what the stitching and the thresholds take."""
        if not self.fused:
            return quantise(self.float_maps(raw, height, width))
        self._fused_shape(raw, 4)
        if raw.shape[2:] == (height, width):
            return raw
        return _resized(raw, height, width)

    def float_maps(self, raw: np.ndarray, height: int, width: int) -> np.ndarray:
        """Raw segmenter output -> N x K x height x width float32 probabilities."""
        self.check_declared(list(raw.shape))
        if self.out.layout == "NHWC":
            raw = raw.transpose(0, 3, 1, 2)
        probs = self._probabilities(raw, class_axis=1)
        if probs.shape[2:] == (height, width):
            return probs
        return _resized(probs, height, width)

    def _check_channels(self, shape: list[int], axis: int) -> None:
        """Raw class outputs on ``axis`` of an output of this shape, as the config implies."""
        expected = self._expected_channels()
        if shape[axis] == expected:
            return
        other, other_layout = {1: (3, "NHWC"), 3: (1, "NCHW")}[axis]
        if len(shape) == 4 and shape[other] == expected:
            # A segmenter whose class outputs sit on the other layout's axis.
            raise ValueError(
                f"segmenter {self.spec.name!r} output has shape {shape}, which does not match "
                f"output.layout = {self.out.layout!r}: that reads {shape[axis]} class outputs "
                f"(dim {axis}), but dim {other} has the {expected} its config implies: set "
                f"output.layout = {other_layout!r}"
            )
        raise ValueError(self._mismatch(shape[axis], shape))
