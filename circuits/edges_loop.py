"""AtP edges by the reference method, one upstream hook at a time: one forward of the whole
model with the upstream hook's output a leaf and every later spliced hook frozen, then one
backward per kept downstream node through all prompts and positions (`edge_effects` with
`batched=False`, and the fast path's fallback for a hook neither window backward takes)."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.circuits.attribution import PatchSide
from saelab.circuits.edge_terms import Edge, cotangents, upstream_deltas
from saelab.circuits.nodes import ERROR, SUMMED, NodeKey
from saelab.circuits.splice import SplicedModel, SpliceState, hook_order


def looped_hook(
    spliced: SplicedModel,
    tokens: Tensor,
    states: dict[str, SpliceState],
    grads: dict[str, Tensor],
    sides: dict[str, PatchSide],
    a: str,
    downs: list[str],
    by_hook: dict[str, list[NodeKey]],
    batch: int,
    progress=None,
) -> list[Edge]:
    """The reference's edges from the kept nodes of hook a to those of the hooks `downs`:
    one full forward, one backward per downstream node."""
    edges: list[Edge] = []
    leaf, raw = _direct_forward(spliced, tokens, states[a].x, a, downs)
    ups = by_hook[a]
    up_f, up_e = upstream_deltas(spliced, a, states[a], sides[a], ups)
    for b in downs:
        cots = cotangents(spliced, b, states[b].x, grads[b], by_hook[b])
        for start in range(0, len(cots), batch):
            C = torch.stack(cots[start : start + batch])
            G = _vjp(raw[b], leaf, C)
            E = _contract(G, spliced.saes[a].W_dec.detach(), up_f, up_e, ups)
            for k, down in enumerate(by_hook[b][start : start + batch]):
                for j, up in enumerate(ups):
                    v = float(E[k, j])
                    if v != 0.0:
                        edges.append(Edge(up, down, v))
            if progress is not None:
                progress.update(len(C))
    return edges


def _direct_forward(spliced, tokens, x_a, a, downs):
    """Forward with hook a's output a leaf and every later spliced hook frozen."""
    leaf = x_a.detach().clone().requires_grad_(True)
    raw: dict[str, Tensor] = {}
    edits = {a: lambda x: leaf}
    later = [h for h in spliced.hooks if hook_order(h) > hook_order(a)]
    for h in later:

        def freeze(x: Tensor, h=h) -> Tensor:
            raw[h] = x
            return x.detach()

        edits[h] = freeze
    stop = max(hook_order(b)[0] for b in downs) + 1
    stop = None if stop >= spliced.model.n_layers else stop
    with torch.enable_grad():
        spliced.forward(tokens, edits, stop_at_layer=stop)
    return leaf, raw


def _vjp(out: Tensor, leaf: Tensor, C: Tensor) -> Tensor:
    """J^T c for each c in C `[K, B, T, d]` (J = ∂out/∂leaf), one backward each."""
    return torch.stack([torch.autograd.grad(out, leaf, c, retain_graph=True)[0] for c in C])


def _contract(G: Tensor, W_dec: Tensor, up_f, d_e: Tensor, ups: list[NodeKey]) -> Tensor:
    """E[k, j] for downstream batch k and upstream node j (mean over prompts)."""
    feats, d_f = up_f
    K, B, T, _ = G.shape
    col = {f: i for i, f in enumerate(feats)}
    per_f = (
        torch.einsum("kbtd,fd,btf->ktf", G, W_dec[feats], d_f) / B
        if feats
        else G.new_zeros(K, T, 0)
    )
    per_e = torch.einsum("kbtd,btd->kt", G, d_e) / B
    out = G.new_zeros(K, len(ups))
    for j, key in enumerate(ups):
        src = per_e if key.feature == ERROR else per_f[:, :, col[key.feature]]
        out[:, j] = src.sum(1) if key.pos == SUMMED else src[:, key.pos]
    return out
