"""Losses for imbalanced defect data: binary focal loss (classifier), BCE + Dice (segmenter)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def binary_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    gamma: float = 2.0,
    alpha: float = 0.25,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) averaged over the labels whose weight is non-zero.

    Easy, confidently right labels (most clean tiles) are scaled down by (1 - p_t)^gamma so
    the rare defective ones drive training.
    """
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_t * (1 - p_t) ** gamma * bce
    if weights is None:
        return loss.mean()
    return (loss * weights).sum() / weights.sum().clamp_min(1.0)


def bce_dice_loss(
    logits: torch.Tensor, masks: torch.Tensor, smooth: float = 1.0, pos_weight: float = 2.0
) -> torch.Tensor:
    """Pixel BCE plus (1 - soft Dice) over the (image, class) pairs whose mask is not empty.

    Dice over empty pairs would reward predicting nothing, which for the small classes (pits,
    scratches: a few hundred pixels of a crop) wins: a first segmenter trained that way never
    marked either. Empty pairs are still penalised for false pixels by the BCE term.
    """
    weight = torch.tensor(pos_weight, dtype=logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, masks, pos_weight=weight)
    p = torch.sigmoid(logits)
    inter = (p * masks).sum(dim=(2, 3))
    truth = masks.sum(dim=(2, 3))
    dice = (2 * inter + smooth) / (p.sum(dim=(2, 3)) + truth + smooth)
    present = truth > 0
    if not present.any():
        return bce
    return bce + (1 - dice[present]).mean()
