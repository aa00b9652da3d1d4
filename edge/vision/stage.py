"""A stage of the cascade: one model with its adapters and its batch buffer.

It feeds windows of strips to its backend in chunks of the backend's max batch, as the
backend takes them (uint8 tiles for a fused model, normalised tensors for a raw one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from build_engine.graph import PROB_SCALE
from edge.vision.backends.base import Backend
from edge.vision.modelspec import ModelFiles
from edge.vision.preprocess import InputAdapter, OutputAdapter
from edge.vision.tiling import Window

# How close to its gate a classifier score from a reduced-precision backend must be to be
# scored again in FP32: bf16 moved scores by at most 0.017 on the 148 real strips of
# severstal_train (docs/performance.md), so this is about twice the worst seen.
RECHECK_MARGIN = 0.04


class Stage:
    """One model with its adapters and a preallocated input buffer of its max batch.

    A fused backend (``build_engine.graph``) takes uint8 tiles as the strip holds them and
    returns probabilities; a raw one takes normalised tensors the host makes and returns
    logits. Either way the stage hands out scores (float32) and uint8 maps.
    """

    def __init__(self, files: ModelFiles, backend: Backend, precise: Backend | None = None) -> None:
        self.files = files
        self.backend = backend
        # The same model in FP32 beside a reduced-precision backend (OpenVINO bf16): scores
        # that close to a gate are taken from it (see RECHECK_MARGIN).
        self.precise = precise
        self.fused = bool(getattr(backend, "fused", False))
        self.inputs = InputAdapter(files.spec, backend.input_dtype)
        self.outputs = OutputAdapter(files.spec, fused=self.fused)
        self.buffer = self.new_batch(backend.max_batch)

    @property
    def spec(self):
        return self.files.spec

    def run_chunks(
        self,
        images: Sequence[np.ndarray],
        work: Sequence[tuple[int, Window]],
        backend: Backend | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (offset into work, raw output) for consecutive chunks of at most max batch,
        from the stage's backend or ``backend`` (its precise one, which takes the same input)."""
        backend = backend or self.backend
        size = min(backend.max_batch, self.backend.max_batch)
        for start in range(0, len(work), size):
            chunk = work[start : start + size]
            for j, (i, window) in enumerate(chunk):
                self.put(self.buffer, j, self.inputs.pixels_for(images[i], window))
            yield start, backend.infer(self.buffer[: len(chunk)])

    def new_batch(self, size: int) -> np.ndarray:
        """A batch buffer of ``size`` inputs, as this stage's backend takes them."""
        return self.inputs.new_batch(size, fused=self.fused)

    def put(self, batch: np.ndarray, index: int, pixels: np.ndarray) -> None:
        """A window's h x w x C uint8 pixels into batch[index]: as they are for a fused
        model (its graph normalises them), normalised into the model's layout for a raw one."""
        if self.fused:
            batch[index] = pixels
        else:
            self.inputs.write(batch, index, pixels)

    def probability_maps(
        self, images: Sequence[np.ndarray], work: Sequence[tuple[int, Window]]
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Float32 probabilities at the model's size, chunk by chunk, for tools that study
        them (``edge eval``, ``edge tune``): a fused model's uint8 maps / 255."""
        h, w = self.inputs.model_hw
        for start, raw in self.run_chunks(images, work):
            if self.fused:
                yield start, self.outputs.maps(raw, h, w).astype(np.float32) / PROB_SCALE
            else:
                yield start, self.outputs.float_maps(raw, h, w)
