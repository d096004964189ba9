"""The parts of edge attribution both edge paths share: the edge record, the hook pairs with a
direct path, the downstream nodes' seeds through the SAE encoder (one backward per node: the
reference's), and the upstream nodes' changes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.circuits.attribution import PatchSide
from saelab.circuits.nodes import ERROR, SUMMED, NodeKey
from saelab.circuits.splice import SpliceState, hook_order


@dataclass
class Edge:
    up: NodeKey
    down: NodeKey
    effect: float


def hook_pairs(hooks: list[str]) -> list[tuple[str, str]]:
    """Pairs (a, b) of spliced hooks with a direct path from a to b."""
    ordered = sorted(hooks, key=hook_order)
    pairs = []
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            between = [c for c in ordered if hook_order(a) < hook_order(c) < hook_order(b)]
            if any(c.endswith("hook_resid_post") for c in between):
                continue
            pairs.append((a, b))
    return pairs


def pos_mask(T: int, pos: int) -> Tensor:
    mask = torch.zeros(T)
    if pos == SUMMED:
        mask[1:] = 1
    else:
        mask[pos] = 1
    return mask


def cotangents(spliced, b: str, x_b: Tensor, g_b: Tensor, downs: list[NodeKey]) -> list[Tensor]:
    """c_d = (∂m/∂d) ∂d/∂x_b for each downstream node, through the SAE encoder only."""
    sae = spliced.saes[b]
    B, T, d = x_b.shape
    x = x_b.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        code = sae.encode_sparse(x.reshape(-1, d))
        x_hat = sae.decode_sparse(code).reshape(B, T, d)
        err = x - x_hat
    g = g_b.detach()
    W = sae.W_dec.detach()
    out = []
    for key in downs:
        mask = pos_mask(T, key.pos).view(1, T, 1)
        if key.feature == ERROR:
            (c,) = torch.autograd.grad(err, x, g * mask, retain_graph=True)
        else:
            w = (g * mask) @ W[key.feature]  # ∂m/∂d per row [B, T]
            grad_vals = (code.idx == key.feature).to(w.dtype) * w.reshape(-1, 1)
            (c,) = torch.autograd.grad(code.vals, x, grad_vals, retain_graph=True)
        out.append(c)
    return out


def upstream_deltas(spliced, a, clean: SpliceState, side: PatchSide, ups: list[NodeKey]):
    """Δf `[B, T, F]` for the kept upstream features (ids in first-seen order) and Δε."""
    B, T, d = clean.x.shape
    feats = list(dict.fromkeys(k.feature for k in ups if k.feature != ERROR))
    ids = torch.tensor(feats, dtype=torch.long)

    def dense(idx: Tensor, vals: Tensor) -> Tensor:
        hit = (idx.unsqueeze(-1) == ids).to(vals.dtype)  # [N, k, F]
        return torch.einsum("nk,nkf->nf", vals.detach(), hit).view(B, T, -1)

    f_c = dense(clean.idx, clean.vals)
    if side.kind == "patch":
        f_p = dense(side.state.idx, side.state.vals)
    elif side.kind == "mean":
        f_p = side.stats.feature_mean[ids].expand(B, T, -1)
    else:
        f_p = torch.zeros_like(f_c)
    d_f = f_p - f_c
    d_e = (side.err(clean.err) - clean.err).detach()
    d_f[:, 0] = 0
    d_e = d_e.clone()
    d_e[:, 0] = 0
    return (feats, d_f), d_e
