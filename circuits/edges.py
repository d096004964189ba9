"""Edge attribution: the direct effect u → d between kept nodes of two spliced hooks.

E(u → d) = Σ (∂m/∂d) · (∂d/∂u) · Δu, mean over prompts (summed over positions for summed
nodes), where ∂d/∂u follows only the direct path: every spliced hook between u's and d's is
frozen (its output detached), so paths through other nodes do not count. One forward per
upstream hook makes the upstream hook's output a leaf and detaches every later spliced hook
after capturing its raw input x_b, which then depends on the leaf through direct paths only.

For a downstream node d the vector c_d = (∂m/∂d) ∂d/∂x_b is a cheap backward through the SAE
encoder alone; the expensive part, J^T c_d through the model between the two hooks, is one
backward per node in the reference (`batched=False`, kept here as the independent check).
`batched=True` (circuits/edges_fast.py) gets the same numbers from only the blocks and positions
involved and one backward row per (node, prompt) pair where the node is on, on models with
rotary positions (a hand-written backward for Llama-family blocks, else autograd through the
bridge's blocks where `window.supported`); for any upstream hook where neither applies it logs
why and runs the reference for that hook (`edges_loop.looped_hook`). Edges are kept as a sparse list (u, d, effect),
never a dense adjacency.

Candidate hook pairs: a before b with no spliced `hook_resid_post` strictly between them (the
residual stream is a bottleneck: nothing before it reaches past it directly).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.circuits.attribution import PatchSide
from saelab.circuits.edge_terms import Edge, hook_pairs
from saelab.circuits.edges_loop import looped_hook
from saelab.circuits.nodes import ERROR, SUMMED, Node, NodeKey
from saelab.circuits.splice import SplicedModel, SpliceState, hook_order

EDGE_METHODS = ("ig", "atp")


def edge_effects(
    spliced: SplicedModel,
    tokens: Tensor,
    states: dict[str, SpliceState],
    grads: dict[str, Tensor],
    sides: dict[str, PatchSide],
    nodes: list[Node],
    batch: int = 64,
    batched: bool = True,
    progress=None,
) -> list[Edge]:
    """Direct effects between every pair of kept nodes in connected hooks (all non-zero).

    `batched=False`: the reference, one full forward per upstream hook and one backward per
    downstream node. `batched=True` (circuits/edges_fast.py): the same numbers from a forward
    of only the blocks and positions involved and one backward over the active (node, prompt)
    pairs; for an upstream hook where the model supports neither window backward, the
    reference, with one log line."""
    if batched:
        from saelab.circuits.edges_fast import fast_edge_effects

        return fast_edge_effects(spliced, tokens, states, grads, sides, nodes, batch, progress)
    by_hook: dict[str, list[NodeKey]] = {}
    for n in nodes:
        by_hook.setdefault(n.key.hook, []).append(n.key)
    pairs = [(a, b) for a, b in hook_pairs(spliced.hooks) if a in by_hook and b in by_hook]
    edges: list[Edge] = []
    for a in dict.fromkeys(a for a, _ in pairs):
        downs = [b for x, b in pairs if x == a]
        edges += looped_hook(
            spliced, tokens, states, grads, sides, a, downs, by_hook, batch, progress
        )
    return edges


def ig_edge_effects(
    spliced: SplicedModel,
    tokens: Tensor,
    metric,
    states: dict[str, SpliceState],
    sides: dict[str, PatchSide],
    nodes: list[Node],
    steps: int = 10,
    progress=None,
    only: set[tuple[NodeKey, NodeKey]] | None = None,
) -> list[Edge]:
    """Direct effects u → d where the metric bends: the exact direct change of d under u's
    patch, and the metric's response to that change by integrated gradients.

    The upstream side is exact: one forward per upstream node patches it with every spliced
    hook after it frozen at its clean output and reads each downstream hook's raw input; the
    downstream SAE encodes it under the selection policy (run inside
    `SplicedModel.frozen_at` for the frozen one), which gives d's new value and so the change
    c of hook b's output that moves d there. The downstream side integrates ∂m/∂(b's output)
    along clean + β·c (midpoint rule, `steps` copies of the prompts in one batch) and takes
    its dot product with c: the effect of moving d alone, as the edge check measures it.
    `only`: score just these (up, down) pairs."""
    from saelab.circuits.attribution import path_gradient
    from saelab.circuits.exact import key_delta

    by_hook: dict[str, list[NodeKey]] = {}
    for n in nodes:
        by_hook.setdefault(n.key.hook, []).append(n.key)
    pairs = [(a, b) for a, b in hook_pairs(spliced.hooks) if a in by_hook and b in by_hook]
    B = tokens.shape[0]
    edges: list[Edge] = []
    for a in dict.fromkeys(a for a, _ in pairs):
        downs = [b for x, b in pairs if x == a]
        for up in by_hook[a]:
            wanted = {b: [d for d in by_hook[b] if only is None or (up, d) in only] for b in downs}
            if not any(wanted.values()):
                continue
            delta = key_delta(spliced, up, states, sides)
            raw = _patched_inputs(spliced, tokens, states, a, delta, downs)
            for b in downs:
                for down in wanted[b]:
                    change = down_delta(spliced, b, states[b], raw[b], down)
                    if not change.any():
                        continue
                    grad = path_gradient(spliced, tokens, metric, b, change, steps)
                    edges.append(Edge(up, down, float((grad * change).sum() / B)))
            if progress is not None:
                progress.update(1)
    return edges


def _patched_inputs(spliced, tokens, states, a: str, delta: Tensor, downs: list[str]):
    """Raw inputs of the hooks `downs` with hook a's output moved by `delta` and every later
    spliced hook frozen at its clean output (direct paths only)."""
    raw: dict[str, Tensor] = {}
    edits = {a: (lambda x: x + delta)}
    for h in spliced.hooks:
        if hook_order(h) > hook_order(a):

            def freeze(x: Tensor, h=h) -> Tensor:
                raw[h] = x
                return states[h].out.detach()

            edits[h] = freeze
    stop = max(hook_order(b)[0] for b in downs) + 1
    with torch.no_grad():
        spliced.forward(
            tokens, edits, stop_at_layer=None if stop >= spliced.model.n_layers else stop
        )
    return raw


def dense_features(idx: Tensor, vals: Tensor, ids: Tensor) -> Tensor:
    """Values of latents `ids` per row `[N, F]` from a sparse code (through one dense
    `[N, width]` row per input row, never `[N, k, F]`: F may be every latent)."""
    width = int(max(int(idx.max()) if idx.numel() else 0, int(ids.max()) if ids.numel() else 0))
    dense = vals.new_zeros(idx.shape[0], width + 1).scatter_add_(1, idx, vals.detach())
    return dense[:, ids]


def down_delta(spliced, b: str, clean: SpliceState, x_new: Tensor, down: NodeKey) -> Tensor:
    """The change of hook b's output that moves node `down` to its value under x_new."""
    B, T, d = x_new.shape
    idx, vals, x_hat = spliced.encode(b, x_new)
    mask = torch.zeros(1, T, 1)
    if down.pos == SUMMED:
        mask[:, 1:] = 1
    else:
        mask[:, down.pos] = 1
    if down.feature == ERROR:
        return ((x_new - x_hat) - clean.err) * mask
    ids = torch.tensor([down.feature])
    f_new = dense_features(idx, vals, ids).view(B, T, 1)
    f_old = dense_features(clean.idx, clean.vals, ids).view(B, T, 1)
    return (f_new - f_old) * spliced.saes[b].W_dec.detach()[down.feature] * mask
