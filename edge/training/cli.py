"""``edge train``, ``edge eval`` and ``edge tune``: the model tools, as Typer commands.

Torch is imported only by ``edge train`` (the ``train`` extra); evaluation and tuning run the
exported ONNX models with ONNX Runtime, exactly as the daemon does.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path
from typing import Annotated

import typer

train_app = typer.Typer(
    help="Train a reference model from scratch on CPU (needs: pip install 'edge[train]').",
    no_args_is_help=True,
)

Data = Annotated[
    Path | None,
    typer.Option("--data", help="Folder of strip images (the Severstal train_images/)."),
]
Labels = Annotated[
    Path | None,
    typer.Option("--labels", help="Severstal train.csv: ImageId,ClassId,EncodedPixels."),
]
ImageLabels = Annotated[
    Path | None,
    typer.Option(
        "--image-labels",
        help="Optional ImageId,ClassesPresent file: classes known present whose masks are not "
        "in --labels (they are not taken as absent).",
    ),
]
Holdout = Annotated[
    Path | None,
    typer.Option("--holdout", help="File of image ids (one a line) kept out of training."),
]


def command_line(role: str, params: dict[str, object]) -> str:
    """The ``edge train`` command that reproduces this run, every setting spelled out."""
    parts = ["edge", "train", role]
    for name, value in params.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        parts += [flag] if value is True else [flag, shlex.quote(str(value))]
    return " ".join(parts)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def read_holdout(path: Path | None) -> tuple[str, ...]:
    if path is None:
        return ()
    if not path.is_file():
        raise _fail(f"--holdout {path}: no such file")
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return tuple(line for line in lines if line)


def _train(role: str, params: dict[str, object], **kwargs: object) -> None:
    if importlib.util.find_spec("torch") is None:
        raise _fail("training needs PyTorch: pip install 'edge[train]' (CPU build, torch==2.13.0)")
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from edge.training import export, trainer

    fresh = bool(kwargs.pop("fresh"))
    version = kwargs.pop("version")
    settings = trainer.TrainSettings(role=role, **kwargs)  # type: ignore[arg-type]
    with Progress(
        TextColumn(f"training {role}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task(role, total=settings.steps, loss=float("nan"))

        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step, loss=loss)

        try:
            result = trainer.train(settings, on_step, fresh=fresh)
        except (trainer.TrainingError, ValueError) as exc:
            raise _fail(str(exc)) from None
        progress.update(task, completed=result.steps)

    record = {
        "command": command_line(role, params),
        "git_commit": export.git_commit(),
        "settings": settings.fingerprint(),
        "steps": result.steps,
        "resumed_from_step": result.resumed_from,
        "seconds_this_run": round(result.seconds, 1),
        "loss_per_interval": [round(x, 5) for x in result.losses],
        "data": {
            "real_images": result.real_images,
            "synthetic_strips": result.synthetic_strips,
            "held_out": list(settings.holdout),
            **result.class_counts,
        },
    }
    spec = export.reference_spec(
        role,
        f"Reference {role} trained from scratch by edge train ({result.steps} steps on "
        f"{len(result.real_images)} real + {result.synthetic_strips} synthetic strips); "
        "see training.json beside the model.",
    )
    path = export.export(result.model, spec, settings.out, record, version=version)  # type: ignore[arg-type]
    first, last = result.losses[0], result.losses[-1]
    typer.echo(
        f"{role}: {result.steps} steps in {result.seconds:.0f} s, loss {first:.4f} -> {last:.4f}; "
        f"wrote {path}"
    )


def _common(
    data: Data = None,
    labels: Labels = None,
    image_labels: ImageLabels = None,
    holdout: Holdout = None,
    out: Annotated[Path, typer.Option(help="Model repository to add a version to.")] = Path(
        "models"
    ),
    synthetic: Annotated[int, typer.Option(help="Generated strips added to the real ones.")] = 0,
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    batch: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0)] = 2e-3,
    seed: int = 0,
    threads: Annotated[int, typer.Option(help="Torch threads; 0 = all cores.")] = 0,
    real_weight: Annotated[
        float, typer.Option(min=0, max=1, help="Share of crops from real images.")
    ] = 0.5,
    checkpoint_every: Annotated[int, typer.Option(min=1)] = 100,
    fresh: Annotated[
        bool, typer.Option(help="Ignore a checkpoint of an earlier run and start over.")
    ] = False,
    version: Annotated[int | None, typer.Option(help="Version folder (default: next).")] = None,
) -> dict[str, object]:
    return {
        "data": data,
        "labels": labels,
        "image_level": image_labels,
        "holdout": read_holdout(holdout),
        "out": out,
        "synthetic": synthetic,
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "threads": threads,
        "real_weight": real_weight,
        "checkpoint_every": checkpoint_every,
        "fresh": fresh,
        "version": version,
    }


@train_app.command("classifier")
def train_classifier(
    data: Data = None,
    labels: Labels = None,
    image_labels: ImageLabels = None,
    holdout: Holdout = None,
    out: Annotated[Path, typer.Option(help="Model repository to add a version to.")] = Path(
        "models"
    ),
    synthetic: Annotated[int, typer.Option(help="Generated strips added to the real ones.")] = 0,
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    batch: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0)] = 2e-3,
    seed: int = 0,
    threads: Annotated[int, typer.Option(help="Torch threads; 0 = all cores.")] = 0,
    real_weight: Annotated[float, typer.Option(min=0, max=1)] = 0.5,
    checkpoint_every: Annotated[int, typer.Option(min=1)] = 100,
    fresh: Annotated[bool, typer.Option(help="Start over, ignoring a checkpoint.")] = False,
    version: Annotated[int | None, typer.Option(help="Version folder (default: next).")] = None,
) -> None:
    """Multilabel tile classifier (4 sigmoid outputs), binary focal loss, 256 px tiles."""
    params = dict(locals())
    _train("classifier", params, crop=256, **_common(**params))


@train_app.command("segmenter")
def train_segmenter(
    data: Data = None,
    labels: Labels = None,
    image_labels: ImageLabels = None,
    holdout: Holdout = None,
    out: Annotated[Path, typer.Option(help="Model repository to add a version to.")] = Path(
        "models"
    ),
    synthetic: Annotated[int, typer.Option(help="Generated strips added to the real ones.")] = 0,
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    batch: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option(min=0)] = 2e-3,
    seed: int = 0,
    threads: Annotated[int, typer.Option(help="Torch threads; 0 = all cores.")] = 0,
    real_weight: Annotated[float, typer.Option(min=0, max=1)] = 0.5,
    checkpoint_every: Annotated[int, typer.Option(min=1)] = 100,
    fresh: Annotated[bool, typer.Option(help="Start over, ignoring a checkpoint.")] = False,
    version: Annotated[int | None, typer.Option(help="Version folder (default: next).")] = None,
    crop: Annotated[
        int, typer.Option(min=32, help="Training crop size (the net is fully convolutional).")
    ] = 128,
) -> None:
    """Residual-encoder U-Net (4 sigmoid mask channels), BCE + Dice loss, on tile crops."""
    params = dict(locals())
    args = dict(params)
    crop_size = args.pop("crop")
    _train("segmenter", params, crop=crop_size, **_common(**args))


def dumps(data: object) -> str:
    return json.dumps(data, indent=2, allow_nan=False, default=str)


Models = Annotated[Path, typer.Option("--models", help="Model repository to judge.")]
Only = Annotated[
    Path | None, typer.Option("--only", help="File of image ids: use only these (e.g. a holdout).")
]
Exclude = Annotated[Path | None, typer.Option("--exclude", help="File of image ids to leave out.")]


def _load(
    models: Path,
    data: Path | None,
    labels: Path | None,
    image_labels: Path | None,
    only: Path | None,
    exclude: Path | None,
) -> tuple[object, list[object]]:
    from edge.backends.base import BackendError
    from edge.cascade import Cascade
    from edge.modelspec import ModelConfigError
    from edge.training.labels import NUM_CLASSES, LabelsError, load_labelled

    if data is None or labels is None:
        raise _fail("give --data (image folder) and --labels (train.csv)")
    try:
        cascade = Cascade.load(models, max_batch=8)
        strips = load_labelled(
            data,
            labels,
            image_level=image_labels,
            only=set(read_holdout(only)) if only else None,
            exclude=set(read_holdout(exclude)),
        )
    except (ModelConfigError, BackendError, LabelsError, ValueError) as exc:
        raise _fail(str(exc)) from None
    for stage in (cascade.classifier, cascade.segmenter):
        if stage.spec.num_classes != NUM_CLASSES:
            raise _fail(
                f"{stage.files.model_id} has {stage.spec.num_classes} classes; evaluation uses the "
                f"Severstal format's {NUM_CLASSES}"
            )
    if not strips:
        raise _fail(f"no images left in {data} after --only/--exclude")
    return cascade, strips


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def eval_command(
    models: Models = Path("models"),
    data: Data = None,
    labels: Labels = None,
    image_labels: ImageLabels = None,
    only: Only = None,
    exclude: Exclude = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Folder for report.json and PNG plots.")
    ] = None,
) -> None:
    """Classifier ROC AUC / precision / recall / F1 and segmentation Dice, beside "predict nothing"."""
    from rich.console import Console
    from rich.table import Table

    from edge.training.evaluate import evaluate

    cascade, strips = _load(models, data, labels, image_labels, only, exclude)
    result, outputs = evaluate(cascade, strips)  # type: ignore[arg-type]
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
        from edge.training.plots import write_figures

        report.mkdir(parents=True, exist_ok=True)
        (report / "report.json").write_text(dumps(result) + "\n")
        try:
            written = write_figures(result, outputs, report)  # type: ignore[arg-type]
        except RuntimeError as exc:
            raise _fail(str(exc)) from None
        typer.echo(f"wrote {report / 'report.json'} and {len(written)} PNGs in {report}")


def tune_command(
    models: Models = Path("models"),
    data: Data = None,
    labels: Labels = None,
    image_labels: ImageLabels = None,
    only: Only = None,
    exclude: Exclude = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print the chosen thresholds without writing them.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option(help="Write every sweep to this JSON file.")
    ] = None,
) -> None:
    """Sweep gate, mask and min-area thresholds per class; write the best into config.toml."""
    from edge.training.evaluate import run_models
    from edge.training.tune import tune

    cascade, strips = _load(models, data, labels, image_labels, only, exclude)
    result = tune(run_models(cascade, strips))  # type: ignore[arg-type]
    if report is not None:
        report.write_text(dumps(result) + "\n")
    classifier, segmenter = cascade.classifier.spec, cascade.segmenter.spec  # type: ignore[attr-defined]
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
            + ("" if detail["tuned"] else "  (no labelled positives: kept)")
        )
    if dry_run:
        return
    write_thresholds(cascade, chosen)  # type: ignore[arg-type]


def write_thresholds(cascade: object, chosen: dict[str, list[float]]) -> None:
    from edge.modelspec import CONFIG_FILE
    from edge.training.export import write_config

    for stage, keys in ((cascade.classifier, ("gate",)), (cascade.segmenter, ("mask", "min_area"))):  # type: ignore[attr-defined]
        spec = stage.spec
        thresholds = spec.thresholds.model_copy(update={k: tuple(chosen[k]) for k in keys})
        path = stage.files.onnx_path.parent.parent / CONFIG_FILE
        write_config(
            path,
            spec.model_copy(update={"thresholds": thresholds}),
            note="thresholds chosen by edge tune; the rest as edge train wrote it",
        )
        typer.echo(f"wrote {path}")
