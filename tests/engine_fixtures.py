"""Engine folders written without TensorRT: fake plan bytes with real sidecars, for cache tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from build_engine.machine import EnvFacts
from build_engine.sidecar import EngineFiles, Sidecar, TensorInfo, now_iso, write_engine
from edge.vision.backends.engines import model_facts
from edge.vision.modelspec import ModelFiles

LINE_GPU = EnvFacts("10.3.0", "Orin", "8.7", pycuda_version="2025.1", cuda_driver_version=12060)


def fake_engine(
    root: Path,
    files: ModelFiles,
    facts: EnvFacts = LINE_GPU,
    plan: bytes | None = None,
    fused: dict | None = None,
) -> EngineFiles:
    """``fused``: the sidecar's record of a fused build (edge build's: model_facts().graph)."""
    plan = plan if plan is not None else f"plan for {files.model_id} on {facts.gpu_name}".encode()
    sidecar = Sidecar(
        model=files.spec.name,
        version=files.version,
        role=files.spec.role,
        source_onnx=str(files.onnx_path),
        source_sha256=files.sha256,
        built_onnx_sha256=files.sha256,
        engine_sha256=hashlib.sha256(plan).hexdigest(),
        tensorrt_version=facts.tensorrt_version or "?",
        gpu_name=facts.gpu_name or "?",
        compute_capability=facts.compute_capability or "?",
        precision="fp16",
        network="weakly-typed",
        min_batch=1,
        opt_batch=32,
        max_batch=32,
        workspace_mib=4096,
        io=[
            TensorInfo(name="image", mode="input", shape=[-1, 1, 256, 256], dtype="float32"),
            TensorInfo(name="out", mode="output", shape=[-1, 4], dtype="float32"),
        ],
        built_at=now_iso(),
        build_seconds=1.0,
        spec=files.spec.model_dump(mode="json"),
        fused=fused,
    )
    return write_engine(root, plan, sidecar, config=model_facts(files).config)
