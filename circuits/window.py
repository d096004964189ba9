"""A span of transformer blocks run on a window of positions, the positions before it held
constant: what edge attribution differentiates, without the blocks or positions it never needs.

The blocks are called one by one (`bridge.blocks[L]`, the hook points inside them fire as in a
full forward), with the rotary embeddings of the window's positions. Attention reads the
positions before the window through a stand-in for the key-value cache: a first pass over the
prefix records each layer's keys and values, and the window's pass puts them in front of its
own. The prefix therefore enters as constants (nothing is differentiated through it), and the
window's outputs equal the same positions of a full forward, up to float rounding (causal
attention: a position never reads a later one).

This leans on the blocks taking rotary `position_embeddings` (not learned absolute positions, as
GPT-2's) and on TransformerBridge's attention honouring a `layer_past` keyword through its
`update(k, v, layer_idx)` call. `supported` checks both on block 0 before the fast edge path
runs (`edge_effects` takes the per-node loop where they fail); `tests/circuits/test_edges_fast.py`
checks the result against the full forward (the looped edge path).
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
    seen = _first_block(spliced, tokens[:1])[0]
    if "position_embeddings" not in seen:
        raise RuntimeError("the blocks take no rotary position_embeddings keyword")
    return seen


def _first_block(spliced: SplicedModel, tokens: Tensor) -> tuple[dict, Tensor, Tensor]:
    """Block 0's keywords, its input and the residual after it, in a forward of `tokens`."""
    seen: dict = {}
    hidden: list[Tensor] = []

    def grab(module, args, kwargs):
        seen.update(kwargs)
        hidden.append(args[0] if args else kwargs["hidden_states"])

    handle = spliced.bridge.blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            out = spliced.forward(tokens, stop_at_layer=1)[0]
    finally:
        handle.remove()
    return seen, hidden[0], out


def supported(spliced: SplicedModel, tokens: Tensor) -> str | None:
    """None where the window forward reproduces this model's full forward, else why not.

    Checked on block 0 and one prompt's first tokens (8 at most), split into a cached prefix
    and a window: the blocks must take rotary `position_embeddings`, the attention must record
    the prefix's keys and values in a `PrefixKV`, and the window's output must equal the same
    positions of a full forward."""
    probe = tokens[:1, :8]
    s = probe.shape[1] // 2
    cache = PrefixKV() if s else None
    try:
        kw, hidden, full = _first_block(spliced, probe)
        if "position_embeddings" not in kw:
            return "the blocks take no rotary position_embeddings keyword"
        full = full[:, s:]
        with torch.no_grad():
            if cache is not None:
                run_blocks(spliced, hidden[:, :s], 0, 0, kw, 0, cache, {})
                if not cache.kv:
                    return "the attention reads no key-value cache through `layer_past`"
                cache.expand(torch.zeros(1, dtype=torch.long))
            out = run_blocks(spliced, hidden[:, s:], 0, 0, kw, s, cache, {})
    except Exception as e:  # noqa: BLE001 - any failure means: not this model
        return f"the window forward fails ({type(e).__name__}: {e})"
    tol = max(1e-3, 16 * torch.finfo(full.dtype).eps) * float(full.abs().max())
    if out.shape != full.shape or float((out - full).abs().max()) > tol:
        return "the window forward differs from the full forward"
    return None


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
