"""Edge attribution, fast: the numbers of `edge_effects(batched=False)` from much less work.

Per upstream hook a the reference runs the whole model up to the last downstream hook, then one
backward per downstream node through all prompts and positions. Here:

- only the blocks between a and its downstream hooks run, and only at the positions the kept
  nodes can connect: from the first kept upstream position s0 (nothing before it moves) to the
  last kept downstream position t1 (nothing after it is read). Positions before s0 enter the
  attention as constant keys and values, from one pass over each distinct prefix;
- a downstream node's backward seed is zero on every prompt where its latent is off (its
  ∂d/∂x vanishes), so the backward runs only the (node, prompt) pairs where it is on;
- a feature's seed comes from the SAE's `encode_at` on the rows where it is active (no dense
  `[rows, d_sae]` backward per node); the error seeds of a hook from one backward;
- the contraction with the upstream changes and the edge list are vectorised, and the sums over
  prompts accumulate in float64.

Two backwards, chosen per upstream hook: on Llama-family blocks the hand-written one
(circuits/window_vjp.py: one forward saves what it reads, then one row per active pair, plain
matmuls); elsewhere autograd through the bridge's own blocks (circuits/window.py), the seeds
packed into slots (slot j carries, on each prompt, the j-th node active there; one batched
backward of every prompt per slot). Where neither applies (learned absolute positions, for
one), that hook's edges come from the per-node loop, with one log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from saelab.circuits import window_vjp
from saelab.circuits.attribution import PatchSide
from saelab.circuits.edge_terms import Edge, cotangents, hook_pairs, upstream_deltas
from saelab.circuits.edges_loop import looped_hook
from saelab.circuits.nodes import ERROR, SUMMED, Node, NodeKey
from saelab.circuits.splice import SUBMODULES, SplicedModel, SpliceState, hook_order
from saelab.circuits.window import PrefixKV, block_kwargs, run_blocks, supported

log = logging.getLogger(__name__)


def fast_edge_effects(
    spliced: SplicedModel,
    tokens: Tensor,
    states: dict[str, SpliceState],
    grads: dict[str, Tensor],
    sides: dict[str, PatchSide],
    nodes: list[Node],
    batch: int = 64,
    progress=None,
) -> list[Edge]:
    """`edge_effects` with `batched=True` (same edges, same order); `batch`: slots (the
    most nodes active on one prompt) per backward call."""
    by_hook: dict[str, list[NodeKey]] = {}
    for n in nodes:
        by_hook.setdefault(n.key.hook, []).append(n.key)
    pairs = [(a, b) for a, b in hook_pairs(spliced.hooks) if a in by_hook and b in by_hook]
    if not pairs:
        return []
    T = tokens.shape[1]
    try:
        kw = block_kwargs(spliced, tokens)
    except RuntimeError:  # no rotary positions: neither window forward applies
        kw = None
    why: str | None = None if kw is not None else supported(spliced, tokens)
    checked = kw is None  # whether `why` holds the bridge window's verdict yet
    edges: list[Edge] = []
    for a in dict.fromkeys(a for a, _ in pairs):
        downs = [b for x, b in pairs if x == a]
        ups = by_hook[a]
        s0 = min(1 if u.pos == SUMMED else u.pos for u in ups)
        t1 = max(T - 1 if d.pos == SUMMED else d.pos for b in downs for d in by_hook[b])
        if t1 < s0:  # every downstream node sits before every upstream one
            if progress is not None:
                progress.update(sum(len(by_hook[b]) for b in downs))
            continue
        backward = None
        if kw is not None:
            backward = _manual_backward(spliced, tokens, states, a, downs, kw, s0, t1)
        if backward is None and not checked:
            why, checked = supported(spliced, tokens), True
        if backward is None and why is None:
            backward = _autograd_backward(spliced, tokens, states, a, downs, kw, s0, t1)
        if backward is None:
            log.info("edge_effects: no fast path for %s (%s); running the per-node loop", a, why)
            edges += looped_hook(
                spliced, tokens, states, grads, sides, a, downs, by_hook, batch, progress
            )
            continue
        (feats, d_f), d_e = upstream_deltas(spliced, a, states[a], sides[a], ups)
        up = _Upstream(spliced.saes[a].W_dec.detach(), feats, d_f, d_e, ups, s0, t1)
        for b in downs:
            E = _down_hook(spliced, b, states[b], grads[b], by_hook[b], backward(b), up, batch)
            nz = E.nonzero()
            values = E[nz[:, 0], nz[:, 1]].tolist()  # one conversion, not one per edge
            downs_b = by_hook[b]
            for (k, j), v in zip(nz.tolist(), values):
                edges.append(Edge(ups[j], downs_b[k], v))
            if progress is not None:
                progress.update(len(by_hook[b]))
    return edges


Backward = Callable[[Tensor, Tensor, Tensor, int], Tensor]
"""backward(C, prompts, slots, n_slots): J^T C for seed rows C `[R, P, d]` (row r on prompt
`prompts[r]`, the `slots[r]`-th node active there, slots < n_slots), as `[R, P, d]` at the leaf."""

BackwardTo = Callable[[str], Backward]
"""The backward from one downstream hook of the window to its leaf."""


def _inside(a: str) -> bool:
    return hook_order(a)[1] != SUBMODULES["hook_resid_post"]


def _entering(spliced, tokens, states, a: str) -> Tensor:
    """The residual entering the window's first block: a's output for a `hook_resid_post`,
    else the residual entering a's block, from the plain model (as the reference)."""
    if not _inside(a):
        return states[a].x.detach()
    with torch.no_grad():
        return spliced.forward(tokens, stop_at_layer=hook_order(a)[0])[0].detach()


def _prefix_rows(tokens: Tensor, s0: int) -> tuple[Tensor, Tensor]:
    """(one prompt per distinct prefix tokens[:, :s0], each prompt's prefix among them): the
    prefix is a function of its tokens alone (causal), so each distinct one runs once."""
    _, inverse = torch.unique(tokens[:, :s0], dim=0, return_inverse=True)
    rep = torch.empty(int(inverse.max()) + 1, dtype=torch.long)
    rep[inverse] = torch.arange(len(inverse))
    return rep, inverse


def _manual_backward(spliced, tokens, states, a, downs, kw, s0: int, t1: int) -> BackwardTo | None:
    """The backward through `LlamaWindow` (hand-written, rows = active (node, prompt) pairs),
    or None where it does not apply (a block it does not know, a hook_z leaf or target)."""
    places = {b: window_vjp.sites(a, b, spliced.hooks) for b in downs}
    if any(p is None for p in places.values()):
        return None
    layer = hook_order(a)[0]
    first = layer if _inside(a) else layer + 1
    last = max(hook_order(b)[0] for b in downs)
    window = window_vjp.LlamaWindow.build(spliced, first, last, kw)
    if window is None:
        return None
    hidden = _entering(spliced, tokens, states, a)
    if s0 > 0:
        rep, inverse = _prefix_rows(tokens, s0)
        window.forward(hidden[:, s0 : t1 + 1], s0, hidden[rep, :s0], inverse)
    else:
        window.forward(hidden[:, : t1 + 1], 0)
    expected = {hook_order(b): states[b].x[:, s0 : t1 + 1].detach() for b in downs}
    why = window.mismatch(hidden[:, s0 : t1 + 1], expected)
    if why is not None:
        log.info("edge_effects: the hand-written window after %s does not match (%s)", a, why)
        return None

    def backward(b: str) -> Backward:
        leaf, target, frozen = places[b]
        return lambda C, prompts, slots, n_slots: window.vjp(C, prompts, leaf, target, frozen)

    return backward


def _autograd_backward(spliced, tokens, states, a, downs, kw, s0: int, t1: int) -> BackwardTo:
    """The backward through the bridge's blocks (`_window_forward`) by autograd: the seed rows
    packed into slots, one batched backward of every prompt per slot."""
    leaf, raw = _window_forward(spliced, tokens, states, a, downs, kw, s0, t1)

    def backward(b: str) -> Backward:
        def run(C: Tensor, prompts: Tensor, slots: Tensor, n_slots: int) -> Tensor:
            packed = C.new_zeros(n_slots, *leaf.shape)
            packed[slots, prompts] = C
            (G,) = torch.autograd.grad(
                raw[b], leaf, packed, retain_graph=True, is_grads_batched=True
            )
            return G[slots, prompts]

        return run

    return backward


def _window_forward(spliced, tokens, states, a, downs, kw, s0: int, t1: int):
    """Raw inputs of the downstream hooks at positions s0..t1, as functions of a leaf that is
    hook a's output there; every spliced hook after a frozen (direct paths only)."""
    layer = hook_order(a)[0]
    inside = _inside(a)
    first = layer if inside else layer + 1
    last = max(hook_order(b)[0] for b in downs)
    x_a = states[a].x.detach()
    hidden = _entering(spliced, tokens, states, a)
    later = [h for h in spliced.hooks if hook_order(h) > hook_order(a)]
    cache = None
    if s0 > 0:
        rep, inverse = _prefix_rows(tokens, s0)
        cache = PrefixKV()
        edits = {h: (lambda x: x.detach()) for h in later}
        if inside:
            edits[a] = lambda x: x_a[rep, :s0]
        with torch.no_grad():
            run_blocks(spliced, hidden[rep, :s0], first, last, kw, 0, cache, edits)
        cache.expand(inverse)
    leaf = x_a[:, s0 : t1 + 1].clone().requires_grad_(True)
    raw: dict[str, Tensor] = {}
    edits = {}
    for h in later:

        def freeze(x: Tensor, h=h) -> Tensor:
            raw[h] = x
            return x.detach()

        edits[h] = freeze
    if inside:
        edits[a] = lambda x: leaf
    with torch.enable_grad():
        run_blocks(
            spliced, hidden[:, s0 : t1 + 1] if inside else leaf, first, last, kw, s0, cache, edits
        )
    return leaf, raw


class _Upstream:
    """The kept upstream nodes of one hook as columns: per prompt and window position, the
    change of each kept latent (`d_f`) and of the error (`d_e`), and where each node reads."""

    def __init__(self, W_dec, feats, d_f, d_e, ups: list[NodeKey], s0: int, t1: int):
        W = W_dec[feats] if feats else W_dec.new_zeros(0, W_dec.shape[1])
        self.W = W.double()
        self.d_f = d_f[:, s0 : t1 + 1].double()
        self.d_e = d_e[:, s0 : t1 + 1].double()
        col = {f: i for i, f in enumerate(feats)}
        F = len(feats)
        self.col = torch.tensor([F if u.feature == ERROR else col[u.feature] for u in ups])
        self.summed = torch.tensor([u.pos == SUMMED for u in ups])
        pos = torch.tensor([0 if u.pos == SUMMED else u.pos - s0 for u in ups])
        self.s0, self.t1 = s0, t1
        self.valid = pos <= t1 - s0  # an upstream position after t1 reaches no kept node
        self.pos = pos.clamp(max=t1 - s0)

    def effects(self, G: Tensor, prompts: Tensor) -> Tensor:
        """Per (downstream seed, prompt) row of G `[R, P, d]`: the effect on each upstream
        node `[R, n_up]` (summed over its positions, not yet averaged over prompts)."""
        G = G.double()
        Hf = (G @ self.W.T) * self.d_f[prompts]
        He = (G * self.d_e[prompts]).sum(-1, keepdim=True)
        H = torch.cat([Hf, He], -1)  # [R, P, F + 1]
        at = H[:, self.pos, self.col]
        summed = H.sum(1)[:, self.col]
        return torch.where(self.summed, summed, at) * self.valid


def _down_hook(spliced, b, st: SpliceState, g_b, downs: list[NodeKey], backward, up, batch):
    """E `[K, n_up]` (float64, mean over prompts) for the kept nodes `downs` of hook b."""
    sae = spliced.saes[b]
    B, T, d = st.x.shape
    s0, t1 = up.s0, up.t1
    K = len(downs)
    g = g_b.detach()
    # where each node sits: its positions inside the window
    where = torch.zeros(K, T, dtype=torch.bool)
    for k, key in enumerate(downs):
        if key.pos == SUMMED:
            where[k, 1:] = True
        else:
            where[k, key.pos] = True
    where[:, :s0] = False
    where[:, t1 + 1 :] = False
    is_err = torch.tensor([key.is_error for key in downs])
    # feature nodes: the (node, prompt, position) triples where the latent is on
    trip = _feature_triples(st, downs, where, is_err)
    active = torch.zeros(K, B, dtype=torch.bool)
    active[trip[0], trip[1]] = True
    active[is_err] = where[is_err].any(1, keepdim=True)
    c_err = (
        _error_seeds(sae, st.x[:, s0 : t1 + 1], g[:, s0 : t1 + 1]) if bool(is_err.any()) else None
    )
    per_latent = _per_latent(sae)
    if not per_latent:  # the reference's seeds, one encoder backward per node
        reference = torch.stack(cotangents(spliced, b, st.x, g_b, downs))
    slot = active.long().cumsum(0) - 1  # packing: the j-th active node of a prompt → slot j
    n_slots = int(active.sum(0).max()) if active.any() else 0
    E = torch.zeros(K, len(up.col), dtype=torch.float64)
    W_dec = sae.W_dec.detach()
    feats = torch.tensor([max(key.feature, 0) for key in downs])
    row = torch.full((K, B), -1, dtype=torch.long)  # (node, prompt) → seed row of this chunk
    for j0 in range(0, n_slots, batch):
        j1 = min(j0 + batch, n_slots)
        k_p, b_p = (active & (slot >= j0) & (slot < j1)).nonzero(as_tuple=True)
        row[k_p, b_p] = torch.arange(len(k_p))
        C = st.x.new_zeros(len(k_p), t1 - s0 + 1, d)
        k_t, b_t, t_t = (
            x[(slot[trip[0], trip[1]] >= j0) & (slot[trip[0], trip[1]] < j1)] for x in trip
        )
        if len(k_t):
            if per_latent:
                c = _feature_seeds(sae, st.x, g, W_dec, feats[k_t], b_t, t_t)
            else:
                c = reference[k_t, b_t, t_t]
            C.index_put_((row[k_t, b_t], t_t - s0), c, accumulate=True)
        if c_err is not None:
            k_e, b_e = ((active & is_err.unsqueeze(1)) & (slot >= j0) & (slot < j1)).nonzero(
                as_tuple=True
            )
            mask = where[k_e, s0 : t1 + 1].unsqueeze(-1).to(C.dtype)
            C[row[k_e, b_e]] = c_err[b_e] * mask
        G = backward(C, b_p, slot[k_p, b_p] - j0, j1 - j0)
        U = up.effects(G, b_p)
        E.index_add_(0, k_p, U)
    return E / B


def _feature_triples(st: SpliceState, downs: list[NodeKey], where: Tensor, is_err: Tensor):
    """(node, prompt, position) index tensors where a kept feature node's latent is on,
    from the sparse code (no dense `[rows, d_sae]`)."""
    B, T, _ = st.x.shape
    feats = sorted({key.feature for key in downs if not key.is_error})
    if not feats:
        e = torch.zeros(0, dtype=torch.long)
        return e, e, e
    lut = torch.full((int(max(feats)) + 1,), -1, dtype=torch.long)
    lut[torch.tensor(feats)] = torch.arange(len(feats))
    at_pos = torch.full((len(feats), T), -1, dtype=torch.long)  # (feature, position) → node
    summed = torch.full((len(feats),), -1, dtype=torch.long)
    for k, key in enumerate(downs):
        if key.is_error:
            continue
        if key.pos == SUMMED:
            summed[lut[key.feature]] = k
        else:
            at_pos[lut[key.feature], key.pos] = k
    idx = st.idx.view(B, T, -1)
    on = (st.vals.detach() != 0).view(B, T, -1) & (idx < len(lut))
    fid = torch.where(on, lut[idx.clamp(max=len(lut) - 1)], -1)
    b, t, s = (fid >= 0).nonzero(as_tuple=True)
    f = fid[b, t, s]
    out = []
    for node in (at_pos[f, t], summed[f]):
        keep = node >= 0
        out.append((node[keep], b[keep], t[keep]))
    k = torch.cat([o[0] for o in out])
    b = torch.cat([o[1] for o in out])
    t = torch.cat([o[2] for o in out])
    keep = where[k, t] & ~is_err[k]
    return k[keep], b[keep], t[keep]


def _per_latent(sae) -> bool:
    """Whether `encode_at` of one latent alone gives its value under a held selection (the
    base class's and the gated SAE's do; matching pursuit's depends on the earlier picks)."""
    from saelab.sae.architectures.gated import GatedSAE
    from saelab.sae.base import SAE

    return type(sae).encode_at in (SAE.encode_at, GatedSAE.encode_at)


def _feature_seeds(sae, x: Tensor, g: Tensor, W_dec: Tensor, f: Tensor, b: Tensor, t: Tensor):
    """c = (∂m/∂d) ∂d/∂x at the rows (b, t) for latents f `[N, d]`: through `encode_at`, which
    holds the selection (equal to encode_sparse's gradient where the latent is on)."""
    rows = x[b, t].detach().requires_grad_(True)
    w = (g[b, t] * W_dec[f]).sum(-1)  # ∂m/∂d per row
    with torch.enable_grad():
        vals = sae.encode_at(rows, f.unsqueeze(1))
        (c,) = torch.autograd.grad(vals, rows, w.unsqueeze(1))
    return c


def _error_seeds(sae, x: Tensor, g: Tensor) -> Tensor:
    """(∂m/∂ε) ∂ε/∂x at every row of x `[B, P, d]` (rows are independent: one backward)."""
    B, T, d = x.shape
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        code = sae.encode_sparse(x.reshape(-1, d))
        err = x - sae.decode_sparse(code).reshape(B, T, d)
        (c,) = torch.autograd.grad(err, x, g)
    return c
