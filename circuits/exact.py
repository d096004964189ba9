"""Exact node patching: the reference every node attribution is measured against, and the
re-scoring of the top attributed nodes (attribution patching ranks well but its size is off
where the metric bends: the AtP* paper's advice is to verify the top candidates exactly).

A node's exact effect is m(clean with that node alone moved to its patch value) − m(clean),
per prompt; the move is an additive change of the hook's output (Δf · W_dec[i] or Δε), so the
model after it runs unspliced. Several nodes run as one batch (one copy of the prompts each).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.circuits.attribution import PatchSide, metric_values, node_delta
from saelab.circuits.nodes import SUMMED, NodeKey
from saelab.circuits.splice import SplicedModel, SpliceState


def key_delta(
    spliced: SplicedModel, key: NodeKey, states: dict[str, SpliceState], sides: dict[str, PatchSide]
) -> Tensor:
    """The change `[B, T, d]` of the node's hook output that patches the node."""
    feature = None if key.is_error else key.feature
    pos = None if key.pos == SUMMED else key.pos
    return node_delta(spliced, key.hook, states[key.hook], sides[key.hook], feature, pos)


def exact_node_effects(
    spliced: SplicedModel,
    tokens: Tensor,
    metric,
    states: dict[str, SpliceState],
    sides: dict[str, PatchSide],
    keys: list[NodeKey],
    batch: int = 8,
    progress=None,
) -> Tensor:
    """Exact effect of patching each node alone, per prompt: `[len(keys), B]`."""
    B, T = tokens.shape
    base = metric_values(spliced, tokens, metric)
    out = []
    for start in range(0, len(keys), batch):
        chunk = keys[start : start + batch]
        n = len(chunk)
        deltas: dict[str, Tensor] = {}
        for j, key in enumerate(chunk):
            delta = deltas.setdefault(key.hook, torch.zeros(n * B, T, spliced.width(key.hook)))
            delta[j * B : (j + 1) * B] = key_delta(spliced, key, states, sides)
        edits = {h: (lambda x, dl=dl: x + dl) for h, dl in deltas.items()}
        values = metric_values(spliced, tokens.repeat(n, 1), metric, edits).view(n, B)
        out.append(values - base)
        if progress is not None:
            progress.update(n)
    return torch.cat(out) if out else torch.zeros(0, B)
