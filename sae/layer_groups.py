"""Layer groups (Ghilardi et al., Group-SAE): one SAE for a run of contiguous, similar layers.

The similarity of two layers is the mean, over tokens, of the angular similarity of their
activations at the same token: 1 - arccos(cos(x_i, x_j)) / pi (1: same direction, 0: opposite).
Layers are grouped by agglomerative clustering of the angular distance (1 - similarity) where
only neighbouring groups may merge, so every group is a contiguous run of layers. The merge
criterion is complete linkage (the largest distance between a member of one group and a member
of the other), and AMAD, the mean over groups of the largest distance inside a group, scores a
partition (the paper's guide for choosing the number of groups).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.base.errors import UserError

LINKAGES = ("complete", "average", "single")

_LAYER_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def angular_similarity_matrix(acts: Tensor, token_block: int = 4096) -> Tensor:
    """`[L, L]` mean angular similarity between layers from `acts` `[L, n_tokens, d]` (row n of
    every layer is the same token). Computed in float64: near cos = ±1 the arccos turns a
    float32 rounding of 1e-7 into an angle of 5e-4."""
    if acts.dim() != 3 or acts.shape[0] < 1 or acts.shape[1] < 1:
        raise UserError(
            f"layer activations must be [layers, tokens, d] with at least one of each, got "
            f"{list(acts.shape)}"
        )
    n_layers, n_tokens, _ = acts.shape
    total = torch.zeros(n_layers, n_layers, dtype=torch.float64)
    for start in range(0, n_tokens, token_block):
        block = acts[:, start : start + token_block].double()
        unit = block / block.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        cos = torch.einsum("lnd,mnd->nlm", unit, unit).clamp(-1.0, 1.0)
        total += (1.0 - torch.arccos(cos) / math.pi).sum(0)
    sim = total / n_tokens
    sim.fill_diagonal_(1.0)  # a layer is itself (arccos of a rounded 1 is not exactly 0)
    return sim


def contiguous_groups(
    distance: Tensor, n_groups: int, linkage: str = "complete"
) -> list[list[int]]:
    """Partition layers 0..L-1 into `n_groups` contiguous runs by agglomerative clustering of
    `distance` `[L, L]`, merging the closest neighbouring pair first (ties: the lower one)."""
    n = distance.shape[0]
    if distance.shape != (n, n):
        raise UserError(f"the distance matrix must be square, got {list(distance.shape)}")
    if not 1 <= n_groups <= n:
        raise UserError(f"the number of layer groups must be between 1 and {n}, got {n_groups}")
    if linkage not in LINKAGES:
        raise UserError(f"unknown linkage {linkage!r}: choose {', '.join(LINKAGES)}")
    d = distance.double()
    groups = [[i] for i in range(n)]
    while len(groups) > n_groups:
        costs = [_linkage(d, groups[i], groups[i + 1], linkage) for i in range(len(groups) - 1)]
        best = min(range(len(costs)), key=lambda i: (costs[i], i))
        groups[best : best + 2] = [groups[best] + groups[best + 1]]
    return groups


def _linkage(d: Tensor, a: list[int], b: list[int], how: str) -> float:
    block = d[a][:, b]
    if how == "complete":
        return float(block.max())
    if how == "single":
        return float(block.min())
    return float(block.mean())


def amad(distance: Tensor, groups: Sequence[Sequence[int]]) -> float:
    """Average Maximum Angular Distance: the mean over groups of the largest distance between
    two layers of the same group (0 for a single layer)."""
    d = distance.double()
    return sum(float(d[list(g)][:, list(g)].max()) for g in groups) / len(groups)


def layer_index(hook: str) -> tuple[int, str]:
    """(layer, hook point) of a `blocks.<layer>.<point>` hook name."""
    m = _LAYER_HOOK.match(hook)
    if not m:
        raise UserError(
            f"layer groups need hooks named blocks.<layer>.<point>, got {hook!r}; give the "
            "residual-stream hooks of consecutive layers, e.g. blocks.0.hook_resid_post,..."
        )
    return int(m.group(1)), m.group(2)


def check_layer_hooks(hooks: Sequence[str], store_hooks: Sequence[str] | None = None) -> None:
    """Refuse hooks that are not the same hook point of consecutive layers, in order (or that
    the store does not hold)."""
    if len(hooks) < 2:
        raise UserError(
            f"layer groups need the hooks of at least 2 consecutive layers, got {list(hooks)}"
        )
    if store_hooks is not None:
        missing = [h for h in hooks if h not in store_hooks]
        if missing:
            raise UserError(
                f"hook {missing[0]!r} is not in the store; it has: {', '.join(store_hooks)}"
            )
    layers, points = zip(*(layer_index(h) for h in hooks), strict=True)
    if len(set(points)) > 1:
        raise UserError(
            f"layer groups need one hook point for every layer, got {sorted(set(points))}; "
            "give e.g. only hook_resid_post hooks"
        )
    for i in range(1, len(hooks)):
        if layers[i] != layers[i - 1] + 1:
            raise UserError(
                f"layer groups need consecutive layers in order, but {hooks[i]!r} follows layer "
                f"{layers[i - 1]}; give blocks.{layers[i - 1] + 1}.{points[0]} next"
            )


@dataclass
class LayerGrouping:
    """The grouping of a run of layers: the similarity it came from and the groups."""

    hooks: list[str]
    """The hooks, in layer order."""
    similarity: list[list[float]]
    """Mean angular similarity `[L, L]` between the hooks' activations."""
    groups: list[list[str]]
    """The hooks of each group, contiguous, in order."""
    amad: float
    """Average Maximum Angular Distance of the groups."""
    tokens: int
    """Tokens (per layer) the similarity was measured on."""
    linkage: str = "complete"
    """How the distance between two groups was measured when merging."""

    def to_dict(self) -> dict:
        return {
            "hooks": self.hooks,
            "groups": self.groups,
            "amad": self.amad,
            "tokens": self.tokens,
            "linkage": self.linkage,
            "similarity": self.similarity,
        }


def read_layer_sample(loader_store: str, hooks: Sequence[str], tokens: int) -> Tensor:
    """`[L, n, d]` float32 activations of `hooks` at the same (masked) tokens: the first
    `tokens` training rows of the store's train split, chunk by chunk in store order."""
    from saelab.activations.loader import TEST_FRACTION, split_chunks
    from saelab.activations.store import ActivationStore

    store = ActivationStore(loader_store)
    chunks = split_chunks(store.committed_chunks(), "train", TEST_FRACTION)
    per_layer: list[list[Tensor]] = [[] for _ in hooks]
    have = 0
    for c in chunks:
        if have >= tokens:
            break
        keep = torch.from_numpy(store.token_mask(c).reshape(-1))
        for i, h in enumerate(hooks):
            rows = store.read_acts(h, c).reshape(-1, store.width(h))[keep]
            per_layer[i].append(rows[: tokens - have].float())
        have += len(per_layer[0][-1])
    if have == 0:
        raise UserError(f"store {loader_store!r} has no training tokens to measure layers on")
    return torch.stack([torch.cat(p) for p in per_layer])


def group_layers(
    acts: str, hooks: Sequence[str], n_groups: int, tokens: int = 8192, linkage: str = "complete"
) -> LayerGrouping:
    """Measure the layers' similarity on `tokens` training tokens of store `acts` and split the
    hooks into `n_groups` contiguous groups."""
    from saelab.activations.store import ActivationStore

    hooks = list(hooks)
    check_layer_hooks(hooks, list(ActivationStore(acts).hooks))
    if not 1 <= n_groups <= len(hooks):
        raise UserError(
            f"--layer-groups must be between 1 and the number of hooks ({len(hooks)}), "
            f"got {n_groups}"
        )
    sample = read_layer_sample(acts, hooks, tokens)
    sim = angular_similarity_matrix(sample)
    dist = 1.0 - sim
    groups = contiguous_groups(dist, n_groups, linkage)
    return LayerGrouping(
        hooks=hooks,
        similarity=sim.tolist(),
        groups=[[hooks[i] for i in g] for g in groups],
        amad=amad(dist, groups),
        tokens=int(sample.shape[1]),
        linkage=linkage,
    )
