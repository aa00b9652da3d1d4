"""``edge eval`` and ``edge tune``: judge a model repository on labelled strips, pick thresholds.

Both run the exported ONNX models exactly as the daemon does, on ONNX Runtime or, with
``--backend openvino``, on OpenVINO (thresholds tuned for the backend that serves them); no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge.cli.common import OpenVinoPrecision, fail
from edge.cli.progress import Progress
from edge.cli.train import Data, ImageLabels, Labels, dumps, read_holdout
from edge.tools.training.labels import NUM_CLASSES, LabelledStrip
from edge.vision.cascade import Cascade

# Generated strips for eval/tune are drawn apart from training's (edge train uses --seed, 0).
SYNTHETIC_SEED = 1000
Synthetic = Annotated[
    int,
    typer.Option(
        min=0, help="Add N generated strips with exact masks (edge.synthetic) to the images."
    ),
]
SyntheticSeed = Annotated[int, typer.Option(help="Seed of the generated strips.")]

Models = Annotated[
    Path | None,
    typer.Option(
        "--models", help="Model repository to judge. (default: the shipped reference models)"
    ),
]
TuneModels = Annotated[
    Path | None,
    typer.Option(
        "--models",
        help="Model repository to tune; its config.toml files are rewritten unless --out or "
        "--dry-run. (default: the shipped reference models, then only with --out or --dry-run)",
    ),
]
TuneOut = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Write a copy of the repository with the tuned thresholds to this new folder, "
        "leaving --models as it is (serve it with edge run --models).",
    ),
]
EvalBackend = Annotated[
    str,
    typer.Option(
        "--backend",
        help="onnxruntime | openvino: the backend to run the models on, as `edge run` will.",
    ),
]
Only = Annotated[
    Path | None, typer.Option("--only", help="File of image ids: use only these (e.g. a holdout).")
]
Exclude = Annotated[Path | None, typer.Option("--exclude", help="File of image ids to leave out.")]


def _load(
    models: Path | None,
    data: Path | None,
    labels: Path | None,
    image_labels: Path | None,
    only: Path | None,
    exclude: Path | None,
    synthetic: int = 0,
    synthetic_seed: int = SYNTHETIC_SEED,
    backend: str = "onnxruntime",
    precision: str = "auto",
) -> tuple[Cascade, list[LabelledStrip]]:
    from edge.daemon.config import shipped_models
    from edge.tools.training.labels import LabelsError, load_labelled
    from edge.tools.training.samples import synthetic_strips
    from edge.vision.backends.base import BackendError
    from edge.vision.backends.openvino import OpenVinoOptions
    from edge.vision.modelspec import ModelConfigError

    models = shipped_models() if models is None else models
    if backend not in ("onnxruntime", "openvino"):
        raise fail(f"--backend must be onnxruntime or openvino; got {backend!r}")
    if (data is None) != (labels is None):
        raise fail("give both --data (image folder) and --labels (train.csv)")
    if data is None and not synthetic:
        raise fail("give --data (image folder) and --labels (train.csv), or --synthetic N")
    try:
        options = OpenVinoOptions(precision=precision)  # type: ignore[arg-type]
        cascade = Cascade.load(models, backend, max_batch=8, openvino=options)  # type: ignore[arg-type]
        strips = []
        if data is not None and labels is not None:
            strips = load_labelled(
                data,
                labels,
                image_level=image_labels,
                only=set(read_holdout(only)) if only else None,
                exclude=set(read_holdout(exclude)),
            )
        if synthetic:
            strips += synthetic_strips(synthetic, seed=synthetic_seed)
    except (ModelConfigError, BackendError, LabelsError, ValueError) as exc:
        raise fail(str(exc)) from None
    for stage in (cascade.classifier, cascade.segmenter):
        if stage.spec.num_classes != NUM_CLASSES:
            raise fail(
                f"{stage.files.model_id} has {stage.spec.num_classes} classes; evaluation uses the "
                f"Severstal format's {NUM_CLASSES}"
            )
    if not strips:
        raise fail(f"no images left in {data} after --only/--exclude")
    return cascade, strips


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def eval_command(
    models: Models = None,
    data: Data = None,
    labels: Labels = None,
    image_labels: ImageLabels = None,
    only: Only = None,
    exclude: Exclude = None,
    synthetic: Synthetic = 0,
    synthetic_seed: SyntheticSeed = SYNTHETIC_SEED,
    report: Annotated[
        Path | None, typer.Option("--report", help="Folder for report.json and PNG plots.")
    ] = None,
    backend: EvalBackend = "onnxruntime",
    openvino_precision: OpenVinoPrecision = "auto",
) -> None:
    """Classifier ROC AUC / precision / recall / F1 and segmentation Dice, beside "predict nothing"."""
    from rich.console import Console
    from rich.table import Table

    from edge.tools.training.evaluate import evaluate

    cascade, strips = _load(
        models,
        data,
        labels,
        image_labels,
        only,
        exclude,
        synthetic,
        synthetic_seed,
        backend,
        openvino_precision,
    )
    with Progress("evaluating", len(strips), "images") as progress:
        result, outputs = evaluate(cascade, strips, progress.update)
    table = Table(title=f"{len(strips)} images, models {', '.join(result['models'].values())}")
    for column in (
        "class",
        "tile AUC",
        "strip AUC",
        "gate",
        "precision",
        "recall",
        "F1",
        "Dice+ model",
        "Dice+ nothing",
        "mean Dice model",
        "mean Dice nothing",
    ):
        table.add_column(column, justify="right")
    for k in range(4):
        c = result["classifier"]["per_class"][f"class_{k + 1}"]
        s = result["segmentation"]["per_class"][f"class_{k + 1}"]
        at = c["tile_confusion_at_gate"]
        nothing_pairs = s["baseline_predict_nothing"]
        table.add_row(
            f"{k + 1}",
            _fmt(c["tile_auc"]),
            _fmt(c["strip_auc"]),
            f"{c['gate']:.2f}",
            _fmt(at["precision"]),
            _fmt(at["recall"]),
            _fmt(at["f1"]),
            f"{_fmt(s['dice_on_positives'])} (n={s['positive_images']})",
            _fmt(nothing_pairs["dice_on_positives"]),
            _fmt(s["mean_dice_all_images"]),
            "",
        )
    seg = result["segmentation"]
    table.add_row(
        "all",
        _fmt(result["classifier"]["mean_tile_auc"]),
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        _fmt(seg["kaggle_mean_dice"]),
        _fmt(seg["baseline_predict_nothing"]["kaggle_mean_dice"]),
    )
    # Eleven columns: narrower than this, Rich would fold the headers into stubs.
    Console(width=max(Console().width, 150)).print(table)
    if report is not None:
        from edge.tools.training.plots import write_figures

        report.mkdir(parents=True, exist_ok=True)
        (report / "report.json").write_text(dumps(result) + "\n")
        try:
            written = write_figures(result, outputs, report)
        except RuntimeError as exc:
            raise fail(str(exc)) from None
        typer.echo(f"wrote {report / 'report.json'} and {len(written)} PNGs in {report}")


def _why(detail: dict) -> str:
    """What the chosen thresholds scored on the tuning strips: the reason they were chosen."""
    return (
        f"  (best of the sweeps on these strips: Dice on positives {_fmt(detail['mask']['dice_on_positives'])} "
        f"at this mask threshold; mean Dice over all strips {_fmt(detail['gate']['mean_dice'])} "
        "at this gate and min_area, as the daemon applies them)"
    )


def tune_command(
    models: TuneModels = None,
    data: Data = None,
    labels: Labels = None,
    image_labels: ImageLabels = None,
    only: Only = None,
    exclude: Exclude = None,
    synthetic: Synthetic = 0,
    synthetic_seed: SyntheticSeed = SYNTHETIC_SEED,
    dry_run: Annotated[
        bool, typer.Option(help="Print the chosen thresholds without writing them.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option(help="Write every sweep to this JSON file.")
    ] = None,
    out: TuneOut = None,
    backend: EvalBackend = "onnxruntime",
    openvino_precision: OpenVinoPrecision = "auto",
) -> None:
    """Sweep gate, mask and min-area thresholds per class; write the best into config.toml.

    Without --models it tunes the shipped reference models, and needs --out DIR or --dry-run.
    """
    from edge.daemon.config import shipped_models
    from edge.tools.training.evaluate import run_models
    from edge.tools.training.tune import tune

    if models is None and out is None and not dry_run:
        raise fail(
            "edge tune writes the thresholds into the model repository's config.toml files; "
            "without --models that is the shipped reference models, which are not rewritten. "
            "Give --out DIR (a tuned copy to serve with edge run --models DIR), "
            "--models DIR (a repository of your own, rewritten in place) or --dry-run"
        )
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise fail(f"--out {out} exists and is not an empty folder; give a new one")
    repository = shipped_models() if models is None else models
    if out is not None and out.resolve().is_relative_to(repository.resolve()):
        raise fail(f"--out {out} is inside --models {repository}; give a folder outside it")
    cascade, strips = _load(
        repository,
        data,
        labels,
        image_labels,
        only,
        exclude,
        synthetic,
        synthetic_seed,
        backend,
        openvino_precision,
    )
    with Progress("running the models", len(strips), "images") as progress:
        outputs = run_models(cascade, strips, progress.update)
    with Progress(
        "choosing thresholds", NUM_CLASSES * len(strips), "(class, image) pairs"
    ) as progress:
        result = tune(outputs, progress.update)
    if report is not None:
        report.write_text(dumps(result) + "\n")
    classifier, segmenter = cascade.classifier.spec, cascade.segmenter.spec
    chosen = result["chosen"]
    current = {
        "gate": classifier.per_class("gate"),
        "mask": segmenter.per_class("mask"),
        "min_area": segmenter.per_class("min_area"),
    }
    for k in range(4):
        detail = result["per_class"][f"class_{k + 1}"]
        if not detail["tuned"]:
            for key in chosen:
                chosen[key][k] = current[key][k]  # nothing to learn from: keep what was there
        typer.echo(
            f"class {k + 1}: gate {current['gate'][k]} -> {chosen['gate'][k]}, "
            f"mask {current['mask'][k]} -> {chosen['mask'][k]}, "
            f"min_area {current['min_area'][k]} -> {chosen['min_area'][k]}"
            + (_why(detail) if detail["tuned"] else "  (no labelled positives: kept)")
        )
    if dry_run:
        return
    if out is not None:
        _copy_repository(repository, out)
    write_thresholds(cascade, chosen, out)


# Package and training leftovers of a repository: not part of what a copy serves.
_NOT_COPIED = ("__pycache__", "*.pyc", "__init__.py", ".checkpoints")


def _copy_repository(root: Path, out: Path) -> None:
    import shutil

    try:
        shutil.copytree(root, out, ignore=shutil.ignore_patterns(*_NOT_COPIED), dirs_exist_ok=True)
    except OSError as exc:
        raise fail(f"cannot copy {root} to --out {out}: {exc}", 1) from None
    typer.echo(f"copied {root} to {out}")


def write_thresholds(
    cascade: Cascade, chosen: dict[str, list[float]], out: Path | None = None
) -> None:
    """The chosen thresholds into each model's config.toml: in its repository, or under ``out``."""
    from edge.tools.training.export import write_config
    from edge.vision.modelspec import CONFIG_FILE

    for stage, keys in ((cascade.classifier, ("gate",)), (cascade.segmenter, ("mask", "min_area"))):
        spec = stage.spec
        thresholds = spec.thresholds.model_copy(update={k: tuple(chosen[k]) for k in keys})
        model_dir = stage.files.onnx_path.parent.parent
        path = (model_dir if out is None else out / model_dir.name) / CONFIG_FILE
        write_config(
            path,
            spec.model_copy(update={"thresholds": thresholds}),
            note="thresholds chosen by edge tune; the rest as edge train wrote it",
        )
        typer.echo(f"wrote {path}")
