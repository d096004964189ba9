"""The SCR and TPP scores of one SAE on one prepared task (SAEBench 0.6's `get_scr_plotting_dict`
and `create_tpp_plotting_dict`), and their aggregation over tasks and repetitions."""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from saelab.evaluation.scr_tpp.effects import ablate, latent_effects, top_latents
from saelab.evaluation.scr_tpp.tasks import Task

MIN_DENOMINATOR = 0.001
"""An SCR direction scores 0 when A_oracle − A_biased is below this (SAEBench)."""


def _effects(task: Task, key: str, f_train: Tensor, W_dec: Tensor, scr: bool) -> Tensor:
    k = task.keys[key]
    f = f_train[k.train]
    y = k.train_y.bool()
    return latent_effects(f[y], f[~y], task.probes[key].weight, W_dec, scr=scr)


def _accuracy(task: Task, probe: str, key: str, x_test: Tensor) -> float:
    k = task.keys[key]
    return task.probes[probe].accuracy(x_test[k.test], k.test_y)


def scr_scores(
    task: Task, f_train: Tensor, f_test: Tensor, W_dec: Tensor, n_values: list[int]
) -> dict[str, float]:
    """Per n: `scr_dir1_threshold_{n}` (the spurious probe's latents ablated, the biased probe
    scored on class labels), `scr_dir2_threshold_{n}` (the class probe's latents ablated, scored
    on spurious labels), each (A_ablated − A_biased) / (A_oracle − A_biased), 0 when the
    denominator < 0.001; `scr_metric_threshold_{n}` is the direction whose labels the biased
    probe predicts worse before ablation (dir1 on a tie). Plus the clean accuracies."""
    x = task.test.pooled
    oracle = {"class": _accuracy(task, "class", "class", x),
              "spurious": _accuracy(task, "spurious", "spurious", x)}  # fmt: skip
    biased = {key: _accuracy(task, "biased", key, x) for key in ("class", "spurious")}
    out = {
        "scr_oracle_acc_class": oracle["class"],
        "scr_oracle_acc_spurious": oracle["spurious"],
        "scr_biased_acc_class": biased["class"],
        "scr_biased_acc_spurious": biased["spurious"],
        "scr_biased_acc": _accuracy(task, "biased", "biased", x),
    }
    headline = 1 if biased["class"] <= biased["spurious"] else 2
    # dir1 ablates the spurious probe's latents and scores class labels; dir2 the reverse.
    for direction, ablated, scored in ((1, "spurious", "class"), (2, "class", "spurious")):
        effects = _effects(task, ablated, f_train, W_dec, scr=True)
        denominator = oracle[scored] - biased[scored]
        for n in n_values:
            x_ablated = ablate(x, f_test, W_dec, top_latents(effects, n))
            changed = _accuracy(task, "biased", scored, x_ablated)
            score = (
                0.0 if denominator < MIN_DENOMINATOR else (changed - biased[scored]) / denominator
            )
            out[f"scr_dir{direction}_threshold_{n}"] = score
            if direction == headline:
                out[f"scr_metric_threshold_{n}"] = score
    return out


def tpp_scores(
    task: Task, f_train: Tensor, f_test: Tensor, W_dec: Tensor, n_values: list[int]
) -> dict[str, float]:
    """Per n, averaged over the classes i: `tpp_threshold_{n}_intended_diff_only` (probe i's
    accuracy drop when the n latents most predictive of class i are ablated),
    `..._unintended_diff_only` (the mean drop of the other probes), `..._total_metric` (their
    difference). Plus `tpp_probe_acc`, the probes' mean clean accuracy."""
    x = task.test.pooled
    classes = list(task.keys)
    clean = {c: _accuracy(task, c, c, x) for c in classes}
    effects = {c: _effects(task, c, f_train, W_dec, scr=False) for c in classes}
    out = {"tpp_probe_acc": float(np.mean(list(clean.values())))}
    for n in n_values:
        intended, unintended = [], []
        for c in classes:
            x_ablated = ablate(x, f_test, W_dec, top_latents(effects[c], n))
            drops = {j: clean[j] - _accuracy(task, j, j, x_ablated) for j in classes}
            intended.append(drops[c])
            unintended.append(np.mean([d for j, d in drops.items() if j != c]))
        out[f"tpp_threshold_{n}_intended_diff_only"] = float(np.mean(intended))
        out[f"tpp_threshold_{n}_unintended_diff_only"] = float(np.mean(unintended))
        out[f"tpp_threshold_{n}_total_metric"] = float(np.mean(intended) - np.mean(unintended))
    return out


def mean_over(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the rows that have it (SAEBench's averaging over data sets)."""
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {k: float(np.mean([row[k] for row in rows if k in row])) for k in names}


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of `values` (at least two)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    half = t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def summarise(per_repeat: list[dict[str, float]]):
    """(means, 95% t-intervals) over the repetitions of every metric they all have."""
    names = [k for k in per_repeat[0] if all(k in row for row in per_repeat)]
    means = {k: float(np.mean([row[k] for row in per_repeat])) for k in names}
    intervals = {k: t_interval([row[k] for row in per_repeat]) for k in names}
    return means, intervals


__all__ = ["mean_over", "scr_scores", "summarise", "t_interval", "tpp_scores"]
