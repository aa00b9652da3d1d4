"""The numbers plants ask for, as small pure functions over numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve: the chance a random positive outscores a random negative.

    Ties count one half (the Mann-Whitney U statistic). None when one side is empty, because
    then there is nothing to rank.
    """
    labels = np.asarray(labels, bool).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = _average_ranks(scores)
    u = ranks[labels].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Runs of equal values share the mean of the ranks they span.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    mean_rank = (starts + ends + 1) / 2.0  # 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score used as a threshold (>=).

    One sort and two cumulative sums, O(n log n): the rates at a threshold are the positives
    and negatives scoring at least it, i.e. the counts up to the end of its run of equal
    scores in descending order.
    """
    labels = np.asarray(labels, bool).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    positives, negatives = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], labels[order]
    run_ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # last index of each run
    tp = np.cumsum(hits)[run_ends]
    fp = np.cumsum(~hits)[run_ends]
    thresholds = np.r_[np.inf, ranked[run_ends]]
    tpr = np.r_[0.0, tp / positives]
    fpr = np.r_[0.0, fp / negatives]
    return fpr, tpr, thresholds


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None or p + r == 0:
            return 0.0 if (p is not None or r is not None) else None
        return 2 * p * r / (p + r)

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


def confusion(labels: np.ndarray, predicted: np.ndarray) -> Confusion:
    labels = np.asarray(labels, bool).ravel()
    predicted = np.asarray(predicted, bool).ravel()
    return Confusion(
        tp=int((labels & predicted).sum()),
        fp=int((~labels & predicted).sum()),
        fn=int((labels & ~predicted).sum()),
        tn=int((~labels & ~predicted).sum()),
    )


def dice(truth: np.ndarray, predicted: np.ndarray) -> float:
    """2|A∩B| / (|A|+|B|), and 1 when both are empty (the Kaggle convention)."""
    truth = np.asarray(truth, bool)
    predicted = np.asarray(predicted, bool)
    total = int(truth.sum()) + int(predicted.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((truth & predicted).sum()) / total
