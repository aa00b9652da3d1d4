"""Inference workers and their model replicas: how many, how many threads each, and loading them.

On a CPU, ONNX Runtime splits each operator over its intra-op threads, and every parallel
section waits for its slowest thread; two sessions of one thread each, running different
batches, keep two cores busier than one session of two threads (measured in
docs/performance.md: about 20 % more strips/s on 2 cores). So the daemon runs ``workers``
inference threads, each with its own replica of both models (Triton's model instances).

A GPU is another matter: one worker feeds it (the TensorRT backend's CUDA context and stream
belong to one thread), and the GPU parallelises within each batch.

OpenCV's own thread pool is switched off (``serial_opencv``): the daemon's threads are the
parallelism, and a pool under them only adds hand-offs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import cv2

from edge.vision.backends import auto
from edge.vision.backends.openvino import OpenVinoOptions
from edge.vision.cascade import Cascade

# Auto never starts more: each replica holds its own sessions and arenas, and past a few
# workers per box the gain is in threads per session instead.
MAX_AUTO_WORKERS = 4


@dataclass(frozen=True)
class WorkerPlan:
    workers: int  # inference threads, one replica of the models each
    threads: int  # ONNX Runtime intra-op threads per session (0: ONNX Runtime's default)
    reason: str  # for the log line a plant engineer reads


def serial_opencv() -> None:
    """OpenCV runs each call on the thread that makes it (process-wide). Its pool split the
    post-processing's large-array calls over the cores that the other finishing and
    inference threads were using: measured with null models on 2 vCPUs, an all-defective strip
    cost 6.56 ms of the daemon's CPU with the pool and 5.34 ms without it, a clean one 0.457
    and 0.427 ms (`edge bench --mode host`'s line, one run each)."""
    cv2.setNumThreads(1)  # 1: sequential (OpenCV 4's documented value)


def usable_cores() -> int:
    """The cores this process may run on (a container or systemd's CPUAffinity can limit it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_workers(
    workers: int, threads: int, *, cores: int, gpu: bool, per_core: int = 1
) -> WorkerPlan:
    """Resolve the config's ``workers`` and ``threads`` (0 = auto) for this machine.

    On a GPU auto means one worker. On a CPU: ``per_core`` one-thread workers per core, up to
    MAX_AUTO_WORKERS, then more threads per worker; a fixed value of either is kept and the
    other fills the cores.
    """
    cores = max(1, cores)
    if gpu:
        count = workers or 1
        return WorkerPlan(count, threads, f"{count} worker(s) feeding the GPU")
    if workers and threads:
        return WorkerPlan(workers, threads, "as configured")
    if workers:
        return WorkerPlan(
            workers, max(1, cores // workers), f"{workers} worker(s) configured over {cores} cores"
        )
    slots = cores * max(1, per_core)
    if threads:
        count = max(1, min(MAX_AUTO_WORKERS, slots // threads))
        return WorkerPlan(count, threads, f"{threads} thread(s) each over {cores} cores")
    count = min(MAX_AUTO_WORKERS, slots)
    reason = f"auto: {count} worker(s) over {cores} cores"
    if per_core > 1:
        reason += f", {per_core} per core ({OPENVINO_PER_CORE_WHY})"
    return WorkerPlan(count, max(1, cores // count), reason)


# OpenVINO runs a worker's batch on its stream's own thread, and that core idles while the
# worker does its host part (tiling, gating, handing over); a second worker per core fills it.
# Measured on 2 cores, real strips, bf16 (docs/performance.md): e2e 223 -> 276 strips/s from
# 2 to 4 workers. ONNX Runtime computes on the worker's own thread: 144 -> 146 strips/s, p99
# 61 -> 105 ms, so it keeps one per core.
OPENVINO_PER_CORE = 2
OPENVINO_PER_CORE_WHY = "OpenVINO's streams idle while their worker does host work"


def workers_per_core(choice: auto.Choice) -> int:
    """Auto's inference workers per core for a backend choice on a CPU."""
    return OPENVINO_PER_CORE if choice.backend == "openvino" and not on_gpu(choice) else 1


def plan_for(
    backend: auto.BackendName,
    workers: int,
    threads: int,
    *,
    engines: Path | None = None,
    openvino: OpenVinoOptions | None = None,
) -> WorkerPlan:
    """The plan for a backend on this machine: what ``auto`` would choose decides whether a
    GPU is fed, and how many workers per core a CPU gets."""
    return plan_for_choice(
        auto.choose(backend, engines=engines, options=openvino), workers, threads
    )


def plan_for_choice(choice: auto.Choice, workers: int, threads: int) -> WorkerPlan:
    """The plan for a backend already chosen, on this machine's usable cores."""
    return plan_workers(
        workers,
        threads,
        cores=usable_cores(),
        gpu=on_gpu(choice),
        per_core=workers_per_core(choice),
    )


def on_gpu(choice: auto.Choice) -> bool:
    """Whether a backend choice runs the models on a GPU (or OpenVINO's iGPU or NPU): then one
    worker feeds it, and the device parallelises within each batch."""
    if choice.backend == "openvino":
        return choice.device.upper().startswith(("GPU", "NPU"))
    return choice.backend == "tensorrt" or any(
        p != "CPUExecutionProvider" for p in choice.providers
    )


class Replicas:
    """One cascade per inference worker, all of the same models and settings."""

    def __init__(self, cascades: list[Cascade], plan: WorkerPlan) -> None:
        if not cascades:
            raise ValueError("Replicas needs at least one cascade")
        self.cascades = cascades
        self.plan = plan

    @property
    def first(self) -> Cascade:
        return self.cascades[0]

    @property
    def model_ids(self) -> dict[str, str]:
        return self.first.model_ids

    @property
    def backend_name(self) -> str:
        """The backend, or classifier's/segmenter's where ``auto`` chose one per model."""
        names = [self.first.classifier.backend.name, self.first.segmenter.backend.name]
        return names[0] if names[0] == names[1] else "/".join(names)

    def close(self) -> None:
        for cascade in self.cascades:
            cascade.close()


def load_replicas(
    models: Path,
    backend: auto.BackendName = "onnxruntime",
    *,
    plan: WorkerPlan,
    max_batch: int = 32,
    engines: Path | None = None,
    rebuild_stale: bool = False,
    openvino: OpenVinoOptions | None = None,
    check: auto.CheckStrips | None = None,
) -> Replicas:
    """``plan.workers`` cascades of the same models, each loaded and self-tested.

    The first copy logs `backend chosen` for each model, with ``copies``; the others load the
    same way and say nothing more. OpenVINO compiles each model once with a stream per copy.
    """
    openvino = dataclasses.replace(openvino or OpenVinoOptions(), streams=plan.workers)
    cascades: list[Cascade] = []
    try:
        for index in range(plan.workers):
            with auto.choice_line({"copies": plan.workers} if index == 0 else None):
                cascades.append(
                    Cascade.load(
                        models,
                        backend,
                        max_batch=max_batch,
                        threads=plan.threads,
                        engines=engines,
                        rebuild_stale=rebuild_stale,
                        openvino=openvino,
                        check=check,
                    )
                )
    except BaseException:
        for cascade in cascades:
            cascade.close()
        raise
    return Replicas(cascades, plan)
