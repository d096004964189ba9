"""The DiffMean baseline: the mean activation of positive prompts minus that of negative ones, at
the same hook the SAE reads, over every token but BOS. Steering adds a multiple of it, in the same
harness as a feature direction, so each feature result sits beside this simple baseline."""

from __future__ import annotations

import re
import warnings

import torch
from torch import Tensor

from saelab.steering.metrics import _capture

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@torch.no_grad()
def hook_activations(bridge, hook: str, ids: Tensor) -> Tensor:
    """The hook's activation on token ids `[n, p]`; the forward stops after the hook's block
    (the DiffMean vector needs nothing later, and the rest of the model is most of the cost)."""
    match = _BLOCK.match(hook)
    stop = int(match.group(1)) + 1 if match else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, cache = bridge.run_with_cache(
            ids, names_filter=[hook], stop_at_layer=stop, return_cache_object=False
        )
    return cache[hook]


@torch.no_grad()
def mean_activation(bridge, hook: str, prompts: list[Tensor]) -> Tensor:
    """Mean of the hook's activation over the tokens (BOS excluded) of prompts with BOS, float64."""
    total, count = None, 0
    for ids in prompts:
        got: dict = {}
        with _capture(bridge, hook, got):
            bridge(ids.reshape(1, -1), return_type="logits")
        h = got["h"][0, 1:].double()
        total = h.sum(0) if total is None else total + h.sum(0)
        count += h.shape[0]
    if not count:
        raise ValueError("DiffMean needs prompts with at least one token after BOS")
    return total / count


def diffmean_vector(bridge, hook: str, positive: list[Tensor], negative: list[Tensor]) -> Tensor:
    """mean(positive) − mean(negative), `[d]` float32."""
    diff = mean_activation(bridge, hook, positive) - mean_activation(bridge, hook, negative)
    return diff.float()


@torch.no_grad()
def diffmean_from_windows(bridge, hook: str, windows: list, bos: int) -> Tensor:
    """DiffMean from a latent's stored windows (`FeatureExampleRow`s): tokens where it fired
    (stored activation > 0) minus tokens where it was 0, each window re-run from BOS (so with less
    context than when harvested: a baseline, not a reproduction)."""
    sums = {True: None, False: None}
    counts = {True: 0, False: 0}
    by_length: dict[int, list] = {}  # windows of one length run as one batch
    for w in windows:
        by_length.setdefault(len(w.tokens), []).append(w)
    for group in by_length.values():
        ids = torch.tensor([[bos] + list(w.tokens) for w in group])
        acts = hook_activations(bridge, hook, ids)[:, 1:].double()
        for h, w in zip(acts, group):
            active = torch.as_tensor(w.acts) > 0
            for side, mask in ((True, active), (False, ~active)):
                if mask.any():
                    part = h[mask].sum(0)
                    sums[side] = part if sums[side] is None else sums[side] + part
                    counts[side] += int(mask.sum())
    if not counts[True] or not counts[False]:
        raise ValueError("DiffMean needs tokens where the latent fired and tokens where it did not")
    return (sums[True] / counts[True] - sums[False] / counts[False]).float()
