"""The engine cache: sidecars, the match check with injected GPU facts, atomic writes, rebuilds."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import pytest

from build_engine.sidecar import SIDECAR_FILE, atomic_write
from edge.vision.backends import engines as cache
from edge.vision.backends.engines import (
    EngineError,
    MissingEngine,
    StaleEngine,
    check,
    ensure,
    locate,
    model_facts,
    scan,
    sidecar_spec,
)
from edge.vision.modelspec import ModelFiles, load_repository
from edge.vision.preprocess import graph_io
from tests.engine_fixtures import LINE_GPU, fake_engine


@pytest.fixture
def segmenter(tiny_repo: Path) -> ModelFiles:
    return load_repository(tiny_repo)["segmenter"]


def test_a_matching_engine_is_located_with_its_sidecar(
    tmp_path: Path, segmenter: ModelFiles
) -> None:
    built = fake_engine(tmp_path, segmenter)
    assert built.plan == tmp_path / "segmenter" / "1" / "model.plan"
    found = locate(tmp_path, segmenter, LINE_GPU)
    assert found.plan == built.plan
    sidecar = json.loads((built.plan.parent / SIDECAR_FILE).read_text())
    for key in (
        "source_sha256",
        "tensorrt_version",
        "gpu_name",
        "compute_capability",
        "precision",
        "io",
        "built_at",
        "spec",
    ):
        assert key in sidecar
    assert sidecar["source_sha256"] == segmenter.sha256
    assert sidecar_spec(found.sidecar) == segmenter.spec
    # The folder reads like a model repository: the model's config travels with its engine.
    assert (tmp_path / "segmenter" / "config.toml").read_text() == (
        segmenter.onnx_path.parent.parent / "config.toml"
    ).read_text()


@pytest.mark.parametrize(
    ("change", "field", "engine_value", "local_value"),
    [
        ({"tensorrt_version": "10.8.0"}, "tensorrt_version", "10.3.0", "10.8.0"),
        ({"gpu_name": "NVIDIA A2"}, "gpu_name", "Orin", "NVIDIA A2"),
        ({"compute_capability": "8.6"}, "compute_capability", "8.7", "8.6"),
    ],
)
def test_a_machine_mismatch_names_the_field_and_both_values(
    tmp_path: Path,
    segmenter: ModelFiles,
    change: dict,
    field: str,
    engine_value: str,
    local_value: str,
) -> None:
    fake_engine(tmp_path, segmenter)
    here = dataclasses.replace(LINE_GPU, **change)
    with pytest.raises(StaleEngine) as err:
        locate(tmp_path, segmenter, here)
    assert [m.field for m in err.value.mismatches] == [field]
    message = str(err.value)
    assert f"{field}: the engine has {engine_value!r}, this machine has {local_value!r}" in message
    assert "--rebuild-stale" in message and "edge build" in message


def test_a_changed_model_makes_its_engine_stale(tmp_path: Path, tiny_repo: Path) -> None:
    files = load_repository(tiny_repo)["classifier"]
    fake_engine(tmp_path, files)
    other = ModelFiles(
        spec=files.spec, onnx_path=load_repository(tiny_repo)["segmenter"].onnx_path, version=1
    )
    with pytest.raises(StaleEngine) as err:
        locate(tmp_path, other, LINE_GPU)
    assert [m.field for m in err.value.mismatches] == ["source_sha256"]


def test_a_fused_engine_must_have_been_built_for_the_configs_pre_and_post_processing(
    tmp_path: Path, segmenter: ModelFiles
) -> None:
    graph = model_facts(segmenter).graph
    assert graph == graph_io(segmenter.spec).to_dict() and graph["role"] == "segmenter"
    fake_engine(tmp_path, segmenter, fused=graph)
    assert locate(tmp_path, segmenter, LINE_GPU).sidecar.fused == graph
    # The config now normalises differently: the engine's prologue would feed wrong values.
    changed = segmenter.spec.model_copy(
        update={"input": segmenter.spec.input.model_copy(update={"scale": 1.0})}
    )
    renormalised = ModelFiles(spec=changed, onnx_path=segmenter.onnx_path, version=1)
    with pytest.raises(StaleEngine, match="fused: the engine has 'built with other gain'") as err:
        locate(tmp_path, renormalised, LINE_GPU)
    assert [m.field for m in err.value.mismatches] == ["fused"]
    # An engine built unfused (python -m build_engine) still loads: the host pre/post-processes.
    fake_engine(tmp_path, renormalised)
    assert locate(tmp_path, renormalised, LINE_GPU).sidecar.fused is None


def test_a_replaced_plan_file_is_not_trusted(tmp_path: Path, segmenter: ModelFiles) -> None:
    built = fake_engine(tmp_path, segmenter)
    built.plan.write_bytes(b"some other engine")
    with pytest.raises(StaleEngine) as err:
        locate(tmp_path, segmenter, LINE_GPU)
    assert [m.field for m in err.value.mismatches] == ["engine_sha256"]


def test_without_tensorrt_every_machine_field_says_why_unknown(
    tmp_path: Path, segmenter: ModelFiles
) -> None:
    fake_engine(tmp_path, segmenter)
    cpu = cache.EnvFacts(None, None, None, problems=("the tensorrt package is not installed",))
    with pytest.raises(StaleEngine) as err:
        locate(tmp_path, segmenter, cpu)
    assert {m.field for m in err.value.mismatches} == {
        "tensorrt_version",
        "gpu_name",
        "compute_capability",
    }
    assert "(unknown: the tensorrt package is not installed)" in str(err.value)


def test_a_missing_engine_says_how_to_build_it(tmp_path: Path, segmenter: ModelFiles) -> None:
    with pytest.raises(
        MissingEngine,
        match=r"no TensorRT engine for model segmenter:1:.* `edge build .* --out .*--rebuild-stale",
    ):
        locate(tmp_path, segmenter, LINE_GPU)


def test_a_missing_or_broken_sidecar_is_named(tmp_path: Path, segmenter: ModelFiles) -> None:
    built = fake_engine(tmp_path, segmenter)
    sidecar = built.plan.parent / SIDECAR_FILE
    sidecar.write_text("{not json")
    with pytest.raises(EngineError, match=r"model\.plan\.json is not valid JSON"):
        locate(tmp_path, segmenter, LINE_GPU)
    sidecar.write_text(json.dumps({"model": "segmenter"}))
    with pytest.raises(EngineError, match="source_sha256: Field required"):
        locate(tmp_path, segmenter, LINE_GPU)
    sidecar.unlink()
    with pytest.raises(MissingEngine, match="no record of what it was built for"):
        locate(tmp_path, segmenter, LINE_GPU)


def test_check_is_empty_for_a_match_and_lists_every_mismatch(
    tmp_path: Path, segmenter: ModelFiles
) -> None:
    sidecar = fake_engine(tmp_path, segmenter).sidecar
    assert check(sidecar, LINE_GPU, segmenter.sha256) == []
    elsewhere = cache.EnvFacts("11.1.0", "NVIDIA H100", "9.0", "2025.1")
    fields = [m.field for m in check(sidecar, elsewhere, "0" * 64, "1" * 64)]
    assert fields == [
        "source_sha256",
        "engine_sha256",
        "tensorrt_version",
        "gpu_name",
        "compute_capability",
    ]


def test_atomic_write_keeps_the_old_file_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model.plan"
    atomic_write(target, b"old engine")

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new engine")
    assert target.read_bytes() == b"old engine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.plan"]  # no temp file left


def test_stale_engines_are_refused_unless_rebuild_stale(
    tmp_path: Path, segmenter: ModelFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_engine(tmp_path, segmenter)
    upgraded = dataclasses.replace(LINE_GPU, tensorrt_version="10.8.0")
    with pytest.raises(StaleEngine):
        ensure(tmp_path, segmenter, upgraded, rebuild_stale=False, max_batch=8)
    calls = []

    def build_model(model, out, options, *, facts):  # stands in for TensorRT, which is not here
        calls.append((model.name, out, options.max_batch, facts.tensorrt_version))
        assert model == model_facts(segmenter)  # the build is told the model's facts by edge
        return fake_engine(out, segmenter, facts)

    monkeypatch.setattr("build_engine.build.build_model", build_model)
    engine = ensure(tmp_path, segmenter, upgraded, rebuild_stale=True, max_batch=8)
    assert calls == [("segmenter", tmp_path, 8, "10.8.0")]
    assert engine.sidecar.tensorrt_version == "10.8.0"


def test_scan_lists_engine_folders_and_their_problems(tmp_path: Path, tiny_repo: Path) -> None:
    repo = load_repository(tiny_repo)
    fake_engine(tmp_path, repo["classifier"])
    broken = fake_engine(tmp_path, repo["segmenter"])
    (broken.plan.parent / SIDECAR_FILE).write_text("[]")
    entries = {e.name: e for e in scan(tmp_path)}
    assert entries["classifier"].engine is not None and entries["classifier"].problem is None
    assert entries["segmenter"].engine is None and "model.plan.json" in entries["segmenter"].problem


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here"
)
def test_detect_facts_on_this_machine_says_what_is_missing() -> None:
    facts = cache.detect_facts()
    assert facts.tensorrt_version is None and not facts.gpu_ready
    assert "the tensorrt package is not installed" in facts.problems
