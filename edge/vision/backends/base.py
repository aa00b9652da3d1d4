"""The one small interface every inference backend implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edge.vision.modelspec import ModelFiles


class BackendError(RuntimeError):
    """A model that cannot run on a backend; the message names the model and the reason."""


class Backend(Protocol):
    """Runs one model. Not thread-safe: each inference thread owns its backends."""

    name: str  # "onnxruntime", "tensorrt", ...
    files: ModelFiles
    input_dtype: np.dtype  # what infer() wants (float32, or float16 for FP16 models)
    max_batch: int

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch (N <= max_batch) and return the configured output as a numpy array."""
        ...

    def describe(self) -> dict[str, str]:
        """Versions and devices, for status messages and `edge doctor`."""
        ...

    def close(self) -> None: ...


def check_input_shape(
    files: ModelFiles, input_name: str, shape: list[int | str | None], expected: tuple[int, ...]
) -> None:
    """Compare the model's declared input (batch dim excluded) with what its config implies.

    Symbolic or unknown dims match anything; the error names the config keys to fix.
    """
    dims = shape[1:]
    if len(dims) != len(expected) or any(
        isinstance(d, int) and d > 0 and d != e for d, e in zip(dims, expected, strict=False)
    ):
        spec = files.spec
        raise BackendError(
            f"model {files.model_id} input {input_name!r} has shape {shape}, but its config "
            f"(input.layout={spec.input.layout}, input.channels={spec.input.channels}, "
            f"feed.height={spec.feed.height}, feed.width={spec.feed.width}) implies "
            f"[N, {', '.join(map(str, expected))}]"
        )


def fixed_batch(dim: int | str | None) -> int | None:
    """A model's batch dim if fixed (it then runs with exactly that batch), else None."""
    return dim if isinstance(dim, int) and dim > 0 else None


def padded(batch: np.ndarray, fixed: int | None) -> np.ndarray:
    """``batch`` zero-padded to a fixed batch size (the caller keeps only its own rows)."""
    if fixed is None or batch.shape[0] == fixed:
        return batch
    out = np.zeros((fixed, *batch.shape[1:]), batch.dtype)
    out[: batch.shape[0]] = batch
    return out
