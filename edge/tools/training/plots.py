"""PNG figures for ``edge eval --report``: ROC curves, confusion matrices, mask overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.tools.training import metrics
from edge.tools.training.evaluate import StripOutputs, tile_labels
from edge.tools.training.labels import NUM_CLASSES
from edge.vision.synthetic import CLASS_NAMES

# BGR colours per class for overlays (OpenCV writes BGR).
CLASS_COLOURS = ((0, 200, 255), (255, 120, 0), (0, 220, 0), (220, 0, 220))


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError(
            "PNG plots need matplotlib: pip install 'edge[report]' (or run without --report)"
        ) from None
    matplotlib.use("Agg")  # no screen on a line PC
    import matplotlib.pyplot as plt

    return plt


def roc_figure(outputs: list[StripOutputs], gates: list[float], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, NUM_CLASSES, figsize=(4 * NUM_CLASSES, 4), squeeze=False)
    tiles = [tile_labels(o) for o in outputs]
    for k, ax in enumerate(axes[0]):
        labels = np.concatenate([lab[:, k][kn[:, k]] for lab, kn in tiles])
        scores = np.concatenate(
            [o.tile_scores[:, k][kn[:, k]] for o, (_, kn) in zip(outputs, tiles, strict=True)]
        )
        auc = metrics.roc_auc(labels, scores)
        ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", label="predict nothing / chance")
        if auc is not None:
            fpr, tpr, _ = metrics.roc_curve(labels, scores)
            ax.plot(fpr, tpr, label=f"AUC {auc:.3f}")
            op = metrics.confusion(labels, scores >= gates[k])
            ax.scatter(
                [op.fp / max(op.fp + op.tn, 1)],
                [op.tp / max(op.tp + op.fn, 1)],
                color="red",
                zorder=3,
                label=f"gate {gates[k]:.2f}",
            )
        else:
            ax.text(0.5, 0.5, "no positive\nor negative tiles", ha="center", va="center")
        ax.set_title(f"class {k + 1} ({CLASS_NAMES[k]}): {int(labels.sum())} pos tiles")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def confusion_figure(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, NUM_CLASSES, figsize=(3.2 * NUM_CLASSES, 3), squeeze=False)
    for k, ax in enumerate(axes[0]):
        c = report["classifier"]["per_class"][f"class_{k + 1}"]["tile_confusion_at_gate"]
        grid = np.array([[c["tp"], c["fn"]], [c["fp"], c["tn"]]])
        ax.imshow(grid, cmap="Blues")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, str(value), ha="center", va="center")
        ax.set_xticks([0, 1], ["flagged", "passed"])
        ax.set_yticks([0, 1], ["defect", "clean"])
        ax.set_title(f"class {k + 1} tiles at the gate")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


LEGEND_HEIGHT = 28
PANEL_LABEL_WIDTH = 96


def overlay(out: StripOutputs) -> np.ndarray:
    """The strip twice, stacked: true masks' outlines on top ("truth"), predicted masks' below
    ("model"), each panel labelled on its left, and a legend of the class colours under them
    (BGR)."""
    gray = cv2.cvtColor(out.strip.image, cv2.COLOR_GRAY2BGR)
    panels = []
    for title, masks, known in (
        ("truth", out.strip.masks, out.strip.mask_known),
        ("model", out.deployed, None),
    ):
        panel = gray.copy()
        for k in range(NUM_CLASSES):
            if known is not None and not known[k]:
                continue
            contours, _ = cv2.findContours(
                masks[k].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            cv2.drawContours(panel, contours, -1, CLASS_COLOURS[k], 2)
        panels.append(_labelled(panel, title))
    width = panels[0].shape[1]
    divider = np.full((6, width, 3), 255, np.uint8)
    return np.vstack([panels[0], divider, panels[1], _legend(width, out.strip.mask_known)])


def _labelled(panel: np.ndarray, title: str) -> np.ndarray:
    """The panel with a white margin on its left naming it."""
    margin = np.full((panel.shape[0], PANEL_LABEL_WIDTH, 3), 255, np.uint8)
    cv2.putText(margin, title, (8, panel.shape[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                (0, 0, 0), 2, cv2.LINE_AA)  # fmt: skip
    return np.hstack([margin, panel])


def _legend(width: int, known: np.ndarray) -> np.ndarray:
    """One swatch and name per class; a class whose true mask is unknown says so."""
    strip = np.full((LEGEND_HEIGHT, width, 3), 255, np.uint8)
    x = PANEL_LABEL_WIDTH
    for k in range(NUM_CLASSES):
        cv2.rectangle(strip, (x, 7), (x + 14, 21), CLASS_COLOURS[k], -1)
        name = f"{k + 1} {CLASS_NAMES[k]}" + ("" if known[k] else " (truth: mask unknown)")
        cv2.putText(strip, name, (x + 20, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)  # fmt: skip
        x += 20 + 9 * len(name) + 24
    return strip


def write_figures(
    report: dict[str, Any], outputs: list[StripOutputs], folder: Path, overlays: int = 6
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "roc.png", folder / "confusion.png"]
    gates = [
        report["classifier"]["per_class"][f"class_{k + 1}"]["gate"] for k in range(NUM_CLASSES)
    ]
    roc_figure(outputs, gates, written[0])
    confusion_figure(report, written[1])
    # Defective strips first: they show the most.
    chosen = sorted(outputs, key=lambda o: (not o.strip.present.any(), o.strip.image_id))
    for o in chosen[:overlays]:
        path = folder / f"overlay_{Path(o.strip.image_id).stem}.png"
        cv2.imwrite(str(path), overlay(o))
        written.append(path)
    return written
