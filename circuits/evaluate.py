"""Evaluating circuits: faithfulness and completeness curves, and measured edges.

Faithfulness(C) = (m(C) − m(∅)) / (m(M) − m(∅)), where m(C) runs the model with every node
outside C ablated (C's nodes are computed normally, so they respond to the ablations upstream of
them) and the metric is the mean over prompts. Completeness uses the complement M∖C (only C's
nodes ablated; near 0 = C is complete). Ablation values: the store mean, zero, or the node's
value on another prompt of the task (resample, a seeded derangement of the prompts).

Error nodes follow an explicit policy:
- `ablate`: an error node is a node like any other, ablated unless it is in the circuit;
- `keep`: error nodes are never ablated (not ranked; present in C, ∅ and M∖C);
- `remove`: error nodes are always ablated (not ranked; the "full model" M is then all
  features with every error ablated).
Position 0 (BOS) is never ablated.

Edges are evaluated against measurement: for an edge u → d, patch u (to its patch value) with
every spliced hook between the two frozen at its clean output, read d's new value, then patch d
alone to that value and measure the metric's change. That is the direct effect the edge
attribution linearises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.circuits.attribution import HookStats, PatchSide, metric_values, node_delta
from saelab.circuits.edges import Edge, dense_features, down_delta
from saelab.circuits.nodes import ERROR, SUMMED, Node, NodeKey
from saelab.circuits.splice import SplicedModel, SpliceState, hook_order

ABLATIONS = ("task-mean", "mean", "zero", "resample")
ERROR_POLICIES = ("ablate", "keep", "remove")


@dataclass
class TaskMeans:
    """Means over a task's prompts at one hook, per position (the SFC paper's ablation)."""

    features: Tensor
    """Mean activation of every latent at every position `[T, d_sae]`."""
    x_hat: Tensor
    """Mean reconstruction `[T, d]` (= decode of `features`)."""
    err: Tensor
    """Mean error node `[T, d]`."""


def task_means(spliced: SplicedModel, tokens: Tensor) -> dict[str, TaskMeans]:
    """Per-hook, per-position means of the SAE states over `tokens` (each prompt encoded with
    its own selection)."""
    _, states, _ = spliced.run_spliced(tokens)
    out = {}
    for hook, st in states.items():
        B, T, d = st.x.shape
        d_sae = spliced.saes[hook].d_sae
        rows = torch.arange(B * T).unsqueeze(1).expand_as(st.idx) % T
        dense = torch.zeros(T, d_sae, dtype=torch.float64)
        dense.index_put_((rows.reshape(-1), st.idx.reshape(-1)), st.vals.double().reshape(-1),
                         accumulate=True)  # fmt: skip
        out[hook] = TaskMeans(
            (dense / B).float(), st.x_hat.double().mean(0).float(), st.err.double().mean(0).float()
        )
    return out


@dataclass
class Ablation:
    """Where ablated nodes go: the task's per-position means, store means, zero, or another
    prompt's values."""

    kind: str
    stats: dict[str, HookStats] | None = None
    resample: dict[str, SpliceState] | None = None
    means: dict[str, TaskMeans] | None = None

    def base(self, spliced: SplicedModel, hook: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂, ε) with every node of the hook ablated."""
        sae = spliced.saes[hook]
        if self.kind == "zero":
            return sae.b_dec.detach().expand_as(x), torch.zeros_like(x)
        if self.kind == "mean":
            st = self.stats[hook]
            return (st.x_mean - st.error_mean).expand_as(x), st.error_mean.expand_as(x)
        if self.kind == "task-mean":
            tm = self.means[hook]
            return tm.x_hat.expand_as(x), tm.err.expand_as(x)
        rs = self.resample[hook]
        return rs.x_hat, rs.err

    def features(self, hook: str, ids: Tensor, shape: tuple[int, int]) -> Tensor:
        """Ablated values `[B, T, F]` of the latents `ids`."""
        B, T = shape
        if self.kind == "zero":
            return torch.zeros(B, T, len(ids))
        if self.kind == "mean":
            return self.stats[hook].feature_mean[ids].expand(B, T, -1)
        if self.kind == "task-mean":
            return self.means[hook].features[:, ids].expand(B, T, -1)
        rs = self.resample[hook]
        return dense_features(rs.idx, rs.vals, ids).view(B, T, -1)


def make_ablation(
    kind: str,
    spliced: SplicedModel,
    tokens: Tensor,
    stats=None,
    seed: int = 0,
    patch: Tensor | None = None,
) -> Ablation:
    """The ablation `kind` for a task on `tokens` (task-mean: means over its `patch` prompts,
    or over `tokens` when it has none)."""
    if kind not in ABLATIONS:
        raise UserError(f"unknown ablation {kind!r}: choose {', '.join(ABLATIONS)}")
    if kind == "task-mean":
        return Ablation(kind, means=task_means(spliced, tokens if patch is None else patch))
    if kind == "mean":
        if stats is None:
            raise UserError("mean ablation needs an activation store holding every spliced hook")
        return Ablation(kind, stats=stats)
    if kind == "resample":
        n = tokens.shape[0]
        if n < 2:
            raise UserError("resample ablation needs at least 2 prompts")
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g)
        perm = torch.where(perm == torch.arange(n), (perm + 1) % n, perm)  # no prompt keeps itself
        _, states, _ = spliced.run_spliced(tokens[perm])
        return Ablation(kind, resample=states)
    return Ablation(kind)


@dataclass
class NodeSet:
    """Per hook: kept (or ablated) latents × positions, and error positions."""

    feats: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    """hook → (latent ids `[F]`, mask `[T, F]`)."""
    errors: dict[str, Tensor] = field(default_factory=dict)
    """hook → bool `[T]`."""

    @staticmethod
    def everything(spliced: SplicedModel, T: int) -> NodeSet:
        """Every latent and every error node at every position of every hook."""
        out = NodeSet()
        for hook, sae in spliced.saes.items():
            out.feats[hook] = (torch.arange(sae.d_sae), torch.ones(T, sae.d_sae))
            out.errors[hook] = torch.ones(T, dtype=torch.bool)
        return out

    @staticmethod
    def count(spliced: SplicedModel, T: int, per_position: bool = True) -> int:
        """Nodes of the whole graph: d_sae + 1 per hook and position (BOS left out), or per
        hook when nodes are summed over positions."""
        per_hook = T - 1 if per_position else 1
        return sum((sae.d_sae + 1) * per_hook for sae in spliced.saes.values())

    @staticmethod
    def build(keys: list[NodeKey], hooks: list[str], T: int) -> NodeSet:
        out = NodeSet()
        for hook in hooks:
            mine = [k for k in keys if k.hook == hook]
            ids = list(dict.fromkeys(k.feature for k in mine if k.feature != ERROR))
            col = {f: i for i, f in enumerate(ids)}
            mask = torch.zeros(T, len(ids))
            err = torch.zeros(T, dtype=torch.bool)
            for k in mine:
                rows = slice(1, None) if k.pos == SUMMED else slice(k.pos, k.pos + 1)
                if k.feature == ERROR:
                    err[rows] = True
                else:
                    mask[rows, col[k.feature]] = 1
            out.feats[hook] = (torch.tensor(ids, dtype=torch.long), mask)
            out.errors[hook] = err
        return out


def ablation_edits(
    spliced: SplicedModel, nodes: NodeSet, abl: Ablation, keep_only: bool, errors: str
) -> dict:
    """Hook edits that ablate everything outside `nodes` (keep_only) or only `nodes`."""

    def make(hook: str):
        sae = spliced.saes[hook]
        ids, mask = nodes.feats[hook]
        err_sel = nodes.errors[hook]

        def edit(x: Tensor) -> Tensor:
            B, T, d = x.shape
            idx, vals, x_hat = spliced.encode(hook, x)
            err = x - x_hat
            base_hat, base_err = abl.base(spliced, hook, x)
            W = sae.W_dec.detach()[ids]
            f_cur = dense_features(idx, vals, ids).view(B, T, -1)
            moved = (f_cur - abl.features(hook, ids, (B, T))) * mask
            if keep_only:
                new_hat = base_hat + moved @ W
                keep_err = err_sel
            else:
                new_hat = x_hat - moved @ W
                keep_err = ~err_sel
            if errors == "keep":
                keep_err = torch.ones_like(keep_err)
            elif errors == "remove":
                keep_err = torch.zeros_like(keep_err)
            new_err = torch.where(keep_err.view(1, T, 1), err, base_err)
            out = new_hat + new_err
            out[:, 0] = x[:, 0]
            return out

        return edit

    return {h: make(h) for h in spliced.hooks}


@dataclass
class CurvePoint:
    n_nodes: int
    faithfulness: float
    completeness: float
    m_circuit: float
    m_complement: float
    everything: bool = False
    """The point that keeps every node of the graph (n_nodes is then the graph's size)."""


@dataclass
class Curves:
    ablation: str
    error_policy: str
    m_full: float
    m_empty: float
    points: list[CurvePoint]


def rankable(nodes: list[Node], errors: str) -> list[Node]:
    """Nodes ranked for circuits: error nodes compete only under the `ablate` policy."""
    return [n for n in nodes if errors == "ablate" or not n.key.is_error]


def default_sizes(total: int) -> list[int]:
    sizes = [0]
    for decade in (1, 10, 100, 1000, 10000, 100000):
        sizes += [s * decade for s in (1, 2, 5)]
    return sorted({s for s in sizes if s <= total} | {total})


def curves(
    spliced: SplicedModel,
    tokens: Tensor,
    metric,
    nodes: list[Node],
    abl: Ablation,
    errors: str = "ablate",
    sizes: list[int] | None = None,
    progress=None,
    per_position: bool = True,
) -> Curves:
    """Faithfulness and completeness of the top-n nodes for each n in `sizes`, then (unless
    errors are removed) of every node of the graph (`per_position`: how its nodes are
    counted)."""
    if errors not in ERROR_POLICIES:
        raise UserError(f"unknown error-node policy {errors!r}: choose {', '.join(ERROR_POLICIES)}")
    ranked = rankable(nodes, errors)
    T = tokens.shape[1]
    sizes = default_sizes(len(ranked)) if sizes is None else sizes

    def m(keys: list[NodeKey] | NodeSet, keep_only: bool) -> float:
        ns = keys if isinstance(keys, NodeSet) else NodeSet.build(keys, spliced.hooks, T)
        edits = ablation_edits(spliced, ns, abl, keep_only, errors)
        values = metric_values(spliced, tokens, metric, edits)
        return float(values.mean())

    m_full = (
        m(NodeSet.everything(spliced, T), True)  # every feature kept, every error ablated
        if errors == "remove"
        else float(metric_values(spliced, tokens, metric).mean())
    )
    m_empty = m([], True)
    denom = m_full - m_empty
    points = []
    for n in sizes:
        keys = [x.key for x in ranked[:n]]
        mc, mk = m(keys, True), m(keys, False)
        faith = (mc - m_empty) / denom if denom != 0 else math.nan
        comp = (mk - m_empty) / denom if denom != 0 else math.nan
        points.append(CurvePoint(n, faith, comp, mc, mk))
        if progress is not None:
            progress.update(1)
    if errors != "remove":  # every node kept: the spliced model is the model (faithfulness 1)
        mc = m(NodeSet.everything(spliced, T), True)
        faith = (mc - m_empty) / denom if denom != 0 else math.nan
        n_all = NodeSet.count(spliced, T, per_position)
        points.append(CurvePoint(n_all, faith, 0.0, mc, m_empty, everything=True))
        if progress is not None:
            progress.update(1)
    return Curves(abl.kind, errors, m_full, m_empty, points)


# -- edges -----------------------------------------------------------------------------------


@dataclass
class EdgeCheck:
    edge: Edge
    measured: float
    switched: float | None = None
    """Latents per prompt that re-selection would turn on at the downstream node's hook and
    position(s) under the upstream patch (None when the selection is re-run)."""


def measure_edges(
    spliced: SplicedModel,
    tokens: Tensor,
    metric,
    states: dict[str, SpliceState],
    sides: dict[str, PatchSide],
    edges: list[Edge],
    progress=None,
) -> list[EdgeCheck]:
    """The measured direct-path effect of each edge (two patched forwards per edge)."""
    base = metric_values(spliced, tokens, metric)
    out = []
    for edge in edges:
        up, down = edge.up, edge.down
        a, b = up.hook, down.hook
        feature = None if up.feature == ERROR else up.feature
        pos = None if up.pos == SUMMED else up.pos
        delta = node_delta(spliced, a, states[a], sides[a], feature, pos)
        raw: dict[str, Tensor] = {}
        edits = {a: (lambda x, delta=delta: x + delta)}
        for h in spliced.hooks:
            if hook_order(a) < hook_order(h) < hook_order(b):
                edits[h] = lambda x, h=h: states[h].out.detach()
        edits[b] = lambda x, raw=raw: raw.setdefault("x", x)
        with torch.no_grad():
            spliced.forward(tokens, edits, stop_at_layer=_stop(spliced, b))
            d_delta = down_delta(spliced, b, states[b], raw["x"], down)
            after = metric_values(spliced, tokens, metric, {b: lambda x, d=d_delta: x + d})
            switched = spliced.switched(b, raw["x"])
        rows = slice(1, None) if down.pos == SUMMED else slice(down.pos, down.pos + 1)
        count = None if switched is None else float(switched[:, rows].sum(1).mean())
        out.append(EdgeCheck(edge, float((after - base).mean()), count))
        if progress is not None:
            progress.update(1)
    return out


def _stop(spliced: SplicedModel, hook: str) -> int | None:
    stop = hook_order(hook)[0] + 1
    return None if stop >= spliced.model.n_layers else stop


def pearson(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return math.nan
    x = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(ys, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = x.norm() * y.norm()
    return float((x @ y) / denom) if denom > 0 else math.nan
