"""``edge train``: train a reference model, as Typer commands (``eval_cli`` judges it).

Torch is imported only here, when a command runs (the ``train`` extra).
"""

from __future__ import annotations

import importlib.util
import json
import shlex
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from edge.cli.common import fail

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
        option = name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):  # both spellings: a default of True is switched off too
            parts.append(f"--{option}" if value else f"--no-{option}")
        else:
            parts += [f"--{option}", shlex.quote(str(value))]
    return " ".join(parts)


def read_holdout(path: Path | None) -> tuple[str, ...]:
    if path is None:
        return ()
    if not path.is_file():
        raise fail(f"--holdout {path}: no such file")
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return tuple(line for line in lines if line)


def _train(role: str, params: dict[str, object], **kwargs: object) -> None:
    if importlib.util.find_spec("torch") is None:
        raise fail("training needs PyTorch: pip install 'edge[train]' (CPU build, torch==2.13.0)")
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from edge.tools.training import export, trainer

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
            raise fail(str(exc)) from None
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


class Role(StrEnum):
    classifier = "classifier"
    segmenter = "segmenter"


# Per role: (batch, crop). The classifier sees whole tiles, as it will when serving; the
# segmenter is fully convolutional and learns as well from 128 px crops at a quarter the cost.
ROLE_DEFAULTS = {Role.classifier: (32, 256), Role.segmenter: (16, 128)}


def train(
    role: Annotated[
        Role,
        typer.Argument(
            help="classifier: multilabel tile classifier (4 sigmoid outputs), binary focal loss. "
            "segmenter: residual-encoder U-Net (4 sigmoid mask channels), BCE + Dice loss."
        ),
    ],
    data: Data = None,
    labels: Labels = None,
    image_labels: ImageLabels = None,
    holdout: Holdout = None,
    out: Annotated[Path, typer.Option(help="Model repository to add a version to.")] = Path(
        "models"
    ),
    synthetic: Annotated[int, typer.Option(help="Generated strips added to the real ones.")] = 0,
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    batch: Annotated[
        int | None,
        typer.Option(min=1, help="Crops per step. (default: 32 classifier, 16 segmenter)"),
    ] = None,
    lr: Annotated[float, typer.Option(min=0)] = 2e-3,
    seed: int = 0,
    threads: Annotated[int, typer.Option(help="Torch threads; 0 = all cores.")] = 0,
    real_weight: Annotated[
        float, typer.Option(min=0, max=1, help="Share of crops from real images.")
    ] = 0.5,
    class_balanced: Annotated[
        bool,
        typer.Option(
            help="Defect-centred crops pick their class first, each class as often as the "
            "others, then a strip with it (else a strip first: common classes dominate)."
        ),
    ] = False,
    turns: Annotated[
        bool,
        typer.Option(
            help="Quarter turns in the augmentation besides the flips. Off: only flips, which "
            "keep a defect's direction (scratches run along the strip)."
        ),
    ] = True,
    bf16: Annotated[
        bool,
        typer.Option(
            help="Run the forward pass in bfloat16 (CPU autocast; weights stay float32): about "
            "1.6-2x faster per step on CPUs with AMX or AVX-512 BF16, slower on others."
        ),
    ] = False,
    checkpoint_every: Annotated[int, typer.Option(min=1)] = 100,
    fresh: Annotated[bool, typer.Option(help="Start over, ignoring a checkpoint.")] = False,
    version: Annotated[int | None, typer.Option(help="Version folder (default: next).")] = None,
    crop: Annotated[
        int | None,
        typer.Option(
            min=32, help="Training crop size in px. (default: 256 classifier, 128 segmenter)"
        ),
    ] = None,
) -> None:
    """Train a reference model from scratch on CPU; resumable (needs the 'train' extra)."""
    params = {k: v for k, v in locals().items() if k != "role"}
    default_batch, default_crop = ROLE_DEFAULTS[role]
    batch, crop = batch or default_batch, crop or default_crop
    params.update(batch=batch, crop=crop)  # the record spells out what was used
    _train(
        role.value,
        params,
        data=data,
        labels=labels,
        image_level=image_labels,
        holdout=read_holdout(holdout),
        out=out,
        synthetic=synthetic,
        steps=steps,
        batch=batch,
        crop=crop,
        lr=lr,
        seed=seed,
        threads=threads,
        real_weight=real_weight,
        class_balanced=class_balanced,
        turns=turns,
        bf16=bf16,
        checkpoint_every=checkpoint_every,
        fresh=fresh,
        version=version,
    )


def dumps(data: object) -> str:
    return json.dumps(data, indent=2, allow_nan=False, default=str)
