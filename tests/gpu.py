"""The `gpu` marker's skip: GPU tests run only where tensorrt, pycuda and a GPU all answer."""

from __future__ import annotations

import functools

import pytest

from edge.backends.engines import EnvFacts, detect_facts


@functools.cache
def gpu_facts() -> EnvFacts:
    return detect_facts()


def _reason() -> str:
    facts = gpu_facts()
    return "needs tensorrt, pycuda and an NVIDIA GPU: " + ("; ".join(facts.problems) or "?")


requires_gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_facts().gpu_ready, reason=_reason()),
]
