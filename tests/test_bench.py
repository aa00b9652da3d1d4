"""`edge bench` runs every mode and writes the JSON other tools read (figures, not speed)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge.cli.main import app
from edge.tools.bench.e2e_results import Step
from edge.tools.bench.workload import synthetic_pool

RATIOS = {
    "e2e_over_backend",
    "cascade_over_naive",
    "tail_inflation",
    "drop_share_at_80",
    "host_clean_cpu_ms",
    "host_defective_cpu_ms",
    "e2e_null_strips_per_s",
    "agreement_min_class_iou",
    "agreement_same_verdict_share",
}
AGREEMENT = {"agreement_min_class_iou", "agreement_same_verdict_share"}
LATENCY = ("p50_ms", "p95_ms", "p99_ms", "max_ms")
SECTION = ("strips_per_s", "tiles_per_s", "latency", "batch_size_histogram", "drops", "settings")


def number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_help_names_the_options() -> None:
    result = CliRunner().invoke(app, ["bench", "--help"], prog_name="edge")
    assert result.exit_code == 0
    for option in ("--mode", "--backend", "--models", "--batch", "--defect-rate", "--duration",
                   "--workers", "--threads"):  # fmt: skip
        assert option in result.output
    assert "--json" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "fastest"], "--mode must be one of"),
        (["--batch", "1,x"], "--batch must be comma-separated integers"),
        (["--backend", "cuda"], "--backend must be one of onnxruntime, openvino, tensorrt, auto"),
    ],
)
def test_bad_options_are_named(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_pool_has_the_exact_defective_share() -> None:
    pool = synthetic_pool(10, 0.3, seed=1)
    assert len(pool) == 10
    assert pool.defective_share == pytest.approx(0.3)
    assert all(image.shape == (256, 1600) for image in pool.images)


@pytest.mark.slow
def test_all_modes_write_every_documented_figure(tiny_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--mode", "all", "--models", str(tiny_repo), "--duration", "1"]
    args += ["--pool", "6", "--batch", "1,4", "--workers", "2", "--threads", "1"]
    args += ["--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())

    assert set(report["ratios"]) == RATIOS
    measured = {k: v for k, v in report["ratios"].items() if k not in AGREEMENT}
    assert all(number(v) for v in measured.values()), report["ratios"]
    # ONNX Runtime is the agreement mode's reference: nothing to compare it with.
    assert report["agreement"] == {
        "skipped": "the bench's backend is onnxruntime, the reference itself"
    }
    assert all(report["ratios"][k] is None for k in AGREEMENT)
    # With a file, the summary is the tables and the file: no bare JSON line besides.
    assert '{"ratios"' not in result.stdout

    for mode in ("backend", "pipeline", "naive", "e2e"):
        section = report[mode]
        for key in SECTION:
            assert key in section, (mode, key)
        assert number(section["strips_per_s"]) and section["strips_per_s"] > 0, mode
        assert number(section["tiles_per_s"]), mode
        assert all(number(section["latency"][p]) for p in LATENCY), (mode, section["latency"])
        assert section["batch_size_histogram"], mode
        assert number(section["drops"]), mode
    for role in ("classifier", "segmenter"):
        runs = report["backend"][role]["runs"]
        assert [r["batch"] for r in runs] == [1, 4]
        assert all(number(r["tiles_per_s"]) for r in runs)

    e2e = report["e2e"]
    assert [s["name"] for s in e2e["steps"]][-3:] == [
        "10% of saturation",
        "80% of saturation",
        "2x saturation",
    ]
    assert report["ratios"]["tail_inflation"] == e2e["tail_inflation"]
    # What the daemon settled on, as it logged it: the run can be compared with another.
    assert e2e["settings"]["daemon"] == {"backend": "onnxruntime", "workers": 2,
                                         "threads_per_worker": 1, "cpu_scheduling": "batch"}  # fmt: skip
    assert report["edge_bench"] == 2
    # The same classifier pass over the same pool: the same share for both.
    assert 0 < report["pipeline"]["gate_pass_share"] == e2e["gate_pass_share"] < 1
    assert report["host"]["clean"]["cpu_ms_per_strip"] > 0
    assert e2e["memory"]["rss_mb_samples"], "the daemon's memory was sampled"
    assert e2e["accounting"]["sent"] > 0
    assert e2e["accounting"]["unaccounted"] == 0, e2e["accounting"]

    settings = report["settings"]
    assert settings["defect_rate"] == 0.2
    assert number(settings["segmented_tiles_per_strip"])
    assert settings["segmented_tiles_per_strip_source"]
    # Every mode but naive ran in the daemon's arrangement: one stream per worker.
    assert (settings["workers_used"], settings["threads_per_worker_used"]) == (2, 1)
    assert settings["workers_source"]
    assert report["backend"]["settings"]["streams"] == 2
    assert report["pipeline"]["settings"]["streams"] == 2
    assert report["e2e"]["settings"]["workers"] == 2
    machine = report["machine"]
    for key in ("cpu", "cores", "versions", "gpu", "backend"):
        assert key in machine
    assert machine["versions"]["onnxruntime"]
    assert set(report["targets"]) >= RATIOS


@pytest.mark.slow
def test_every_mode_runs_on_openvino(tiny_repo: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed (pip install 'edge[openvino]')")
    out = tmp_path / "bench.json"
    args = ["bench", "--backend", "openvino", "--openvino-precision", "f32", "--mode", "all"]
    args += ["--models", str(tiny_repo), "--duration", "1", "--pool", "4", "--batch", "1,4"]
    result = CliRunner().invoke(
        app, [*args, "--workers", "2", "--threads", "1", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["machine"]["backend"]["backend"] == "openvino"
    assert report["machine"]["backend"]["precision"] == "f32"
    assert report["machine"]["versions"]["openvino"]
    for mode in ("backend", "pipeline", "naive", "e2e"):
        assert report[mode]["strips_per_s"] > 0, mode
    assert report["e2e"]["accounting"]["unaccounted"] == 0
    assert report["e2e"]["settings"]["backend"] == "openvino"
    agreement = report["agreement"]
    assert agreement["strips"] == 4 and agreement["candidate"]["segmenter"]["backend"] == "openvino"
    # f32 on the tiny exact models: the same defects as ONNX Runtime, strip for strip
    assert agreement["same_verdict_share"] == 1.0
    assert report["ratios"]["agreement_min_class_iou"] >= 0.99
    assert sum(c["either_px"] for c in agreement["per_class"].values()) > 0


def test_one_mode_leaves_the_others_null(tiny_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--mode", "backend", "--models", str(tiny_repo), "--duration", "0.5"]
    result = CliRunner().invoke(app, [*args, "--pool", "2", "--batch", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["ratios"]) == RATIOS
    assert report["ratios"]["cascade_over_naive"] is None
    assert report["pipeline"] is None and report["e2e"] is None
    assert number(report["backend"]["strips_per_s"])


# -- the speed-ups behind the bench's figures change no event -------------------------------


@pytest.mark.parametrize("models", ["tiny", "shipped"])
def test_band_post_processing_equals_the_whole_strip(models: str, tiny_repo: Path) -> None:
    """Post-processing only the segmented band gives the very defects of the whole strip."""
    from edge.daemon.config import shipped_models
    from edge.vision.cascade import Cascade
    from edge.vision.postprocess import defects_from_probs, strip_defects

    cascade = Cascade.load(tiny_repo if models == "tiny" else shipped_models(), threads=1)
    pool = synthetic_pool(12, 0.75, seed=5)
    rng = np.random.default_rng(0)
    odd = np.full((256, 1001), 128, np.uint8)  # tiles start at odd columns on this width
    for _ in range(30):  # equal-area blobs: the order of equal components must hold too
        y, x = rng.integers(0, 250), rng.integers(0, 995)
        odd[y : y + 3, x : x + 3] = rng.choice([0, 255])
    banded = 0
    for image in [*pool.images, odd]:
        (result,) = cascade.run([image])
        if result.probs is None:
            continue
        spec = cascade.segmenter.spec
        assert strip_defects(result, spec) == defects_from_probs(result.probs, spec)
        banded += any(b.region.w < image.shape[1] for b in result.bands)
    cascade.close()
    assert banded, "no strip exercised a band narrower than the strip"


def test_rle_start_shifts_runs_by_whole_columns() -> None:
    from edge.protocol import rle

    mask = np.zeros((4, 6), bool)
    mask[1:3, 2] = mask[0, 4:] = True
    band = mask[:, 2:]
    assert rle.encode(band, start=2 * 4) == rle.encode(mask)


def test_windowed_stitcher_equals_the_whole_one() -> None:
    from edge.vision.tiling import Stitcher, Window

    rng = np.random.default_rng(1)
    whole, banded = Stitcher(2, 8, 20), Stitcher(2, 8, 20, Window(0, 4, 8, 12))
    for x in (4, 8, 10):
        probs = rng.random((2, 8, 6)).astype(np.float32)
        whole.add(Window(0, x, 8, 6), probs)
        banded.add(Window(0, x, 8, 6), probs)
    np.testing.assert_array_equal(banded.result(), whole.result())
    np.testing.assert_array_equal(banded.band(), whole.result()[:, :, 4:16])


# -- the host mode: the daemon's own CPU per strip, on null models --------------------------


@pytest.mark.slow
def test_host_mode_measures_the_daemon_on_null_models(tiny_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--mode", "host", "--models", str(tiny_repo), "--duration", "1"]
    args += ["--pool", "10", "--workers", "2", "--threads", "1", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    host = report["host"]
    assert set(host) == {"clean", "defective", "e2e_null", "targets", "settings"}
    assert all(report[mode] is None for mode in ("backend", "pipeline", "naive", "e2e"))
    for verdict in ("clean", "defective"):
        run = host[verdict]
        for key in ("cpu_ms_per_strip", "results", "dropped", "offered_per_s", "seconds", "cpu_s"):
            assert number(run[key]), (verdict, key, run)
        assert run["cpu_ms_per_strip"] > 0 and run["cpu_s"] > 0, run
        assert run["results"] > 0.5 * run["offered_per_s"] * run["seconds"], run
        # Every frame of the window was answered, or shed and counted.
        assert run["results"] + run["dropped"] == run["sent"], run
        assert run["rejects"] == 0 and run["kept_up"] == (run["dropped"] == 0)
        assert run["cpu_ms_per_strip"] == pytest.approx(
            run["cpu_s"] * 1000 / run["results"], rel=0.01
        )
        # The window in parts, each its own figure: the whole is their weighted mean.
        parts = run["cpu_ms_per_strip_parts"]
        assert len(parts) == host["settings"]["window_parts"] == 3 and all(p > 0 for p in parts)
        assert min(parts) * 0.99 <= run["cpu_ms_per_strip"] <= max(parts) * 1.01, run
        assert run["threads_by_name"], run
        assert run["daemon"]["workers"] == 2 and run["daemon"]["cpu_scheduling"] == "batch", run
        receiver = run["threads_by_name"]["receiver"]
        # The receiver waits in libzmq between frames: it is switched out, and counted.
        assert receiver["switches"] > 0
        assert receiver["switches_per_strip"] == pytest.approx(
            receiver["switches"] / run["results"], abs=0.01
        )
    # The verdicts went through the real daemon: none defective, then every one.
    assert host["clean"]["defective_results"] == 0 and host["clean"]["gate_pass_share"] == 0
    defective = host["defective"]
    assert defective["defective_results"] == defective["results"]
    assert defective["gate_pass_share"] == 1
    assert host["settings"]["offered_per_s"] == {"clean": 300.0, "defective": 40.0}
    null = host["e2e_null"]
    assert null["strips_per_s"] > 0
    # 2 of the 10 synthetic strips are defective: some of their tiles, and no others, pass.
    assert 0 < null["gate_pass_share"] < 0.2 + 1e-9
    assert [s["name"] for s in null["steps"]][-2:] == ["10% of saturation", "80% of saturation"]
    assert null["accounting"]["unaccounted"] == 0
    assert host["targets"] == {"clean_ms": 0.4, "defective_ms": 5.0, "e2e_null_strips_per_s": 1500}
    ratios = report["ratios"]
    assert ratios["host_clean_cpu_ms"] == host["clean"]["cpu_ms_per_strip"]
    assert ratios["host_defective_cpu_ms"] == defective["cpu_ms_per_strip"]
    assert ratios["e2e_null_strips_per_s"] == null["strips_per_s"]
    target = report["targets"]["host_defective_cpu_ms"]
    assert target["target"] == "<= 5" and target["met"] == (defective["cpu_ms_per_strip"] <= 5)


# -- tail_inflation and the drops at 80 %: the arithmetic -----------------------------------


def _records(start_ns: int, latencies_ms: np.ndarray, kind: str = "result") -> list[tuple]:
    from edge.tools.bench.agents import KINDS

    rows = []
    for i, ms in enumerate(latencies_ms):
        ts = start_ns + int(1.5e9) + i * int(1e7)  # past the settle second, 10 ms apart
        rows.append((KINDS.index(kind), 1, i, ts, ts + int(ms * 1e6), 0, 0, ms))
    return rows


def _ramp_step(offered: float, delivered: float, drops: int = 0) -> Step:
    step = Step(f"ramp at {offered:g}", offered, 4.0)
    step.figures = {"offered_strips_per_s": offered, "strips_per_s": delivered,
                    "drops": drops, "missing_in_transport": 0}  # fmt: skip
    return step


def test_the_ramp_tries_between_a_kept_up_step_and_an_overloaded_one_below_it() -> None:
    from edge.tools.bench.e2e_results import between_rate

    kept = _ramp_step(1500.0, 1498.0)
    # Overloaded, and delivering less than the step before it was offered: the best step is
    # only a floor, so one step at the mean of the two offers.
    assert between_rate([_ramp_step(1000.0, 999.0), kept, _ramp_step(2250.0, 1400.0, 40)]) == 1875
    # Overloaded but delivering more than the kept-up offer: its pace is the measure.
    assert between_rate([kept, _ramp_step(2250.0, 1700.0, 40)]) is None
    # Nothing overloaded yet, or both overloaded: nothing to narrow.
    assert between_rate([kept, _ramp_step(2250.0, 2249.0)]) is None
    assert between_rate([_ramp_step(1500.0, 1200.0, 5), _ramp_step(2250.0, 1100.0, 90)]) is None
    assert between_rate([kept]) is None


def test_tail_inflation_is_p99_at_80_over_p99_at_low_load() -> None:
    from edge.tools.bench.agents import KINDS, RECORD
    from edge.tools.bench.e2e_results import Step, e2e_section, low_rate, step_figures
    from edge.tools.bench.summary import ratios, targets

    low, at80 = Step("10% of saturation", 10.0, 4.0), Step("80% of saturation", 80.0, 4.0)
    low.start_ns, low.end_ns = 0, int(4e9)
    at80.start_ns, at80.end_ns = int(10e9), int(14e9)
    low_ms = np.linspace(10.0, 20.0, 50)
    loaded_ms = np.linspace(10.0, 70.0, 100)
    gap_ts = at80.start_ns + int(2e9)
    rows = _records(low.start_ns, low_ms) + _records(at80.start_ns, loaded_ms)
    rows += _records(at80.start_ns + int(2.2e9), np.zeros(2), "drop")
    rows.append((KINDS.index("gap"), 1, 200, 0, gap_ts, 3, 0, 0.0))  # 3 frames lost in transport
    records = np.array(rows, dtype=RECORD)
    low.sent, at80.sent = 50, 105  # 100 results + 2 drops + 3 missing
    for step in (low, at80):
        step.figures = step_figures(step, records)
    warm = Step("warm-up", 10.0, 1.0)
    section = e2e_section({}, warm, [low], 100.0, low, at80, None, records, None, [])

    want = np.percentile(loaded_ms, 99) / np.percentile(low_ms, 99)
    assert section["tail_inflation"] == pytest.approx(want, abs=1e-3)
    assert section["tail_inflation"] > 3  # 69.4 / 19.9 ms: the test can tell
    assert section["drops_at_80"] == 5
    assert section["drop_share_at_80"] == pytest.approx(5 / 105, abs=1e-6)
    assert section["memory"] is None  # no 2x step was run
    got = ratios({"e2e": section})
    assert got["tail_inflation"] == section["tail_inflation"]
    assert got["drop_share_at_80"] == section["drop_share_at_80"]
    met = targets(got, {"e2e": section})
    assert met["tail_inflation"]["met"] is False and met["drop_share_at_80"]["met"] is False
    assert "memory_bounded_at_2x" not in met

    # No latency sample at low load: no ratio rather than a made-up one.
    empty = Step("10% of saturation", 10.0, 4.0)
    empty.start_ns, empty.end_ns = int(20e9), int(24e9)
    empty.figures = step_figures(empty, records)
    assert (
        e2e_section({}, warm, [low], 100.0, empty, at80, None, records, None, [])["tail_inflation"]
        is None
    )
    # The low-load rate: 10 % of saturation, at least 5 strips/s, at most half of it.
    assert (low_rate(1000.0), low_rate(20.0), low_rate(6.0)) == (100.0, 5.0, 3.0)
