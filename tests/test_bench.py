"""`edge bench` runs every mode and writes the JSON other tools read (figures, not speed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge.cli.main import app
from edge.tools.bench.workload import synthetic_pool

RATIOS = {"e2e_over_backend", "cascade_over_naive", "p99_over_p50"}
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
        (["--backend", "cuda"], "--backend must be onnxruntime, tensorrt or auto"),
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
    assert all(number(v) for v in report["ratios"].values()), report["ratios"]
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
    assert [s["name"] for s in e2e["steps"]][-2:] == ["80% of saturation", "2x saturation"]
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
