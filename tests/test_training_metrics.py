"""edge.training.metrics against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.tools.training import metrics


def test_auc_perfect_inverted_and_undefined() -> None:
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert metrics.roc_auc([1, 1], [0.1, 0.2]) is None  # no negatives: nothing to rank
    assert metrics.roc_auc([0, 0], [0.1, 0.2]) is None


def test_auc_by_hand_with_ties() -> None:
    # Positives 0.8, 0.4; negatives 0.4, 0.3, 0.1. Pairs won: 0.8 beats all 3; 0.4 ties 0.4
    # (1/2) and beats 0.3, 0.1 (2) -> (3 + 2.5) / 6.
    labels = [1, 0, 1, 0, 0]
    scores = [0.8, 0.4, 0.4, 0.3, 0.1]
    assert metrics.roc_auc(labels, scores) == pytest.approx(5.5 / 6)


@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=40).filter(
        lambda xs: any(x for x, _ in xs) and not all(x for x, _ in xs)
    )
)
def test_auc_equals_pairwise_count(pairs: list[tuple[bool, int]]) -> None:
    labels = np.array([p for p, _ in pairs])
    scores = np.array([s for _, s in pairs], float)
    pos, neg = scores[labels], scores[~labels]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    assert metrics.roc_auc(labels, scores) == pytest.approx(wins / (len(pos) * len(neg)))


def test_roc_curve_ends_at_corners() -> None:
    fpr, tpr, thresholds = metrics.roc_curve([0, 1, 0, 1], [0.1, 0.9, 0.6, 0.4])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and thresholds[0] == np.inf
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    # At threshold 0.6: positives >= 0.6 -> 1 of 2; negatives -> 1 of 2.
    i = list(thresholds).index(0.6)
    assert (fpr[i], tpr[i]) == (0.5, 0.5)


@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 1.0])),
        min_size=1,
        max_size=60,
    )
)
def test_roc_curve_is_the_rates_at_each_threshold_by_definition(pairs) -> None:
    """The sort-and-cumsum curve against counting at every threshold (ties included)."""
    labels = np.array([y for y, _ in pairs], bool)
    scores = np.array([s for _, s in pairs], float)
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
    want_t = np.r_[np.inf, np.unique(scores)[::-1]]
    positives, negatives = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
    np.testing.assert_array_equal(thresholds, want_t)
    np.testing.assert_allclose(tpr, [(scores[labels] >= t).sum() / positives for t in want_t])
    np.testing.assert_allclose(fpr, [(scores[~labels] >= t).sum() / negatives for t in want_t])


def test_confusion_precision_recall_f1() -> None:
    c = metrics.confusion([1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0])
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 2)
    assert c.precision == pytest.approx(2 / 3)
    assert c.recall == pytest.approx(2 / 3)
    assert c.f1 == pytest.approx(2 / 3)
    nothing = metrics.confusion([1, 0], [0, 0])
    assert nothing.precision is None and nothing.recall == 0.0 and nothing.f1 == 0.0


def test_dice_by_hand() -> None:
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True  # 4 px
    pred = np.zeros((4, 4), bool)
    pred[1:3, 1:3] = True  # 4 px, 1 shared
    assert metrics.dice(truth, pred) == pytest.approx(2 * 1 / 8)
    assert metrics.dice(truth, truth) == 1.0
    assert metrics.dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0  # Kaggle: empty vs empty
    assert metrics.dice(truth, np.zeros_like(truth)) == 0.0
