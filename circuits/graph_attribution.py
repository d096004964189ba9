"""The adjacency of an attribution graph: direct effects between the replacement model's nodes.

Rows are targets, columns sources, in circuit-tracer's order: latents, error nodes, token
embeddings, logits. A latent's row holds the direct effects of every source on its
pre-activation (its encoder row read at its layer and position, b_enc left out: a constant);
a logit's row those on the demeaned logit (its unembedding column minus the mean column, read
from the final normalised residual: circuit-tracer's convention; `demean=False` reads the raw
logit). Error nodes and embeddings have no incoming edges.

Every row comes from one batched backward of the frozen linear model
(`ReplacementModel.backward`). With `max_latents` below the number of active latents, rows are
computed for the most influential latents only, chosen as circuit-tracer chooses them: the
logit rows first, then rounds of the unvisited latents of highest influence on the logits
through the rows known so far; the latents never visited are left out of the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.circuits.graph_prune import normalize
from saelab.circuits.replacement import Nodes, ReplacementModel


@dataclass
class Graph:
    """An unpruned attribution graph of one prompt."""

    adjacency: Tensor
    """`[n, n]` direct effects (row target, column source); order: latents, errors,
    embeddings, logits."""
    nodes: Nodes
    """The graph's latents (those with rows) and error nodes."""
    selected: Tensor
    """Indices of the graph's latents among all active latents of the replacement model."""
    n_active: int
    """Active latents on the prompt (the graph keeps `len(selected)` of them)."""
    logit_tokens: Tensor
    logit_probs: Tensor
    demean: bool

    @property
    def n_latents(self) -> int:
        return int(self.selected.numel())

    @property
    def n_errors(self) -> int:
        return self.nodes.n_errors

    @property
    def n_pos(self) -> int:
        return self.nodes.n_pos

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.numel())

    @property
    def size(self) -> int:
        return int(self.adjacency.shape[0])

    def kinds(self) -> list[str]:
        """Each node's kind, in adjacency order."""
        return (
            ["latent"] * self.n_latents + ["error"] * self.n_errors
            + ["embedding"] * self.n_pos + ["logit"] * self.n_logits
        )  # fmt: skip

    def logit_weights(self) -> Tensor:
        """The targets' probabilities at the logit nodes, 0 elsewhere (influence's start)."""
        w = torch.zeros(self.size, dtype=self.adjacency.dtype)
        w[self.size - self.n_logits :] = self.logit_probs.to(w.dtype)
        return w


def encoder_rows(rm: ReplacementModel) -> Tensor:
    """Each active latent's encoder row `[n_latents, d]` (what its pre-activation reads)."""
    nodes = rm.nodes
    out = rm.decoder.new_zeros(nodes.n_latents, rm.decoder.shape[1])
    attn = nodes.is_attn()
    for layer in rm.transcoders:
        sel = ((nodes.layer == layer) & ~attn).nonzero().squeeze(1)
        if sel.numel():
            out[sel] = rm.encoder(layer).detach().to(out.dtype)[:, nodes.feature[sel]].t()
    for layer, sae in rm.attention_saes.items():  # pre-activation z · W_enc[:, i]
        sel = ((nodes.layer == layer) & attn).nonzero().squeeze(1)
        if sel.numel():
            out[sel] = sae.W_enc.detach().to(out.dtype)[:, nodes.feature[sel]].t()
    return out


def attribute(
    rm: ReplacementModel,
    targets: Tensor,
    probs: Tensor,
    demean: bool = True,
    max_latents: int = 0,
    batch_size: int = 128,
    progress: bool = True,
) -> Graph:
    """The graph's adjacency (see the module docstring); `max_latents` 0 = every latent."""
    nodes = rm.nodes
    n_lat, n_src, n_logit = nodes.n_latents, nodes.n_sources, int(targets.numel())
    n_pos = nodes.n_pos
    budget = n_lat if max_latents <= 0 else min(max_latents, n_lat)
    dirs = rm.unembed_direction(targets, demean)
    last = torch.full((n_logit,), n_pos - 1, dtype=torch.long)
    logit_rows = torch.cat([
        rm.backward(torch.full((len(chunk),), rm.n_layers, dtype=torch.long), last[: len(chunk)], chunk)
        for chunk in dirs.split(batch_size)
    ])  # fmt: skip
    enc = encoder_rows(rm)
    rows = logit_rows.new_zeros(budget, n_src)
    order: list[Tensor] = []  # latents in the order their rows were computed
    visited = torch.zeros(n_lat, dtype=torch.bool)
    bar = tqdm(total=budget, desc="graph rows", unit="latent", disable=not progress)
    done = 0
    while done < budget:
        if budget == n_lat:
            pending = torch.arange(n_lat)
        else:
            score = _partial_influence(
                torch.cat([logit_rows, rows[:done]]), probs, torch.cat(order) if order else None,
                n_lat,
            )  # fmt: skip
            rank = torch.argsort(score, descending=True)
            pending = rank[~visited[rank]][: min(4 * batch_size, budget - done)]
        # deepest layers first: a batch of one layer walks down from that layer only
        pending = pending[torch.argsort(nodes.layer[pending], descending=True, stable=True)]
        for chunk in pending.split(batch_size):
            attn = nodes.attn[chunk] if nodes.attn is not None else None
            out = rm.backward(nodes.layer[chunk], nodes.pos[chunk], enc[chunk], attn)
            rows[done : done + len(chunk)] = out
            order.append(chunk)
            visited[chunk] = True
            done += len(chunk)
            bar.update(len(chunk))
    bar.close()
    computed = torch.cat(order) if order else torch.zeros(0, dtype=torch.long)
    selected, by_latent = torch.sort(computed)
    rows = rows[by_latent]
    keep_cols = torch.cat([selected, torch.arange(n_lat, n_src)])
    size = budget + n_src - n_lat + n_logit
    adjacency = rows.new_zeros(size, size)
    adjacency[:budget, : size - n_logit] = rows[:, keep_cols]
    adjacency[size - n_logit :, : size - n_logit] = logit_rows[:, keep_cols]
    kept = Nodes(
        layer=nodes.layer[selected], pos=nodes.pos[selected], feature=nodes.feature[selected],
        activation=nodes.activation[selected], error_layer=nodes.error_layer,
        error_pos=nodes.error_pos, n_pos=n_pos,
        attn=None if nodes.attn is None else nodes.attn[selected], error_attn=nodes.error_attn,
    )  # fmt: skip
    return Graph(adjacency, kept, selected, n_lat, targets, probs, demean)


def _partial_influence(rows: Tensor, probs: Tensor, computed: Tensor | None, n_lat: int) -> Tensor:
    """Each latent's influence on the logits through the rows computed so far (logit rows
    first, then the latents `computed` in row order); latents without a row pass nothing on."""
    n_logit = probs.numel()
    norm = normalize(rows)
    # row r belongs to node row_node[r] in the latent index space (-1: a logit)
    row_node = torch.full((rows.shape[0],), -1, dtype=torch.long)
    if computed is not None:
        row_node[n_logit:] = computed
    weight = torch.zeros(rows.shape[0], dtype=rows.dtype)
    weight[:n_logit] = probs.to(rows.dtype)
    latent_row = torch.full((n_lat,), -1, dtype=torch.long)
    if computed is not None:
        latent_row[computed] = torch.arange(n_logit, rows.shape[0])
    influence = torch.zeros(rows.shape[1], dtype=rows.dtype)
    for _ in range(10_000):
        flow = weight @ norm
        if not flow.any():
            break
        influence += flow
        weight = torch.zeros_like(weight)
        has_row = latent_row >= 0
        weight[latent_row[has_row]] = flow[:n_lat][has_row]
    return influence[:n_lat]
