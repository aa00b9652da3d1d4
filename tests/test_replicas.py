"""How many inference workers and threads a machine gets, and loading a copy of the models each."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.vision.backends import auto
from edge.vision.replicas import (
    MAX_AUTO_WORKERS,
    Replicas,
    load_replicas,
    plan_workers,
    usable_cores,
    workers_per_core,
)


@pytest.mark.parametrize(
    ("workers", "threads", "cores", "want"),
    [
        (0, 0, 2, (2, 1)),  # this machine class: two one-thread workers
        (0, 0, 1, (1, 1)),
        (0, 0, 16, (MAX_AUTO_WORKERS, 4)),  # past a few workers, threads per worker grow
        (0, 2, 8, (4, 2)),  # threads fixed: workers fill the cores
        (0, 4, 2, (1, 4)),  # more threads than cores: still one worker
        (3, 0, 2, (3, 1)),  # workers fixed: at least one thread each
        (2, 0, 8, (2, 4)),
        (2, 3, 2, (2, 3)),  # both fixed: kept as configured
    ],
)
def test_cpu_plans_fill_the_cores(
    workers: int, threads: int, cores: int, want: tuple[int, int]
) -> None:
    plan = plan_workers(workers, threads, cores=cores, gpu=False)
    assert (plan.workers, plan.threads) == want
    assert plan.reason


def test_openvino_on_a_cpu_gets_two_workers_per_core() -> None:
    plan = plan_workers(0, 0, cores=2, gpu=False, per_core=2)
    assert (plan.workers, plan.threads) == (4, 1)
    assert "2 per core" in plan.reason and "OpenVINO" in plan.reason
    assert plan_workers(0, 0, cores=16, gpu=False, per_core=2).workers == MAX_AUTO_WORKERS
    assert (plan_workers(3, 0, cores=2, gpu=False, per_core=2).workers) == 3  # as configured
    cpu = auto.Choice("openvino", (), "requested; on CPU", "CPU")
    assert workers_per_core(cpu) == 2
    assert workers_per_core(auto.Choice("openvino", (), "requested; on GPU", "GPU")) == 1
    ort = auto.Choice("onnxruntime", ("CPUExecutionProvider",), "requested")
    assert workers_per_core(ort) == 1


def test_a_gpu_gets_one_worker_unless_told_otherwise() -> None:
    assert plan_workers(0, 0, cores=16, gpu=True).workers == 1
    assert plan_workers(2, 0, cores=16, gpu=True).workers == 2


def test_usable_cores_is_at_least_one() -> None:
    assert usable_cores() >= 1


def test_each_replica_is_its_own_copy_of_the_same_models(tiny_repo: Path) -> None:
    plan = plan_workers(2, 1, cores=2, gpu=False)
    replicas = load_replicas(tiny_repo, plan=plan, max_batch=8)
    try:
        first, second = replicas.cascades
        assert first is not second
        assert first.classifier.backend.session is not second.classifier.backend.session
        assert first.model_ids == second.model_ids == replicas.model_ids
        assert replicas.backend_name == "onnxruntime"
        assert replicas.plan == plan
    finally:
        replicas.close()


def test_replicas_need_a_cascade() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Replicas([], plan_workers(1, 1, cores=1, gpu=False))
