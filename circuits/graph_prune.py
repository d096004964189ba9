"""Influence, pruning and the graph scores, as circuit-tracer defines them.

On an adjacency `A` (row target, column source) with the targets' probabilities `w` at the
logit nodes:
- normalised adjacency `Â = |A|` with each row divided by its sum (rows of zeros stay zero);
- influence of every node on the logits: `w (Â + Â² + Â³ + …)` (the graph is acyclic, so the
  series ends: it is summed until a term is exactly zero);
- replacement score: the embeddings' share of the influence that embeddings and error nodes
  have together (1: every path from the tokens to the logits runs through latents);
- completeness score: the mean over nodes, weighted by influence + w, of the share of each
  node's (normalised) inputs that does not come from error nodes.

Pruning keeps the nodes of highest influence (`node_threshold`: the smallest set holding that
fraction of the total, as circuit-tracer's `prune_graph`; `node_budget`: at most that many
latent and error nodes), always keeping embeddings and logits; then scores each remaining edge
by its normalised weight times the influence of its target (plus the target's own logit weight)
and keeps the top edges (`edge_threshold`, `edge_budget`); then drops, until nothing changes,
latent and error nodes left without an outgoing edge and latents left without an incoming one.

The pruned graph's scores follow circuit-tracer's subgraph scores: every latent outside the
pruned graph is folded into the error node of its layer and position (its column added to that
error's column, its row and column cleared), and the scores are computed on the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def normalize(a: Tensor) -> Tensor:
    """|A| with each row summing to 1 (all-zero rows stay zero)."""
    m = a.abs()
    return m / m.sum(dim=1, keepdim=True).clamp(min=1e-10)


def influence(norm: Tensor, weights: Tensor, max_iter: int = 10_000) -> Tensor:
    """`weights (Â + Â² + …)`: each node's total influence on the weighted nodes."""
    term = weights @ norm
    total = term.clone()
    for _ in range(max_iter):
        term = term @ norm
        if not term.any():
            return total
        total += term
    raise RuntimeError("influence did not converge: the adjacency has a cycle")


def graph_scores(
    a: Tensor, weights: Tensor, error: Tensor, embedding: Tensor
) -> tuple[float, float]:
    """(replacement score, completeness score) of adjacency `a`; `error` and `embedding` are
    masks over its nodes."""
    norm = normalize(a)
    inf = influence(norm, weights)
    token, err = float(inf[embedding].sum()), float(inf[error].sum())
    replacement = token / (token + err) if token + err > 0 else 0.0
    clean_share = 1 - norm[:, error].sum(dim=1)
    out = inf + weights
    total = float(out.sum())
    completeness = float((clean_share * out).sum()) / total if total > 0 else 0.0
    return replacement, completeness


def fold_latents(a: Tensor, keep: Tensor, latent_error: Tensor, n_latents: int) -> Tensor:
    """`a` with every latent not in `keep` (a mask over the first `n_latents` nodes) folded
    into its error node (`latent_error[i]`: the node index of latent i's layer-and-position
    error)."""
    out = a.clone()
    drop = (~keep).nonzero().squeeze(1)
    if drop.numel():
        out.index_add_(1, latent_error[drop], out[:, drop])
        out[drop] = 0
        out[:, drop] = 0
    return out


def find_threshold(scores: Tensor, fraction: float) -> Tensor:
    """The score above which the top scores hold `fraction` of the total."""
    ranked = torch.sort(scores, descending=True).values
    total = ranked.sum()
    if total <= 0:
        return ranked[-1]
    cumulative = torch.cumsum(ranked, 0) / total
    index = int(torch.searchsorted(cumulative, torch.tensor(fraction, dtype=cumulative.dtype)))
    return ranked[min(index, len(ranked) - 1)]


@dataclass
class Pruned:
    """Which nodes and edges a pruned graph keeps."""

    node_mask: Tensor
    edge_mask: Tensor
    """`[n, n]`, same layout as the adjacency."""
    influence: Tensor
    """Every node's influence on the logits in the unpruned graph (logits: their weight)."""


def prune(
    a: Tensor,
    weights: Tensor,
    n_latents: int,
    n_errors: int,
    node_budget: int,
    edge_budget: int,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> Pruned:
    """Prune to the budgets and thresholds (see the module docstring)."""
    n = a.shape[0]
    inner = n_latents + n_errors  # latents and errors: the nodes that can be pruned
    norm = normalize(a)
    inf = influence(norm, weights)
    node_mask = torch.ones(n, dtype=torch.bool)
    if inner:
        score = inf[:inner]
        mask = score >= find_threshold(score, node_threshold)
        if node_budget < int(mask.sum()):
            top = torch.argsort(torch.where(mask, score, -1.0), descending=True)[:node_budget]
            mask = torch.zeros_like(mask)
            mask[top] = True
        node_mask[:inner] = mask & (score > 0)
    pruned = a.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    pnorm = normalize(pruned)
    edge_scores = pnorm * (influence(pnorm, weights) + weights)[:, None]
    flat = edge_scores.flatten()
    live = flat > 0
    edge_mask = torch.zeros(n * n, dtype=torch.bool)
    if live.any():
        edge_mask = (flat >= find_threshold(flat[live], edge_threshold)) & live
        if edge_budget < int(edge_mask.sum()):
            top = torch.argsort(torch.where(edge_mask, flat, -1.0), descending=True)[:edge_budget]
            edge_mask = torch.zeros_like(edge_mask)
            edge_mask[top] = True
    edge_mask = edge_mask.reshape(n, n)
    while True:
        before = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:inner] &= edge_mask[:, :inner].any(0)  # something reads it
        node_mask[:n_latents] &= edge_mask[:n_latents].any(1)  # something feeds it
        if torch.equal(before, node_mask):
            break
    return Pruned(node_mask, edge_mask, inf + weights)
