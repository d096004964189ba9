"""The hand-written window backward (circuits/window_vjp.py) against autograd through the
bridge's own blocks (`window.run_blocks`), and its forward against the bridge's."""

from __future__ import annotations

import pytest
import torch

from saelab.circuits.splice import hook_order
from saelab.circuits.window import PrefixKV, block_kwargs, run_blocks
from saelab.circuits.window_vjp import LlamaWindow, sites

START = 3  # the window's first position: positions 0..2 are the cached prefix


def _entering(spliced, tokens, layer: int):
    with torch.no_grad():
        return spliced.forward(tokens, stop_at_layer=layer)[0]


def _bridge_grads(spliced, tokens, a: str, b: str, frozen_hooks, C_full):
    """J^T C through the bridge's blocks by autograd (C_full `[S, B, P, d]`, batched), leaf at
    a's output on positions START.., the hooks in `frozen_hooks` detached."""
    layer, place = hook_order(a)
    inside = place != hook_order("blocks.0.hook_resid_post")[1]
    first = layer if inside else layer + 1
    last = hook_order(b)[0]
    kw = block_kwargs(spliced, tokens)
    hidden = _entering(spliced, tokens, first)
    cache = PrefixKV()
    with torch.no_grad():
        run_blocks(spliced, hidden[:, :START], first, last, kw, 0, cache, {})
    cache.expand(torch.arange(len(tokens)))
    raw = {}
    if inside:
        with torch.no_grad():  # a's own value on the window, as the leaf
            seen = {}
            run_blocks(
                spliced,
                hidden[:, START:],
                first,
                last,
                kw,
                START,
                cache_copy(cache),
                {a: lambda x: seen.setdefault("a", x)},
            )
        leaf = seen["a"].detach().clone().requires_grad_(True)
        edits = {a: lambda x: leaf}
        start_hidden = hidden[:, START:]
    else:
        leaf = hidden[:, START:].clone().requires_grad_(True)
        edits = {}
        start_hidden = leaf
    for h in frozen_hooks:
        edits[h] = lambda x: x.detach()

    def grab(x):
        raw["b"] = x

    edits[b] = grab
    with torch.enable_grad():
        run_blocks(spliced, start_hidden, first, last, kw, START, cache, edits)
        (G,) = torch.autograd.grad(raw["b"], leaf, C_full, is_grads_batched=True)
    return G, hidden, kw, first, last


def cache_copy(cache: PrefixKV) -> PrefixKV:
    out = PrefixKV()
    out.kv, out.replay = dict(cache.kv), cache.replay
    return out


PAIRS = [
    ("blocks.1.hook_resid_post", "blocks.3.hook_resid_post", []),
    ("blocks.1.hook_resid_post", "blocks.2.hook_mlp_out", ["blocks.2.hook_attn_out"]),
    ("blocks.1.hook_resid_post", "blocks.2.hook_attn_out", []),
    ("blocks.2.hook_attn_out", "blocks.3.hook_resid_post", ["blocks.2.hook_mlp_out"]),
    ("blocks.2.hook_attn_out", "blocks.2.hook_mlp_out", []),
    ("blocks.2.hook_mlp_out", "blocks.4.hook_attn_out", ["blocks.3.hook_mlp_out"]),
]


@pytest.mark.parametrize("a,b,frozen", PAIRS)
def test_vjp_equals_autograd_through_the_bridge(model, sva_small, a, b, frozen):
    """Random seeds on rows that repeat and skip prompts, a window of several positions after
    a 3-token prefix that differs between prompts, frozen branches between a and b."""
    from saelab.circuits.splice import SplicedModel

    spliced = SplicedModel(model, {})
    tokens = sva_small.clean
    B, T = tokens.shape
    P = T - START
    assert P > 1 and len(torch.unique(tokens[:, :START], dim=0)) > 1
    g = torch.Generator().manual_seed(len(a) * 31 + len(b))
    rows = torch.tensor([0, 2, 2, 5, 1, 5, 5])
    seed = torch.randn(len(rows), P, model.d_model, generator=g)
    C_full = torch.zeros(len(rows), B, P, model.d_model)
    C_full[torch.arange(len(rows)), rows] = seed
    G_full, hidden, kw, first, last = _bridge_grads(spliced, tokens, a, b, frozen, C_full)
    want = G_full[torch.arange(len(rows)), rows]
    # the other prompts' rows stay zero: rows are independent
    other = G_full.clone()
    other[torch.arange(len(rows)), rows] = 0
    assert float(other.abs().max()) == 0.0

    window = LlamaWindow.build(spliced, first, last, kw)
    _, inverse = torch.unique(tokens[:, :START], dim=0, return_inverse=True)
    rep = torch.empty(int(inverse.max()) + 1, dtype=torch.long)
    rep[inverse] = torch.arange(B)
    out = window.forward(hidden[:, START:], START, hidden[rep, :START], inverse)
    with torch.no_grad():
        full = spliced.forward(tokens, stop_at_layer=last + 1)[0]
    torch.testing.assert_close(out, full[:, START:], rtol=1e-4, atol=1e-3)

    leaf, target, frozen_sites = sites(a, b, [a, b, *frozen])
    assert frozen_sites == {hook_order(h) for h in frozen}
    got = window.vjp(seed, rows, leaf, target, frozen_sites)
    assert float(want.abs().max()) > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_sites_refuse_the_heads_outputs_and_freeze_what_lies_between():
    hooks = [
        "blocks.1.hook_resid_post",
        "blocks.2.attn.hook_z",
        "blocks.2.hook_attn_out",
        "blocks.2.hook_mlp_out",
        "blocks.3.hook_resid_post",
    ]
    assert sites(hooks[0], hooks[1], hooks) is None  # hook_z as the target
    assert sites(hooks[1], hooks[2], hooks) is None  # and as the leaf
    leaf, target, frozen = sites(hooks[0], hooks[3], hooks)
    assert (leaf, target, frozen) == ((1, 3), (2, 2), {(2, 1)})  # hook_z cuts the attention
    assert sites(hooks[2], hooks[4], hooks)[2] == {(2, 2)}
    assert sites(hooks[0], hooks[4], hooks[:1] + hooks[3:])[2] == {(2, 2)}
    assert sites(hooks[0], "blocks.4.hook_mlp_out", hooks) is None  # resid_3 between


def test_stacked_weights_follow_an_in_place_change(model):
    """The stacked weights are cached per layer; changing a weight in place rebuilds them."""
    from saelab.circuits.splice import SplicedModel

    spliced = SplicedModel(model, {})
    tokens = torch.randint(100, 5000, (2, 5), generator=torch.Generator().manual_seed(7))
    kw = block_kwargs(spliced, tokens)
    hidden = _entering(spliced, tokens, 1)
    before = LlamaWindow.build(spliced, 1, 1, kw)
    assert LlamaWindow.build(spliced, 1, 1, kw).blocks[0] is before.blocks[0]  # cached
    weight = spliced.bridge.blocks[1].original_component.mlp.up_proj.weight
    g = torch.Generator().manual_seed(8)
    change = 0.05 * torch.randn(weight.shape, generator=g)
    original = weight.detach().clone()  # (w + c) - c is not w in float32: restore a copy
    try:
        with torch.no_grad():
            weight.add_(change)
        after = LlamaWindow.build(spliced, 1, 1, kw)
        with torch.no_grad():
            want = run_blocks(spliced, hidden, 1, 1, kw, 0, None, {})
        torch.testing.assert_close(after.forward(hidden, 0), want, rtol=1e-4, atol=1e-3)
        assert float((before.forward(hidden, 0) - want).abs().max()) > 1e-2
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert torch.equal(weight, original)
