"""Nodes of a circuit: per-prompt effects aggregated (mean over prompts; per position or
summed over positions) and ranked."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saelab.circuits.attribution import HookEffects
from saelab.circuits.splice import hook_order

ERROR = -1
"""The `feature` of an error node."""
SUMMED = -1
"""The `pos` of a node summed over positions."""


@dataclass(frozen=True)
class NodeKey:
    hook: str
    feature: int
    """Latent index, or ERROR (-1) for the error node."""
    pos: int
    """Position, or SUMMED (-1) when summed over positions."""

    @property
    def is_error(self) -> bool:
        return self.feature == ERROR

    def label(self) -> str:
        from saelab.circuits.splice import hook_label

        what = "ε" if self.is_error else f"f{self.feature}"
        where = "" if self.pos == SUMMED else f"@{self.pos}"
        return f"{hook_label(self.hook)}/{what}{where}"


@dataclass
class Node:
    key: NodeKey
    effect: float
    """Mean over prompts of the node's attributed effect on the metric."""
    activation: float
    """Mean clean activation (features), or the error node's mean norm (summed nodes: summed
    over positions)."""


def aggregate(effects: dict[str, HookEffects], per_position: bool) -> list[Node]:
    """Every node with a non-zero effect, mean over prompts; sorted by |effect|, largest first."""
    nodes: list[Node] = []
    for hook, eff in effects.items():
        B = eff.error.shape[0]
        feat = eff.feature.coalesce()
        act = eff.activation.coalesce()
        if per_position:
            f_eff = torch.sparse.sum(feat, 0).coalesce()
            f_act = torch.sparse.sum(act, 0).coalesce() if act._nnz() else None
            act_map = _as_dict(f_act) if f_act is not None else {}
            for (t, i), v in _as_dict(f_eff).items():
                nodes.append(Node(NodeKey(hook, i, t), v / B, act_map.get((t, i), 0.0) / B))
            e_eff = eff.error.mean(0)
            for t in range(1, e_eff.shape[0]):
                norm = float(eff.error_norm[:, t].mean())
                nodes.append(Node(NodeKey(hook, ERROR, t), float(e_eff[t]), norm))
        else:
            f_eff = torch.sparse.sum(feat, (0, 1)).coalesce()
            f_act = torch.sparse.sum(act, (0, 1)).coalesce() if act._nnz() else None
            act_map = _as_dict(f_act) if f_act is not None else {}
            for (i,), v in _as_dict(f_eff).items():
                nodes.append(Node(NodeKey(hook, i, SUMMED), v / B, act_map.get((i,), 0.0) / B))
            norm = float(eff.error_norm[:, 1:].sum(1).mean())
            nodes.append(Node(NodeKey(hook, ERROR, SUMMED), float(eff.error.sum(1).mean()), norm))
    nodes = [n for n in nodes if n.effect != 0.0 or n.key.is_error]
    nodes.sort(key=lambda n: (-abs(n.effect), hook_order(n.key.hook), n.key.feature, n.key.pos))
    return nodes


def _as_dict(t) -> dict[tuple[int, ...], float]:
    idx = t.indices().T.tolist()
    vals = t.values().tolist()
    return {tuple(i): v for i, v in zip(idx, vals)}
