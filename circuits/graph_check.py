"""Does the graph predict what intervening on a node does to the real model?

For a latent node s (activation a_s, decoder row W_dec,s, at layer L and position p), the real
model is run with nothing frozen and the latent's contribution changed at its MLP output:
`blocks.L.hook_mlp_out[p] += (f − 1) · a_s W_dec,s` (f = 0 ablates it, f = 2 doubles it). The
target's (demeaned, as in the graph) logit moves by Δ_real.

The graph's prediction Δ_graph is the node's total effect in the linear replacement model:
its contribution changes by (f − 1)·c_s, every later latent's pre-activation by the edges into
it, and each latent passes its change on in proportion (a TopK latent holding its selection
moves one for one with its pre-activation), down to the logit. Only latents carry the change
on: error nodes are constants of the graph, while in the real model the MLPs react too, and
attention patterns and norm scales move: the agreement measures how much that matters.

Pearson correlation and sign agreement over the nodes are what `agreement` reports.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.circuits.graph_attribution import Graph
from saelab.circuits.replacement import TARGET_HOOK, ReplacementModel, is_clt


@dataclass
class NodeCheck:
    """One latent node's predicted and measured effect on one target logit."""

    node: int
    """Index among the graph's latents."""
    layer: int
    pos: int
    direct: float
    """The edge's prediction alone (no path through other latents)."""
    predicted: float
    """The total effect in the graph (direct and through later latents)."""
    measured: float
    """The change of the real model's target logit."""


@dataclass
class Agreement:
    """Predicted against measured effects over many nodes."""

    checks: list[NodeCheck]
    factor: float
    """The contribution was multiplied by this (0: ablation)."""
    freeze: str
    """What the real model held at the clean prompt's values (see FREEZES)."""
    pearson: float
    """Pearson correlation of predicted (total) and measured effects."""
    pearson_direct: float
    """The same for the direct effect alone."""
    sign_agreement: float
    """Share of nodes whose predicted and measured effects have the same sign."""


def total_effects(graph: Graph, target: int) -> tuple[Tensor, Tensor]:
    """(direct, total) effect on logit `target` (its index among the graph's logits) of
    removing each latent's whole contribution, as a `[n_latents]` pair (change per unit
    change of the contribution's scale, so removing it moves the logit by −effect)."""
    n = graph.n_latents
    a = graph.adjacency.double()
    act = graph.nodes.activation.double()
    row = a[graph.size - graph.n_logits + target, :n]
    lat = a[:n, :n]
    layers = graph.nodes.layer
    # rel[t, s]: relative change of latent t's contribution when s's contribution scales by 1
    rel = torch.zeros(n, n, dtype=torch.float64)
    rel[torch.arange(n), torch.arange(n)] = 1.0
    for layer in torch.unique(layers).tolist():
        idx = (layers == layer).nonzero().squeeze(1)
        rel[idx] += (lat[idx] @ rel) / act[idx, None].clamp(min=1e-12)
    return row, row @ rel


FREEZES = ("none", "attention", "attention+norms", "all")
"""What the real model holds at the clean prompt's values while a node is changed: nothing;
the attention patterns (circuit-tracer's default for interventions); those and the norm
scales (the real MLPs then are all that differs from the graph); or everything the graph
freezes (patterns, norm scales, MLPs as transcoders with their clean active latents and errors),
which makes the real model the graph's own linear model: predicted = measured (tested)."""


@torch.no_grad()
def measure(
    model, rm: ReplacementModel, graph: Graph, nodes: Tensor, target: int, factor: float,
    demean: bool, batch_size: int = 16, freeze: str = "none",
) -> Tensor:  # fmt: skip
    """The real model's change of the target logit when each latent in `nodes` (indices among
    the graph's latents) has its contribution multiplied by `factor`, one row per node, with
    `freeze` (see FREEZES) held at the clean prompt's values."""
    from saelab.circuits.splice import hooks

    if freeze not in FREEZES:
        raise ValueError(f"freeze must be one of {FREEZES}, got {freeze!r}")
    tokens = torch.tensor([rm.frozen.tokens], device=model.device)
    token = int(graph.logit_tokens[target])
    clean = _read(rm.frozen.logits[-1].double(), token, demean)
    dec = rm.decoder[graph.selected].to(torch.float32)
    out = []
    for chunk in nodes.split(batch_size):
        node_edits = _node_edits(rm, graph, chunk, factor, dec)
        edits = _freezes(rm, freeze, node_edits)
        with hooks(model.bridge, edits), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the norm bridge's note that a hooked scale is used
            logits = model.bridge(tokens.expand(len(chunk), -1), return_type="logits")
        out.append(torch.stack([_read(lg[-1].double(), token, demean) for lg in logits]) - clean)
    return torch.cat(out)


def _node_edits(rm: ReplacementModel, graph: Graph, chunk: Tensor, factor: float, dec: Tensor):
    """Layer → (batch rows, positions, change of the MLP output) when each latent of `chunk`
    (batch row b: the chunk's b-th latent) has its contribution scaled by `factor`: at its own
    layer, and for a CLT latent at every later layer it writes to."""
    layers = [graph.nodes.layer[chunk]]
    pos = [graph.nodes.pos[chunk]]
    rows = [torch.arange(len(chunk))]
    delta = [(factor - 1) * dec[chunk]]
    if len(rm.cross):
        batch_row = torch.full((rm.nodes.n_latents,), -1, dtype=torch.long)
        batch_row[graph.selected[chunk]] = torch.arange(len(chunk))
        b = batch_row[rm.cross_latent]
        hit = b >= 0
        layers.append(rm.cross_layer[hit])
        pos.append(rm.nodes.pos[rm.cross_latent[hit]])
        rows.append(b[hit])
        delta.append((factor - 1) * rm.cross[hit].to(torch.float32))
    layer_t, pos_t, rows_t, delta_t = (torch.cat(t) for t in (layers, pos, rows, delta))
    edits: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
    for layer in torch.unique(layer_t).tolist():
        at = (layer_t == layer).nonzero().squeeze(1)
        edits[layer] = (rows_t[at], pos_t[at], delta_t[at])
    return edits


def _freezes(rm: ReplacementModel, freeze: str, node_edits: dict) -> dict:
    """Hook edits: each node's change at its MLP output, and what `freeze` holds."""
    fp = rm.frozen
    captured: dict[int, Tensor] = {}
    edits = {}

    def const(value: Tensor):
        return lambda act: value.to(act.dtype).expand_as(act).clone()

    if freeze != "none":
        for layer in range(rm.n_layers):
            edits[f"blocks.{layer}.attn.hook_pattern"] = const(fp.pattern[layer])
    if freeze in ("attention+norms", "all"):
        edits["ln_final.hook_scale"] = const(fp.scale_final)
        for layer in range(rm.n_layers):
            edits[f"blocks.{layer}.ln1.hook_scale"] = const(fp.scale1[layer])
            edits[f"blocks.{layer}.ln2.hook_scale"] = const(fp.scale2[layer])
    if freeze == "all":
        for layer in range(rm.n_layers):

            def capture(act, layer=layer):
                captured[layer] = act

            edits[f"blocks.{layer}.ln2.hook_normalized"] = capture
    for layer in range(rm.n_layers):
        node = node_edits.get(layer)
        if freeze != "all" and node is None:
            continue

        def edit(act, layer=layer, node=node):
            if freeze == "all":
                act = fp.mlp_out[layer].to(act.dtype).expand_as(act).clone()
                act += _transcoder_change(rm, layer, captured).to(act.dtype)
            else:
                act = act.clone()
            if node is not None:
                rows, at, add = node
                act[rows, at] += add.to(act.dtype)
            return act

        edits[TARGET_HOOK.format(layer=layer)] = edit
    return edits


def _transcoder_change(rm: ReplacementModel, layer: int, captured: dict[int, Tensor]) -> Tensor:
    """How layer `layer`'s transcoder output moves when the inputs go from the clean ones to
    `captured[l]` `[B, T, d]`, the active latents held (ReLU of their pre-activations), BOS
    kept; for a CLT, the latents of every source layer up to `layer` that write to it."""
    x_new = captured[layer]
    tc = rm.transcoders.get(layer)
    change = torch.zeros_like(x_new)
    if tc is None:
        return change
    x_clean = rm.frozen.mlp_in[layer].to(x_new.dtype)
    change += rm.skip(layer, x_new) - rm.skip(layer, x_clean)
    first = rm.first
    sources = [src for src in getattr(tc, "layers", [layer]) if src <= layer]
    for src in sources if is_clt(tc) else [layer]:
        code = rm._encode(src, rm.frozen.mlp_in[src, first:])
        live = code.vals != 0
        w_enc = rm.encoder(src).detach().to(x_new.dtype)[:, code.idx]  # [d, T', k]
        b_enc = rm.encoder_bias(src).detach().to(x_new.dtype)[code.idx]
        pre = torch.einsum("btd,dtk->btk", captured[src][:, first:].to(x_new.dtype), w_enc) + b_enc
        moved = (pre.relu() - code.vals.to(x_new.dtype)) * live
        w_dec = rm._decoder(src, layer).detach().to(x_new.dtype)[code.idx]
        change[:, first:] += torch.einsum("btk,tkd->btd", moved, w_dec)
    return change


def _read(logits: Tensor, token: int, demean: bool) -> Tensor:
    return logits[token] - logits.mean() if demean else logits[token]


def agreement(
    model, rm: ReplacementModel, graph: Graph, n_nodes: int = 60, factor: float = 0.0,
    target: int = 0, freeze: str = "none",
) -> Agreement:  # fmt: skip
    """Predicted against measured effects of the `n_nodes` latents of largest |total effect|
    on target logit `target` (see the module docstring)."""
    if graph.nodes.is_attn().any():
        raise UserError(
            "the intervention check edits MLP outputs and does not cover attention-SAE latents "
            "yet: build the graph to check without attention_saes"
        )
    direct, total = total_effects(graph, target)
    order = torch.argsort(total.abs(), descending=True)[:n_nodes]
    measured = measure(model, rm, graph, order, target, factor, graph.demean, freeze=freeze)
    scale = factor - 1
    checks = [
        NodeCheck(
            int(i),
            int(graph.nodes.layer[i]),
            int(graph.nodes.pos[i]),
            float(scale * direct[i]),
            float(scale * total[i]),
            float(m),
        )  # fmt: skip
        for i, m in zip(order.tolist(), measured.tolist(), strict=True)
    ]
    pred = torch.tensor([c.predicted for c in checks], dtype=torch.float64)
    pred_direct = torch.tensor([c.direct for c in checks], dtype=torch.float64)
    real = torch.tensor([c.measured for c in checks], dtype=torch.float64)
    signs = float(((pred > 0) == (real > 0)).double().mean()) if checks else math.nan
    return Agreement(
        checks, factor, freeze, _pearson(pred, real), _pearson(pred_direct, real), signs
    )


def _pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation over the pairs where both values are finite."""
    ok = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    return float((x @ y) / denom) if denom > 0 else math.nan
