"""A span of transformer blocks run on a window of positions, the positions before it held
constant: what edge attribution differentiates, without the blocks or positions it never needs.

The blocks are called one by one (`bridge.blocks[L]`, the hook points inside them fire as in a
full forward), with the rotary embeddings of the window's positions. Attention reads the
positions before the window through a stand-in for the key-value cache: a first pass over the
prefix records each layer's keys and values, and the window's pass puts them in front of its
own. The prefix therefore enters as constants (nothing is differentiated through it), and the
window's outputs equal the same positions of a full forward, up to float rounding (causal
attention: a position never reads a later one).

This leans on TransformerBridge's attention honouring a `layer_past` keyword through its
`update(k, v, layer_idx)` call; `tests/circuits/test_edges.py` checks the result against the full
forward (the looped edge path).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from saelab.circuits.splice import SplicedModel, hooks


class PrefixKV:
    """Duck-typed cache: records each layer's keys and values (`record`), or puts the recorded
    ones in front of the window's (`replay`)."""

    def __init__(self) -> None:
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}
        self.replay = False

    def expand(self, rows: Tensor) -> None:
        """Switch to replay, with the recorded batch row `rows[i]` as row i."""
        self.kv = {i: (k[rows], v[rows]) for i, (k, v) in self.kv.items()}
        self.replay = True

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *args, **kwargs):
        if not self.replay:
            self.kv[layer_idx] = (k.detach(), v.detach())
            return k, v
        pk, pv = self.kv[layer_idx]
        return torch.cat([pk, k], dim=-2), torch.cat([pv, v], dim=-2)


def block_kwargs(spliced: SplicedModel, tokens: Tensor) -> dict:
    """The keywords a block receives in a full forward of prompts as long as `tokens` (one
    prompt suffices: nothing in them depends on the batch)."""
    seen: dict = {}

    def grab(module, args, kwargs):
        seen.update(kwargs)

    handle = spliced.bridge.blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            spliced.forward(tokens[:1], stop_at_layer=1)
    finally:
        handle.remove()
    if "position_embeddings" not in seen:
        raise RuntimeError("the blocks take no rotary position_embeddings keyword")
    return seen


def _window_kwargs(kw: dict, start: int, stop: int, cache: PrefixKV | None) -> dict:
    out = dict(kw)
    cos, sin = kw["position_embeddings"]
    out["position_embeddings"] = (cos[:, start:stop], sin[:, start:stop])
    for name in ("position_ids", "cache_position"):
        if isinstance(kw.get(name), Tensor):
            out[name] = kw[name][..., start:stop]
    out["attention_mask"] = None  # rebuilt causal, offset by the cached prefix
    out["cache"] = None
    out["use_cache"] = False
    out.pop("past_key_values", None)
    # the bridge's attention reads `past_key_values` or `layer_past`; transformers renames
    # the first to `cache` on the way into the block, so the second carries it
    out["layer_past"] = cache
    return out


def run_blocks(
    spliced: SplicedModel,
    hidden: Tensor,
    first: int,
    last: int,
    kw: dict,
    start: int,
    cache: PrefixKV | None,
    edits: dict[str, Callable[[Tensor], Tensor | None]],
) -> Tensor:
    """Blocks first..last on `hidden` `[B, P, d]` (the residual entering block `first` at
    positions start..start+P-1), with hook `edits` installed; returns the last block's output."""
    blocks = [spliced.bridge.blocks[i] for i in range(first, last + 1)]
    flags = [
        (b.__dict__.get("_stop_at_layer_idx"), b.__dict__.get("_start_at_layer_idx"))
        for b in blocks
    ]
    for b in blocks:
        b._stop_at_layer_idx = None
        b._start_at_layer_idx = None
    kwargs = _window_kwargs(kw, start, start + hidden.shape[1], cache)
    try:
        with hooks(spliced.bridge, edits):
            for block in blocks:
                out = block(hidden, **kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
    finally:
        for b, (stop, begin) in zip(blocks, flags):
            b._stop_at_layer_idx = stop
            b._start_at_layer_idx = begin
    return hidden
