"""Score statistics against independent references, and the intervals' coverage."""

from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from saelab.autointerp import stats


@pytest.fixture
def rng():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    return np.random.default_rng(seed)


def test_balanced_accuracy_hand_worked_and_against_sklearn(rng):
    # 3 positives (2 found), 4 negatives (3 rejected): ½ (2/3 + 3/4) = 17/24
    label = np.array([1, 1, 1, 0, 0, 0, 0], bool)
    predicted = np.array([1, 1, 0, 0, 0, 0, 1], bool)
    assert stats.balanced_accuracy(predicted, label) == pytest.approx(17 / 24)
    for _ in range(20):
        label = rng.random(50) < 0.4
        predicted = rng.random(50) < 0.5
        assert stats.balanced_accuracy(predicted, label) == pytest.approx(
            balanced_accuracy_score(label, predicted)
        )
    assert np.isnan(stats.balanced_accuracy(np.ones(3, bool), np.ones(3, bool)))


def test_auroc_with_ties_against_sklearn(rng):
    for _ in range(20):
        label = rng.random(40) < 0.5
        label[:2] = [True, False]
        score = rng.integers(0, 5, 40).astype(float)  # many ties
        assert stats.auroc(score, label) == pytest.approx(roc_auc_score(label, score))
    assert stats.auroc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0


def test_pearson_against_numpy_and_constant_input(rng):
    x, y = rng.normal(size=100), rng.normal(size=100)
    assert stats.pearson(x, x * 2 + y) == pytest.approx(np.corrcoef(x, x * 2 + y)[0, 1])
    assert np.isnan(stats.pearson(np.zeros(5), np.arange(5.0)))


def test_two_class_interval_covers_the_true_balanced_accuracy(rng):
    """A judge right with probability 0.8 on positives and 0.6 on negatives: true BA 0.7."""
    covered, trials = 0, 150
    for _ in range(trials):
        label = np.array([True] * 30 + [False] * 30)
        right = np.where(label, rng.random(60) < 0.8, rng.random(60) < 0.6)
        predicted = np.where(right, label, ~label)
        low, high = stats.balanced_accuracy_interval(
            predicted, label, 1000, int(rng.integers(1 << 30))
        )
        assert low <= stats.balanced_accuracy(predicted, label) <= high
        covered += low <= 0.7 <= high
    assert 0.85 <= covered / trials <= 1.0


def test_auroc_interval_matches_a_plain_bootstrap(rng):
    label = np.array([True] * 15 + [False] * 20)
    score = rng.normal(size=35) + label
    low, high = stats.auroc_interval(score, label, 4000, 7)
    pos, neg = np.nonzero(label)[0], np.nonzero(~label)[0]
    reps = []
    for _ in range(4000):  # the same resampling, one replicate at a time, through sklearn
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        reps.append(roc_auc_score(label[idx], score[idx]))
    ref_low, ref_high = np.percentile(reps, [2.5, 97.5])
    assert low == pytest.approx(ref_low, abs=0.03) and high == pytest.approx(ref_high, abs=0.03)


def test_pearson_interval_from_group_sums_matches_pooled_replicates(rng):
    groups = [(rng.normal(size=8), rng.normal(size=8)) for _ in range(12)]
    groups = [(x, x + 0.5 * y) for x, y in groups]
    pooled = stats.pearson(
        np.concatenate([g[0] for g in groups]), np.concatenate([g[1] for g in groups])
    )
    low, high = stats.pearson_interval(groups, 4000, 1)
    reps = []
    for _ in range(4000):  # whole windows resampled, correlation of the pooled tokens
        pick = rng.integers(0, len(groups), len(groups))
        reps.append(np.corrcoef(np.concatenate([groups[i][0] for i in pick]),
                                np.concatenate([groups[i][1] for i in pick]))[0, 1])  # fmt: skip
    ref_low, ref_high = np.percentile(reps, [2.5, 97.5])
    assert low < pooled < high
    assert low == pytest.approx(ref_low, abs=0.03) and high == pytest.approx(ref_high, abs=0.03)
    assert stats.pearson_interval(groups[:1], 400, 1) is None
