"""Score statistics and their bootstrap confidence intervals.

Every interval is a percentile bootstrap over windows (the windows are the sample): classes are
resampled separately for the two-class scores, so each replicate keeps both. Replicates where a
statistic is undefined (a constant prediction, say) are left out; too few valid replicates give
no interval.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

LEVEL = 0.95


def balanced_accuracy(predicted: np.ndarray, label: np.ndarray) -> float:
    """½ (TP/P + TN/N); NaN when a class is missing."""
    predicted, label = np.asarray(predicted, bool), np.asarray(label, bool)
    p, n = label.sum(), (~label).sum()
    if p == 0 or n == 0:
        return float("nan")
    return 0.5 * ((predicted & label).sum() / p + (~predicted & ~label).sum() / n)


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with ties counted half); NaN when a class is missing."""
    score, label = np.asarray(score, np.float64), np.asarray(label, bool)
    p, n = label.sum(), (~label).sum()
    if p == 0 or n == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[label].sum() - p * (p + 1) / 2) / (p * n))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def balanced_accuracy_interval(
    predicted: np.ndarray, label: np.ndarray, resamples: int, seed: int
) -> tuple[float, float] | None:
    """Bootstrap interval of the balanced accuracy, resampling positives and negatives apart."""
    predicted, label = np.asarray(predicted, bool), np.asarray(label, bool)
    pos, neg = predicted[label], ~predicted[~label]
    if len(pos) == 0 or len(neg) == 0:
        return None
    rng = np.random.default_rng(seed)
    hit = pos[rng.integers(0, len(pos), (resamples, len(pos)))].mean(1)
    reject = neg[rng.integers(0, len(neg), (resamples, len(neg)))].mean(1)
    return _percentiles(0.5 * (hit + reject))


def auroc_interval(
    score: np.ndarray, label: np.ndarray, resamples: int, seed: int
) -> tuple[float, float] | None:
    """Bootstrap interval of the AUROC, resampling positives and negatives apart."""
    score, label = np.asarray(score, np.float64), np.asarray(label, bool)
    pos, neg = score[label], score[~label]
    if len(pos) == 0 or len(neg) == 0:
        return None
    rng = np.random.default_rng(seed)
    p = pos[rng.integers(0, len(pos), (resamples, len(pos)))]
    n = neg[rng.integers(0, len(neg), (resamples, len(neg)))]
    ranks = rankdata(np.concatenate([p, n], axis=1), axis=1)
    k = len(pos)
    values = (ranks[:, :k].sum(1) - k * (k + 1) / 2) / (k * len(neg))
    return _percentiles(values)


def pearson_interval(
    groups: list[tuple[np.ndarray, np.ndarray]], resamples: int, seed: int
) -> tuple[float, float] | None:
    """Bootstrap interval of the Pearson correlation pooled over groups (windows), resampling
    whole groups; each replicate is computed exactly from the groups' sums."""
    if len(groups) < 2:
        return None
    sums = np.array(
        [
            [len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()]
            for x, y in groups
        ],
        np.float64,
    )
    rng = np.random.default_rng(seed)
    total = sums[rng.integers(0, len(groups), (resamples, len(groups)))].sum(1)
    n, sx, sy, sxx, syy, sxy = total.T
    cov, vx, vy = sxy - sx * sy / n, sxx - sx * sx / n, syy - sy * sy / n
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where((vx > 1e-12) & (vy > 1e-12), cov / np.sqrt(vx * vy), np.nan)
    return _percentiles(values)


def _percentiles(values: np.ndarray) -> tuple[float, float] | None:
    valid = values[~np.isnan(values)]
    if len(valid) < max(10, len(values) // 2):
        return None
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(valid, [tail, 100 - tail])
    return float(low), float(high)
