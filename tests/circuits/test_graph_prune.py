"""Influence, pruning and circuit-tracer's scores on hand-built graphs with known answers."""

from __future__ import annotations

import pytest
import torch

from saelab.circuits.graph_prune import (
    find_threshold,
    fold_latents,
    graph_scores,
    influence,
    normalize,
    prune,
)

# order: lat0, lat1, err0, emb0, emb1, logit (row = target, column = source)
A = torch.zeros(6, 6, dtype=torch.float64)
A[0, 3], A[0, 2] = 3.0, 1.0  # lat0 <- emb0, err0
A[1, 0], A[1, 4] = -2.0, 2.0  # lat1 <- lat0 (negative), emb1
A[5, 1], A[5, 2], A[5, 0] = 1.0, 1.0, 2.0  # logit <- lat1, err0, lat0
W = torch.tensor([0, 0, 0, 0, 0, 0.5], dtype=torch.float64)
ERROR = torch.tensor([False, False, True, False, False, False])
EMBED = torch.tensor([False, False, False, True, True, False])


def test_influence_and_scores_by_hand():
    """Worked by hand: influence lat0 .625w, lat1 .25w, err0 .40625w, emb0 .46875w, emb1
    .125w; replacement .59375/(.59375+.40625); completeness 2.46875/2.875."""
    inf = influence(normalize(A), W)
    expect = torch.tensor([0.625, 0.25, 0.40625, 0.46875, 0.125, 0.0], dtype=torch.float64)
    assert torch.allclose(inf, expect * 0.5)
    replacement, completeness = graph_scores(A, W, ERROR, EMBED)
    assert replacement == pytest.approx(0.59375)
    assert completeness == pytest.approx(2.46875 / 2.875)


def test_pruned_scores_fold_the_dropped_latents_into_their_errors():
    """lat1 folded into err0 (its layer-and-position error): logit <- err0 2, lat0 2;
    replacement .375, completeness 1.875/2.5."""
    folded = fold_latents(A, torch.tensor([True, False]), torch.tensor([2, 2]), 2)
    assert folded[5, 2] == 2.0 and folded[1].abs().sum() == 0 and folded[:, 1].abs().sum() == 0
    replacement, completeness = graph_scores(folded, W, ERROR, EMBED)
    assert replacement == pytest.approx(0.375)
    assert completeness == pytest.approx(0.75)


def test_influence_equals_the_closed_form_on_a_random_dag():
    """w(Â + Â² + …) = w((I − Â)⁻¹ − I) for a random strictly lower-triangular adjacency."""
    g = torch.Generator().manual_seed(0)
    n = 40
    a = torch.randn(n, n, generator=g, dtype=torch.float64).tril(-1)
    a[torch.rand(n, n, generator=g) < 0.6] = 0
    w = torch.zeros(n, dtype=torch.float64)
    w[-3:] = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    # logits read the rest, nothing reads the logits: reverse so sources come after targets
    norm = normalize(a.flip(0, 1))
    closed = w.flip(0) @ (torch.linalg.inv(torch.eye(n, dtype=torch.float64) - norm) - torch.eye(n))
    assert torch.allclose(influence(norm, w.flip(0)), closed, atol=1e-12)


def test_prune_to_budgets():
    """Node budget 1 keeps lat0 (the most influential of lat0, lat1, err0) with every embedding
    and the logit; an edge budget of 2 keeps the two heaviest edges by score, and a latent that
    loses all its inputs is dropped."""
    kept = prune(A, W, 2, 1, node_budget=1, edge_budget=10, node_threshold=1.0, edge_threshold=1.0)
    assert kept.node_mask.tolist() == [True, False, False, True, True, True]
    assert kept.edge_mask.nonzero().tolist() == [[0, 3], [5, 0]]
    everything = prune(A, W, 2, 1, 10, 100, 1.0, 1.0)
    assert everything.node_mask.all() and int(everything.edge_mask.sum()) == 7
    # edge scores: logit<-lat0 .5·.5=.25 (top), lat0<-emb0 .75·.625·.5, logit<-lat1/err0 .125
    two = prune(A, W, 2, 1, 10, 2, 1.0, 1.0)
    assert two.edge_mask.nonzero().tolist() == [[0, 3], [5, 0]]
    assert two.node_mask.tolist() == [True, False, False, True, True, True]
    assert torch.allclose(kept.influence, influence(normalize(A), W) + W)


def test_find_threshold_keeps_the_smallest_set_holding_the_fraction():
    scores = torch.tensor([5.0, 3.0, 1.0, 1.0])
    assert find_threshold(scores, 0.5) == 5.0
    assert find_threshold(scores, 0.8) == 3.0
    assert find_threshold(scores, 1.0) == 1.0
