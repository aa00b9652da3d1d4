"""Train a reference model from scratch on CPU: seeded, checkpointed, resumable.

A checkpoint is written every ``checkpoint_every`` steps to ``<out>/.checkpoints/<role>.pt``
with everything needed to continue bit-for-bit (weights, optimizer, learning-rate schedule,
the crop sampler's and torch's random state). A run started again with the same settings
continues from it; different settings are refused, naming the setting, so two runs never mix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from edge.tools.training import losses, nets
from edge.tools.training.labels import LabelledStrip, load_labelled
from edge.tools.training.samples import CropSampler, synthetic_strips

Role = Literal["classifier", "segmenter"]


class TrainingError(ValueError):
    """Training cannot start or continue; the message says why and what to do."""


@dataclass(frozen=True)
class TrainSettings:
    role: Role
    out: Path
    data: Path | None = None
    labels: Path | None = None
    image_level: Path | None = None
    holdout: tuple[str, ...] = ()  # image ids kept out of training, for an honest evaluation
    synthetic: int = 0  # generated strips added to the real ones
    steps: int = 2000
    batch: int = 32
    crop: int = 256
    lr: float = 2e-3
    seed: int = 0
    threads: int = 0
    checkpoint_every: int = 100
    real_weight: float = 0.5  # share of crops drawn from real strips when both kinds exist
    class_balanced: bool = False  # defect-centred crops pick their class first (samples.py)
    turns: bool = True  # quarter turns in the augmentation besides flips (samples.py)
    bf16: bool = False  # forward pass in bfloat16 (CPU autocast); weights stay float32

    def fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must agree with to be continued (not where it is saved)."""
        data = dataclasses.asdict(self)
        for key in ("out", "threads", "checkpoint_every"):
            data.pop(key)
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


@dataclass
class TrainResult:
    model: torch.nn.Module
    losses: list[float]  # mean loss per checkpoint interval
    steps: int
    seconds: float
    real_images: list[str]
    synthetic_strips: int
    resumed_from: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)


def checkpoint_path(settings: TrainSettings) -> Path:
    return settings.out / ".checkpoints" / f"{settings.role}.pt"


def load_training_strips(
    settings: TrainSettings,
) -> tuple[list[LabelledStrip], list[LabelledStrip]]:
    real: list[LabelledStrip] = []
    if settings.data is not None:
        if settings.labels is None:
            raise TrainingError("--data needs --labels (the Severstal train.csv)")
        real = load_labelled(
            settings.data,
            settings.labels,
            image_level=settings.image_level,
            exclude=set(settings.holdout),
        )
    synthetic = (
        synthetic_strips(settings.synthetic, seed=settings.seed) if settings.synthetic else []
    )
    if not real and not synthetic:
        raise TrainingError("nothing to train on: give --data/--labels, --synthetic N, or both")
    return real, synthetic


def train(
    settings: TrainSettings,
    on_step: Callable[[int, float], None] | None = None,
    *,
    fresh: bool = False,
) -> TrainResult:
    """Train ``settings.role`` for ``settings.steps`` steps (continuing a matching checkpoint)."""
    torch.set_num_threads(settings.threads or os.cpu_count() or 1)
    torch.manual_seed(settings.seed)
    real, synthetic = load_training_strips(settings)
    sampler = CropSampler(
        real,
        synthetic,
        size=settings.crop,
        seed=settings.seed,
        real_weight=settings.real_weight,
        need_masks=settings.role == "segmenter",
        class_balanced=settings.class_balanced,
        turns=settings.turns,
    )
    model = nets.build(settings.role)
    if settings.bf16:
        # oneDNN's bfloat16 convolutions (AMX where the CPU has it) want channels-last tensors.
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.15
    )
    history: list[float] = []
    step = 0
    ckpt = checkpoint_path(settings)
    if ckpt.exists() and not fresh:
        step, history = _resume(ckpt, settings, model, optimizer, schedule, sampler)
    resumed_from = step

    started = time.monotonic()
    model.train()
    interval: list[float] = []
    while step < settings.steps:
        batch = sampler.batch(settings.batch)
        loss = _loss(settings.role, model, batch, bf16=settings.bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        interval.append(loss.item())
        if on_step:
            on_step(step, interval[-1])
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            history.append(float(np.mean(interval)))
            interval.clear()
            _save(ckpt, settings, model, optimizer, schedule, sampler, step, history)
    model = model.to(memory_format=torch.contiguous_format)
    model.eval()
    strips = real + synthetic
    return TrainResult(
        model=model,
        losses=history,
        steps=step,
        seconds=time.monotonic() - started,
        real_images=[s.image_id for s in real],
        synthetic_strips=len(synthetic),
        resumed_from=resumed_from,
        class_counts={
            f"class_{k + 1}_strips": int(sum(bool(s.present[k]) for s in strips)) for k in range(4)
        },
    )


def _loss(role: Role, model: torch.nn.Module, batch: Any, *, bf16: bool = False) -> torch.Tensor:
    images = torch.from_numpy(batch.images)
    if bf16:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        outputs = model(images)
    # The losses in float32: a sigmoid's tail and a Dice sum lose too much in bfloat16's 8 bits.
    outputs = outputs.float()
    if role == "classifier":
        return losses.binary_focal_loss(
            outputs, torch.from_numpy(batch.labels), torch.from_numpy(batch.weights)
        )
    return losses.bce_dice_loss(outputs, torch.from_numpy(batch.masks))


def _save(
    path: Path,
    settings: TrainSettings,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    sampler: CropSampler,
    step: int,
    history: list[float],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "settings": settings.fingerprint(),
            "step": step,
            "history": history,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "sampler": json.dumps(sampler.state()),
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint whole


def _resume(
    path: Path,
    settings: TrainSettings,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    sampler: CropSampler,
) -> tuple[int, list[float]]:
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:
        raise TrainingError(
            f"{path}: unreadable checkpoint ({exc}); delete it or pass --fresh"
        ) from None
    saved, wanted = state["settings"], settings.fingerprint()
    differing = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differing:
        detail = ", ".join(
            f"{k}: checkpoint {saved.get(k)!r} vs now {wanted.get(k)!r}" for k in differing
        )
        raise TrainingError(
            f"{path} was made with other settings ({detail}); "
            "run with the same settings to continue it, or pass --fresh to start over"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    sampler.restore(json.loads(state["sampler"]))
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), list(state["history"])
