"""Latents shared across seeds: the matching against brute force, the fraction on a known case."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import torch

from saelab.evaluation.seeds import match_latents, shared_latents


def fresh_seed() -> int:
    return int(np.random.SeedSequence().entropy % 2**31)


def test_matching_is_the_best_one_to_one_pairing():
    g = torch.Generator().manual_seed(fresh_seed())
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    rows, cols, cos = match_latents(a, b)
    an = a / a.norm(dim=1, keepdim=True)
    bn = b / b.norm(dim=1, keepdim=True)
    full = (an @ bn.t()).numpy()
    best = max(itertools.permutations(range(6)), key=lambda p: sum(full[i, p[i]] for i in range(6)))
    assert list(cols[np.argsort(rows)]) == list(best)
    np.testing.assert_allclose(cos, full[rows, cols], rtol=1e-5)  # reference in float32


def test_shared_fraction_of_a_shuffled_partial_copy():
    """Second SAE: the first's rows in another order, 30 of 80 replaced by fresh directions and
    every row slightly perturbed: exactly the 50 kept rows are shared, each with its original."""
    g = torch.Generator().manual_seed(fresh_seed())
    w_a = torch.randn(80, 256, generator=g)
    w_b = w_a.clone()
    w_b[50:] = torch.randn(
        30, 256, generator=g
    )  # in 256 dims these are near-orthogonal (|cos| < 0.3)
    w_b = w_b + 0.05 * torch.randn(80, 256, generator=g) * w_a.norm(dim=1, keepdim=True) / 16
    perm = torch.randperm(80, generator=g)
    sae_a = SimpleNamespace(W_dec=w_a)
    sae_b = SimpleNamespace(W_dec=w_b[perm])
    result = shared_latents(sae_a, sae_b, threshold=0.7)
    assert result.fraction == 50 / 80
    shared = result.cosines >= 0.7
    # each shared pair is a latent and its own shuffled copy
    assert (perm[result.cols[shared]].numpy() == result.rows[shared]).all()
    assert (perm[result.cols[shared]] < 50).all()
