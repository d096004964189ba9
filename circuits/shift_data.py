"""SHIFT's data: labelled biographies cut into the four disjoint splits the experiment needs.

A biography has a binary profession label (the task: 0 = the first profession, e.g. professor,
1 = the second, e.g. nurse) and a binary gender label (the spurious attribute: 0 male, 1
female, Bias in Bios' coding). The *biased* split holds only (profession 0, male) and
(profession 1, female), so the two labels are perfectly correlated there, as in the SFC paper's
"ambiguous" set; the *balanced* splits hold the four groups in equal numbers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from saelab.base.errors import UserError


@dataclass(frozen=True)
class Bio:
    text: str
    profession: int
    """0 or 1 (which of the two professions)."""
    gender: int
    """0 male, 1 female."""


@dataclass
class ShiftData:
    biased_train: list[Bio]
    """Profession and gender perfectly correlated: the classifier's training set."""
    balanced_train: list[Bio]
    """The four groups equally: the oracle's training set."""
    judge: list[Bio]
    """Balanced, held out: the correlation judge's texts and the features' descriptions."""
    test: list[Bio]
    """Balanced, held out: every accuracy is measured here."""
    professions: tuple[str, str]
    source: str
    """Where the texts came from (a stand-in's name and version, or a file)."""


Quadrant = Callable[[int, int, int, str], list[str]]
"""texts(profession index, gender, n, part "train" or "test") -> the first n texts of that
quadrant (the same first n whatever n is)."""


def make_splits(
    quadrant: Quadrant,
    professions: tuple[str, str],
    source: str,
    n_train: int,
    n_judge: int,
    n_test: int,
    seed: int = 0,
) -> ShiftData:
    """The four disjoint splits: biased and balanced train from the "train" part (n_train // 2
    of each aligned group; n_train // 4 of each group), judge and test from the "test" part
    (n // 4 of each group). A quadrant with too few texts is a one-line error."""
    q_train, q_judge, q_test = n_train // 4, n_judge // 4, n_test // 4
    if min(q_train, q_judge, q_test) < 1:
        raise UserError(
            f"splits too small (train {n_train}, judge {n_judge}, test {n_test}): each needs at "
            "least 4 texts, one per profession and gender"
        )
    rng = random.Random(seed)
    train: dict[tuple[int, int], list[Bio]] = {}
    test: dict[tuple[int, int], list[Bio]] = {}
    for p in (0, 1):
        for g in (0, 1):
            need = q_train + (n_train // 2 if p == g else 0)
            for part, n, out in (("train", need, train), ("test", q_judge + q_test, test)):
                texts = quadrant(p, g, n, part)
                if len(texts) < n:
                    raise UserError(
                        f"only {len(texts)} {part} biographies of {professions[p]} with gender "
                        f"{'female' if g else 'male'}, {n} needed: lower the split sizes"
                    )
                out[(p, g)] = [Bio(t, p, g) for t in texts[:n]]

    def shuffled(rows: list[Bio]) -> list[Bio]:
        rng.shuffle(rows)
        return rows

    groups = list(train)
    return ShiftData(
        biased_train=shuffled(train[(0, 0)][: n_train // 2] + train[(1, 1)][: n_train // 2]),
        balanced_train=shuffled([b for k in groups for b in train[k][len(train[k]) - q_train :]]),
        judge=shuffled([b for k in groups for b in test[k][:q_judge]]),
        test=shuffled([b for k in groups for b in test[k][q_judge:]]),
        professions=professions,
        source=source,
    )


def load_shift_data(cfg) -> ShiftData:
    """The splits from Bias in Bios: a local copy (`cfg.dataset`) or the generated stand-in
    (`saelab.evaluation.datasets.bios`)."""
    from saelab.evaluation.datasets.bios import bios_texts

    professions = (cfg.professions[0], cfg.professions[1])
    genders = ("male", "female")

    def quadrant(p: int, g: int, n: int, part: str) -> list[str]:
        return bios_texts(professions[p], genders[g], n, part=part, seed=cfg.seed, path=cfg.dataset)

    source = cfg.dataset or "bias-in-bios stand-in (saelab.evaluation.datasets.bios)"
    return make_splits(
        quadrant, professions, source, cfg.n_train, cfg.n_judge, cfg.n_test, cfg.seed
    )
