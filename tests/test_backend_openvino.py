"""The OpenVINO backend: the same outputs as ONNX Runtime on every model form the docs promise,
the shipped models within the agreement bar in bf16, auto's checked choice, shared compiled
models with a stream per worker, the disk cache, and a real daemon serving real strips on it.

Skipped with a reason only where openvino is not installed (the `openvino` extra; the `test`
extra installs it, so CI runs them)."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from structlog.testing import capture_logs

from edge.daemon.config import shipped_models
from edge.vision.backends import auto, openvino
from edge.vision.backends.agreement import OPENVINO_MASK_IOU_MIN, SCORE_TOLERANCE, check_fused
from edge.vision.backends.base import BackendError
from edge.vision.backends.modelio import fused_model
from edge.vision.backends.onnxruntime import OnnxRuntimeBackend
from edge.vision.backends.openvino import OpenVinoBackend, OpenVinoOptions
from edge.vision.cascade import Cascade
from edge.vision.modelspec import ModelFiles, load_repository, resolve_model_dir
from edge.vision.preprocess import InputAdapter
from edge.vision.replicas import WorkerPlan, load_replicas
from edge.vision.stage import Stage
from tests.plant_models import PLANT_FORMS, write_model_dir
from tests.test_graph import random_windows, stage_outputs
from tests.test_real_samples import direct_masks
from tests.test_server import frame_parts, per_frame

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="openvino is not installed (pip install 'edge[openvino]')",
)

F32 = OpenVinoOptions(precision="f32")
DEV_MASK_IOU_MIN = 0.97  # bf16 against FP32 on the 25 dev strips (see its test)


def has_bf16() -> bool:
    return "BF16" in openvino.core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _shape(files: ModelFiles) -> tuple[int, ...]:
    return InputAdapter(files.spec).sample_shape()


def assert_like_onnxruntime(files: ModelFiles, seed: int) -> None:
    """OpenVINO in f32 against the raw model on ONNX Runtime with the host's pre- and
    post-processing: the fused graph's whole path, not only the model."""
    reference = Stage(files, OnnxRuntimeBackend(files, _shape(files), max_batch=4, threads=1))
    candidate = Stage(files, OpenVinoBackend(files, _shape(files), max_batch=4, options=F32))
    assert candidate.fused and candidate.backend.input_dtype == np.uint8
    images, work = random_windows(reference, np.random.default_rng(seed))
    want, got = stage_outputs(reference, images, work), stage_outputs(candidate, images, work)
    assert got.dtype == want.dtype and got.shape == want.shape
    if files.spec.role == "classifier":
        np.testing.assert_allclose(got, want, atol=1e-4)
    else:  # round(255 p) of the same probability: at most one step apart
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    candidate.backend.close()


@pytest.mark.parametrize("make", PLANT_FORMS, ids=lambda f: f.__name__)
def test_every_plant_model_form_gives_onnxruntimes_outputs(make, tmp_path: Path) -> None:
    assert_like_onnxruntime(resolve_model_dir(write_model_dir(tmp_path, make())), seed=1)


def test_the_shipped_and_tiny_exact_models_give_onnxruntimes_outputs(tiny_repo: Path) -> None:
    for repo in (tiny_repo, shipped_models()):
        for files in load_repository(repo).values():
            assert_like_onnxruntime(files, seed=2)


def test_the_shipped_models_in_bf16_stay_within_the_openvino_bar() -> None:
    if not has_bf16():
        pytest.skip("this CPU has no bf16 (AMX or AVX-512 BF16): OpenVINO would run f32")
    strips = auto.synthetic_check_strips().images
    for files in load_repository(shipped_models()).values():
        shape = _shape(files)
        reference = OnnxRuntimeBackend(files, shape, max_batch=8, threads=1, fused=True)
        options = OpenVinoOptions(precision="bf16")
        candidate = OpenVinoBackend(files, shape, max_batch=8, options=options)
        assert candidate.precision == "bf16"
        agreement = check_fused(files.spec, reference, candidate, strips)
        if files.spec.role == "classifier":
            assert agreement.max_abs_diff <= SCORE_TOLERANCE, agreement
        else:
            assert agreement.mask_pixels and agreement.mask_pixels > 10_000  # masks compared
            assert agreement.mask_iou is not None and agreement.mask_iou >= OPENVINO_MASK_IOU_MIN
            assert agreement.max_abs_diff > 0  # bf16 really ran: not the f32 numbers
        candidate.close()


def _runtime_precisions(backend: OpenVinoBackend) -> dict[str, str]:
    """Each op of the compiled model and the precision the plugin runs it in."""
    ops = backend._compiled.model.get_runtime_model().get_ordered_ops()
    return {
        op.get_friendly_name(): op.get_rt_info()["runtimePrecision"].astype(str)
        for op in ops
        if "runtimePrecision" in op.get_rt_info()
    }


def test_each_models_stem_runs_in_f32_under_bf16() -> None:
    if not has_bf16():
        pytest.skip("this CPU has no bf16 (AMX or AVX-512 BF16): OpenVINO would run f32")
    models = load_repository(shipped_models())
    bf16 = OpenVinoOptions(precision="bf16")
    segmenter = OpenVinoBackend(models["segmenter"], _shape(models["segmenter"]), options=bf16)
    ran = _runtime_precisions(segmenter)
    assert ran["/stem/stem.0/Conv/WithoutBiases"] == "f32"  # the first convolution
    assert ran["/enc1/conv1/Conv/WithoutBiases"] == "bf16"  # the next: the model's own hint
    assert segmenter.precision == "bf16"
    classifier = OpenVinoBackend(models["classifier"], _shape(models["classifier"]), options=bf16)
    ran = _runtime_precisions(classifier)
    assert ran["/stem/stem.0/stem.0.0/Conv/WithoutBiases"] == "f32"
    assert ran["/stages/stages.0/conv1/Conv/WithoutBiases"] == "bf16"
    segmenter.close()
    classifier.close()


def test_the_stem_is_the_ops_through_the_first_convolution() -> None:
    files = load_repository(shipped_models())["segmenter"]
    source, _ = fused_model(files, _shape(files))
    stem = openvino.stem_ops(openvino.core().read_model(source, b""))
    assert {"edge_pixels", "/stem/stem.0/Conv/WithoutBiases", "/stem/stem.2/Relu"} <= stem
    assert "/enc1/conv1/Conv/WithoutBiases" not in stem and "/enc1/Relu" not in stem


@pytest.mark.parametrize("make", PLANT_FORMS, ids=lambda f: f.__name__)
def test_marking_the_stem_changes_no_output_in_f32(make, tmp_path: Path) -> None:
    """The IR round trip that marks the stem keeps every model form as it was."""
    files = resolve_model_dir(write_model_dir(tmp_path, make()))
    source, _ = fused_model(files, _shape(files))
    ov_core = openvino.core()
    plain = ov_core.read_model(source, b"")
    marked = openvino.with_precise_stem(ov_core, ov_core.read_model(source, b""))
    tile = [d.get_length() for d in plain.input(0).get_partial_shape()[1:]]
    batch = np.random.default_rng(3).integers(0, 256, (2, *tile), np.uint8)
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    want = ov_core.compile_model(plain, "CPU", config)({0: batch})[0]
    got = ov_core.compile_model(marked, "CPU", config)({0: batch})[0]
    np.testing.assert_array_equal(got, want)


def test_a_bf16_classifier_has_an_f32_twin_for_scores_near_a_gate() -> None:
    if not has_bf16():
        pytest.skip("this CPU has no bf16 (AMX or AVX-512 BF16): OpenVINO would run f32")
    bf16 = Cascade.load(
        shipped_models(), "openvino", max_batch=8, openvino=OpenVinoOptions("CPU", "bf16")
    )
    f32 = Cascade.load(shipped_models(), "openvino", max_batch=8, openvino=F32)
    try:
        twin = bf16.classifier.precise
        assert isinstance(twin, OpenVinoBackend) and twin.precision == "f32"
        assert bf16.segmenter.precise is None  # masks: the stem in f32 instead
        assert f32.classifier.precise is None  # already FP32
    finally:
        bf16.close()
        f32.close()


def test_bf16_finds_fp32s_defects_on_real_strips(severstal: Path) -> None:
    """The whole cascade in bf16 against FP32 ONNX Runtime on the 25 real dev strips: the same
    verdict on each, masks IoU >= 0.97 per class. Issue 16's 0.98 is met on the 148 strips of
    severstal_train (edge bench --mode agreement); the dev sample holds fewer scratch pixels,
    where one-pixel edge moves weigh more (0.975 here; 0.966 without the f32 stem)."""
    if not has_bf16():
        pytest.skip("this CPU has no bf16 (AMX or AVX-512 BF16): OpenVINO would run f32")
    from edge.tools.bench.agreement import run_agreement
    from edge.tools.bench.workload import StripPool

    paths = sorted((severstal / "images").iterdir())
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    pool = StripPool(images, [None] * len(images), str(severstal))
    reference = Cascade.load(shipped_models(), "onnxruntime", max_batch=8, threads=1)
    candidate = Cascade.load(
        shipped_models(), "openvino", max_batch=8, openvino=OpenVinoOptions(precision="bf16")
    )
    try:
        report = run_agreement(reference, candidate, pool)
    finally:
        reference.close()
        candidate.close()
    assert report["candidate"]["segmenter"]["precision"] == "bf16"
    assert report["same_verdict"] == len(images)
    measured = {k: v["iou"] for k, v in report["per_class"].items() if v["iou"] is not None}
    assert len(measured) >= 3 and min(measured.values()) >= DEV_MASK_IOU_MIN, measured


def test_auto_precision_is_the_devices_default() -> None:
    files = load_repository(shipped_models())["segmenter"]
    backend = OpenVinoBackend(files, _shape(files), max_batch=4)
    assert backend.precision == ("bf16" if has_bf16() else "f32")
    assert backend.describe()["precision"] == backend.precision
    backend.close()


def test_auto_chooses_openvino_on_an_x86_cpu_and_logs_the_check() -> None:
    choice = auto.choose("auto", openvino_version="2026.4.1", available=["CPUExecutionProvider"])
    assert choice.backend == "openvino" and choice.device == "CPU"
    assert "OpenVINO 2026.4.1 on this" in choice.reason
    arm = auto.choose(
        "auto", openvino_version="2026.4.1", machine="aarch64", available=["CPUExecutionProvider"]
    )
    assert arm.backend == "onnxruntime"
    assert "OpenVINO is installed but this is a aarch64 CPU, not x86" in arm.reason
    files = load_repository(shipped_models())["classifier"]
    with capture_logs() as logs, auto.choice_line({}):
        backend = auto.create("auto", files, _shape(files), max_batch=8, threads=1)
    assert isinstance(backend, OpenVinoBackend)
    backend.close()
    (line,) = [e for e in logs if e["event"] == "backend chosen"]
    assert line["backend"] == "openvino" and line["requested"] == "auto"
    assert "vs ONNX Runtime FP32 on 4 synthetic strips: max |score diff|" in (line["reason"])


def test_auto_stays_on_onnxruntime_for_a_model_that_disagrees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shipped segmenter against a bar no reduced precision meets: the check runs for
    real and auto keeps ONNX Runtime, saying by how much OpenVINO missed."""
    if not has_bf16():
        pytest.skip("this CPU has no bf16: OpenVINO's f32 agrees exactly, nothing to refuse")
    monkeypatch.setattr("edge.vision.backends.agreement.OPENVINO_MASK_IOU_MIN", 0.9999)
    auto._VERDICTS.clear()
    files = load_repository(shipped_models())["segmenter"]
    with capture_logs() as logs, auto.choice_line({}):
        backend = auto.create("auto", files, _shape(files), max_batch=8, threads=1, fused=True)
    auto._VERDICTS.clear()
    assert isinstance(backend, OnnxRuntimeBackend) and backend.fused
    backend.close()
    (line,) = [e for e in logs if e["event"] == "backend chosen"]
    assert line["backend"] == "onnxruntime"
    assert "but it disagrees: OpenVINO bf16 vs ONNX Runtime FP32" in line["reason"]
    assert "must be >= 0.9999" in line["reason"]


def test_auto_checks_on_recorded_strips_when_given_a_folder(severstal: Path) -> None:
    strips = auto.read_check_strips(severstal / "images")
    assert len(strips.images) == auto.CHECK_STRIPS and strips.source.endswith("images")
    files = load_repository(shipped_models())["classifier"]
    with capture_logs() as logs, auto.choice_line({}):
        auto.create("auto", files, _shape(files), max_batch=8, threads=1, check=strips).close()
    (line,) = [e for e in logs if e["event"] == "backend chosen"]
    assert f"on 8 strips from {severstal / 'images'}" in line["reason"]


def test_a_check_folder_without_strips_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(BackendError, match=r"check_images: .* holds no strips"):
        auto.read_check_strips(tmp_path)


def test_without_the_package_the_error_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    monkeypatch.setattr(openvino, "_CORE", None)
    files = load_repository(shipped_models())["classifier"]
    with pytest.raises(BackendError, match=r"pip install 'edge\[openvino\]'"):
        OpenVinoBackend(files, _shape(files), max_batch=4)
    assert openvino.version() is None


def test_a_device_this_machine_lacks_is_named_with_the_ones_it_has() -> None:
    files = load_repository(shipped_models())["classifier"]
    with pytest.raises(BackendError) as err:
        OpenVinoBackend(files, _shape(files), max_batch=4, options=OpenVinoOptions(device="NPU"))
    assert "no device 'NPU' here (openvino_device in the config)" in str(err.value)
    assert "'CPU'" in str(err.value)


def test_workers_share_one_compiled_model_with_a_stream_each() -> None:
    replicas = load_replicas(
        shipped_models(), "openvino", plan=WorkerPlan(2, 1, "test"), max_batch=8, openvino=F32
    )
    try:
        first, second = (c.segmenter.backend for c in replicas.cascades)
        assert first._compiled is second._compiled  # one compilation, two infer requests
        assert first._request is not second._request
        assert first.describe()["streams"] == "2"
        images = list(auto.synthetic_check_strips(2).images)
        alone = [c.run(images) for c in replicas.cascades]
        together: list = [None, None]

        def run(i: int) -> None:
            together[i] = replicas.cascades[i].run(images)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for a, b in zip(alone, together, strict=True):
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x.scores, y.scores)
                assert (x.probs is None) == (y.probs is None)
                if x.probs is not None:
                    np.testing.assert_array_equal(x.probs, y.probs)
        assert any(r.probs is not None for r in alone[0])  # the segmenter really ran
    finally:
        replicas.close()


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_compiled_models_are_kept_in_the_cache_folder(tmp_path: Path, precision: str) -> None:
    if precision == "bf16" and not has_bf16():
        pytest.skip("this CPU has no bf16 (AMX or AVX-512 BF16): OpenVINO would run f32")
    files = load_repository(shipped_models())["segmenter"]
    options = OpenVinoOptions(precision=precision, cache_dir=tmp_path / "ov")  # type: ignore[arg-type]
    first = OpenVinoBackend(files, _shape(files), max_batch=4, options=options)
    batch = np.random.default_rng(4).integers(0, 256, (2, 256, 256, 1), np.uint8)
    want = first.infer(batch).copy()
    first.close()
    del first
    assert [p.suffix for p in (tmp_path / "ov").iterdir()] == [".blob"]
    # bf16's segmenter is the model with its stem marked: it comes back from the cache as such.
    again = OpenVinoBackend(files, _shape(files), max_batch=4, options=options)
    np.testing.assert_array_equal(again.infer(batch), want)
    assert [p.suffix for p in (tmp_path / "ov").iterdir()] == [".blob"]
    again.close()


def test_a_daemon_on_openvino_serves_real_strips(
    severstal: Path, start_daemon, camera_socket
) -> None:
    paths = sorted((severstal / "images").iterdir())[:6]
    daemon = start_daemon(models=shipped_models(), backend="openvino", queue_size=64)
    assert daemon.server.replicas.backend_name == "openvino"
    cam = camera_socket(daemon.source)
    for seq, path in enumerate(paths):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cam.send_multipart(frame_parts("cam1", seq, image, file=path.name))
    daemon.subscriber.wait_for(lambda ev: len(per_frame(ev)) >= len(paths), 60)
    events = per_frame(daemon.subscriber.events)
    assert [e["kind"] for e in events] == ["result"] * len(paths)
    assert sum(len(e["defects"]) for e in events) > 0  # real defects found on real strips
    for event in events:  # the verdict FP32 ONNX Runtime gives, computed independently
        image = cv2.imread(str(paths[event["seq"]]), cv2.IMREAD_GRAYSCALE)
        assert bool(event["defects"]) == direct_masks(image, shipped_models()).any(), event


def test_a_cache_folder_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    files = load_repository(shipped_models())["classifier"]
    options = OpenVinoOptions(cache_dir=tmp_path / "file" / "ov")
    with pytest.raises(BackendError, match=r"openvino_cache '.*/file/ov' cannot be created"):
        OpenVinoBackend(files, _shape(files), max_batch=4, options=options)
