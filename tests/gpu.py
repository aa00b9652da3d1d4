"""The `gpu` marker's skip: GPU tests run only where tensorrt, pycuda and a GPU all answer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from edge.vision.backends.engines import EnvFacts, detect_facts


@functools.cache
def gpu_facts() -> EnvFacts:
    return detect_facts()


def _reason() -> str:
    facts = gpu_facts()
    return "needs tensorrt, pycuda and an NVIDIA GPU: " + ("; ".join(facts.problems) or "?")


def requires_gpu(test: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a test `gpu` and skip it, saying what is missing, unless it can run."""
    skip = pytest.mark.skipif(not gpu_facts().gpu_ready, reason=_reason())
    return pytest.mark.gpu(skip(test))
