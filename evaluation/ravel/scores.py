"""Prompt pairs (SAEBench's `get_prompt_pairs`), the cause and isolation scores of a trained
mask on held-out pairs, and their bootstrap intervals."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from saelab.evaluation.ravel.mask import Pair
from saelab.evaluation.ravel.prompts import Prompt


def pairs_for(prompts: list[Prompt], attribute: str, n: int, cause: bool, rng: random.Random):
    """Up to `n` pairs whose base prompts ask for `attribute` (sampled without replacement, all
    of them when fewer), each with a source prompt of the same attribute and another value. A
    cause pair expects the source's value, an isolation pair the base's."""
    index = [i for i, p in enumerate(prompts) if p.attribute == attribute]
    bases = index if len(index) <= n else rng.sample(index, n)
    pairs = []
    for b in bases:
        others = [i for i in index if prompts[i].value != prompts[b].value]
        if not others:
            continue
        s = rng.choice(others)
        target = prompts[s] if cause else prompts[b]
        pairs.append(Pair(b, s, cause, target.first_token, target.value))
    return pairs


def attribute_pairs(
    prompts: list[Prompt], attribute: str, attributes: list[str], n: int, rng: random.Random
) -> list[Pair]:
    """The cause pairs of `attribute` and as many isolation pairs drawn from the others'
    pairs, shuffled together (as SAEBench's `run_eval_single_cause_attribute`)."""
    cause = pairs_for(prompts, attribute, n, True, rng)
    iso = [p for a in attributes if a != attribute for p in pairs_for(prompts, a, n, False, rng)]
    rng.shuffle(iso)
    pairs = cause + iso[: len(cause)]
    rng.shuffle(pairs)
    return pairs


def split_pairs(pairs: list[Pair], train_fraction: float) -> tuple[list[Pair], list[Pair]]:
    """Training and held-out pairs, in their shuffled order. Each kind (cause, isolation) is
    cut at `train_fraction` on its own, keeping at least one pair of a kind with two or more
    held out. SAEBench cuts the shuffled list once; at small `n_pairs` that can leave a kind
    with no held-out pair, whose score would then be a mean of nothing."""
    held: set[int] = set()
    for kind in (True, False):
        index = [i for i, p in enumerate(pairs) if p.cause == kind]
        n_train = int(len(index) * train_fraction)
        if len(index) >= 2:
            n_train = min(n_train, len(index) - 1)
        held.update(index[n_train:])
    train = [p for i, p in enumerate(pairs) if i not in held]
    return train, [p for i, p in enumerate(pairs) if i in held]


@dataclass
class Outcomes:
    """Whether each held-out pair's intervened answer was the expected one, per attribute."""

    cause: dict[str, list[bool]] = field(default_factory=dict)
    isolation: dict[str, list[bool]] = field(default_factory=dict)

    def scores(self) -> dict[str, float]:
        """Per attribute and overall (the mean over attributes, as SAEBench averages them):
        cause, isolation and disentangle (their mean)."""
        return _scores(self.cause, self.isolation)

    def intervals(self, n_resamples: int, seed: int) -> dict[str, tuple[float, float]]:
        """95% percentile intervals of every score, resampling each attribute's cause and
        isolation pairs with replacement (the trained masks held fixed)."""
        rng = np.random.default_rng(seed)
        cause = {a: np.asarray(v, dtype=float) for a, v in self.cause.items()}
        iso = {a: np.asarray(v, dtype=float) for a, v in self.isolation.items()}
        draws: dict[str, list[float]] = {}
        for _ in range(n_resamples):
            resampled = _scores(
                {a: v[rng.integers(0, len(v), len(v))] for a, v in cause.items()},
                {a: v[rng.integers(0, len(v), len(v))] for a, v in iso.items()},
            )
            for name, value in resampled.items():
                draws.setdefault(name, []).append(value)
        return {
            name: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
            for name, v in draws.items()
        }


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def _scores(cause: dict, iso: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for a in cause:
        out[f"ravel_cause_{slug(a)}"] = _mean(cause[a])
        out[f"ravel_isolation_{slug(a)}"] = _mean(iso[a])
        out[f"ravel_disentangle_{slug(a)}"] = (_mean(cause[a]) + _mean(iso[a])) / 2
    for kind in ("cause", "isolation", "disentangle"):
        out[f"ravel_{kind}"] = _mean([out[f"ravel_{kind}_{slug(a)}"] for a in cause])
    return out


def slug(attribute: str) -> str:
    """An attribute's name inside a metric name ("Country of Birth" -> "countryofbirth")."""
    return "".join(ch for ch in attribute.lower() if ch.isalnum())
