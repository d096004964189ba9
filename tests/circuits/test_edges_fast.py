"""The fast edge path (circuits/edges_fast.py) against the per-node loop (the reference), and
its window forward against a full forward."""

from __future__ import annotations

import pytest
import torch

from saelab.circuits.attribution import LogitDiff, attribute, patch_sides
from saelab.circuits.edges import edge_effects
from saelab.circuits.nodes import ERROR, aggregate
from saelab.circuits.window import PrefixKV, block_kwargs, run_blocks


def _many_nodes(spliced, task, per_position: bool, n_prompts: int = 6, per_hook: int = 14):
    tokens = task.clean[:n_prompts]
    metric = LogitDiff(task.correct[:n_prompts], task.wrong[:n_prompts])
    sides = patch_sides(spliced, task.patch[:n_prompts], "patch")
    effects, _ = attribute(spliced, tokens, metric, sides, "atp")
    nodes = aggregate(effects, per_position=per_position)
    kept = []
    for hook in spliced.hooks:  # the strongest features of every hook, and every error node
        mine = [n for n in nodes if n.key.hook == hook]
        kept += [n for n in mine if n.key.feature != ERROR][:per_hook]
        kept += [n for n in mine if n.key.feature == ERROR]
    logits, states, _ = spliced.run_spliced(tokens, grads=True)
    outs = [states[h].out for h in spliced.hooks]
    grads = dict(zip(spliced.hooks, torch.autograd.grad(metric(logits, {}).sum(), outs)))
    return tokens, states, grads, sides, kept


@pytest.fixture(params=["vjp", "autograd"])
def backward(request, monkeypatch):
    """Which backward the fast path takes: the hand-written one (circuits/window_vjp.py; the
    autograd one may not run) or autograd through the bridge's blocks (the embedded model's
    layers not recognised)."""
    import saelab.circuits.edges_fast as fast

    if request.param == "vjp":

        def unused(*args, **kwargs):
            raise AssertionError("the autograd backward ran")

        monkeypatch.setattr(fast, "_autograd_backward", unused)
    else:
        monkeypatch.setattr("saelab.circuits.window_vjp._block_weights", lambda layer: None)
    return request.param


@pytest.mark.parametrize("per_position,late", [(True, False), (False, False), (True, True)])
def test_fast_edges_equal_the_per_node_loop(
    random_spliced, sva_small, per_position, late, backward
):
    tokens, states, grads, sides, kept = _many_nodes(random_spliced, sva_small, per_position)
    if late:  # nodes from position 3 on: the prompts' first 3 tokens differ, a real prefix
        kept = [n for n in kept if n.key.pos >= 3]
        assert len(torch.unique(tokens[:, :3], dim=0)) > 1
    fast = edge_effects(random_spliced, tokens, states, grads, sides, kept, batch=4)
    looped = edge_effects(random_spliced, tokens, states, grads, sides, kept, batched=False)
    a = {(e.up, e.down): e.effect for e in fast}
    b = {(e.up, e.down): e.effect for e in looped}
    assert len(kept) > 30 and len(b) > 200
    assert a.keys() == b.keys()
    assert [(e.up, e.down) for e in fast] == [(e.up, e.down) for e in looped]  # same order
    # 1e-4 relative, with edges below 1e-3 of the largest held to 1e-7 of it in absolute
    # terms: on those tiny edges float32 rounding alone (the loop's own error against float64
    # is larger there) makes a relative figure meaningless
    scale = max(abs(v) for v in b.values())
    worst = max(abs(a[k] - b[k]) / (abs(b[k]) + 1e-3 * scale) for k in a)
    assert worst < 1e-4, worst
    # error nodes on both ends, and features that are off on some prompts (packed seeds)
    assert any(k[0].is_error for k in b) and any(k[1].is_error for k in b)
    B, T = tokens.shape

    def everywhere(key) -> bool:  # the latent is on at its position in every prompt
        st = states[key.hook]
        hit = (st.idx.view(B, T, -1)[:, key.pos] == key.feature) & (
            st.vals.view(B, T, -1)[:, key.pos] != 0
        )
        return bool(hit.any(-1).all())

    feats = [n.key for n in kept if not n.key.is_error and n.key.pos != -1]
    assert not per_position or any(not everywhere(k) for k in feats)


def test_window_of_blocks_equals_the_full_forward(random_spliced, sva_small):
    """Blocks 2..3 on positions 3.. with positions 0..2 as cached keys and values, against
    the same positions of one full forward (with an edit inside block 2 in both)."""
    spliced = random_spliced
    tokens = sva_small.clean
    seen: dict[str, torch.Tensor] = {}

    def grab(name):
        def fn(x):
            seen[name] = x
            return x * 1.5 if name == "mlp" else None

        return fn

    edits = {"blocks.2.hook_mlp_out": grab("mlp"), "blocks.3.hook_resid_post": grab("out")}
    with torch.no_grad():
        spliced.forward(tokens, edits, stop_at_layer=4)
        full = seen["out"].clone()
        start = spliced.forward(tokens, stop_at_layer=2)[0]
        kw = block_kwargs(spliced, tokens)
        cache = PrefixKV()
        run_blocks(spliced, start[:, :3], 2, 3, kw, 0, cache, edits)
        cache.expand(torch.arange(len(tokens)))
        out = run_blocks(spliced, start[:, 3:], 2, 3, kw, 3, cache, edits)
    assert tokens.shape[1] > 4
    torch.testing.assert_close(out, full[:, 3:], rtol=1e-5, atol=1e-4)


def test_fast_edges_with_matching_pursuit_saes(model, sva_small):
    """Matching pursuit's value at one latent depends on the earlier picks: the fast path takes
    the reference's per-node seeds there, and still equals the loop."""
    from saelab.circuits.edges_fast import _per_latent
    from saelab.circuits.splice import SplicedModel
    from saelab.sae.registry import build_sae, make_config

    hooks = ["blocks.1.hook_resid_post", "blocks.2.hook_mlp_out", "blocks.3.hook_resid_post"]
    saes = {
        h: build_sae(make_config("mp", d_sae=96, k=5, seed=i), 576) for i, h in enumerate(hooks)
    }
    spliced = SplicedModel(model, saes)
    assert not _per_latent(saes[hooks[0]])
    tokens, states, grads, sides, kept = _many_nodes(spliced, sva_small, True, per_hook=8)
    fast = edge_effects(spliced, tokens, states, grads, sides, kept, batch=4)
    looped = edge_effects(spliced, tokens, states, grads, sides, kept, batched=False)
    a = {(e.up, e.down): e.effect for e in fast}
    b = {(e.up, e.down): e.effect for e in looped}
    assert len(b) > 50 and a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) / (abs(b[k]) + 1e-6) for k in a) < 1e-4


def test_models_without_the_window_forward_take_the_per_node_loop(
    random_spliced, sva_small, monkeypatch, caplog
):
    """Where neither fast backward applies (here layers the hand-written one does not know and
    an attention that ignores the key-value cache; GPT-2's learned positions are another
    case), `edge_effects` logs why for each upstream hook and returns the reference's edges:
    it neither raises nor reads a wrong prefix."""
    import logging

    import saelab.circuits.edges_fast as fast
    from saelab.circuits.window import supported

    tokens, states, grads, sides, kept = _many_nodes(random_spliced, sva_small, True)
    kept = [n for n in kept if n.key.pos >= 3]  # a prefix before the window
    args = (random_spliced, tokens, states, grads, sides, kept)
    assert supported(random_spliced, tokens) is None
    looped = edge_effects(*args, batch=4, batched=False)
    monkeypatch.setattr("saelab.circuits.window_vjp._block_weights", lambda layer: None)
    for block in random_spliced.bridge.blocks:  # the bridge skips the cache without an index
        monkeypatch.setattr(block.attn, "_layer_idx", None)
    why = supported(random_spliced, tokens)
    assert why is not None and "key-value cache" in why
    with caplog.at_level(logging.INFO, logger="saelab.circuits.edges_fast"):
        fell_back = edge_effects(*args, batch=4)
    uppers = list(dict.fromkeys(e.up.hook for e in looped))
    assert len(uppers) >= 3
    assert [r.getMessage() for r in caplog.records if r.name == "saelab.circuits.edges_fast"] == [
        f"edge_effects: no fast path for {a} ({why}); running the per-node loop" for a in uppers
    ]
    a = {(e.up, e.down): e.effect for e in fell_back}
    b = {(e.up, e.down): e.effect for e in looped}
    assert len(b) > 100 and a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) / (abs(b[k]) + 1e-6) for k in a) < 1e-5
    # the bridge's window regardless would be wrong here: it would not see the prefix
    monkeypatch.setattr(fast, "supported", lambda spliced, tokens: None)
    wrong = {(e.up, e.down): e.effect for e in edge_effects(*args, batch=4)}
    assert max(abs(wrong.get(k, 0.0) - b[k]) / (abs(b[k]) + 1e-6) for k in b) > 1e-2


def test_a_hand_written_window_that_differs_from_the_model_is_not_used(
    random_spliced, sva_small, monkeypatch, caplog
):
    """Layers that look like Llama's but compute something else (here one output projection
    scaled): the window's forward differs from the model's recorded values, so the fast path
    logs it and takes autograd through the bridge's blocks, with the reference's edges."""
    import dataclasses
    import logging

    import saelab.circuits.window_vjp as wv

    real = wv._block_weights

    def off(layer):
        block = real(layer)
        if layer is random_spliced.bridge.blocks[3].original_component:
            block = dataclasses.replace(block, W_o=block.W_o * 1.01)
        return block

    monkeypatch.setattr(wv, "_block_weights", off)
    tokens, states, grads, sides, kept = _many_nodes(random_spliced, sva_small, True)
    args = (random_spliced, tokens, states, grads, sides, kept)
    with caplog.at_level(logging.INFO, logger="saelab.circuits.edges_fast"):
        fast = edge_effects(*args, batch=4)
    said = [r.getMessage() for r in caplog.records if r.name == "saelab.circuits.edges_fast"]
    # every upstream hook's window reaches blocks.3.hook_resid_post, through block 3
    assert [m.split(" does not match")[0] for m in said] == [
        f"edge_effects: the hand-written window after {a}" for a in random_spliced.hooks[:3]
    ]
    assert all("(blocks.3 place 3: relative error" in m for m in said)
    looped = edge_effects(*args, batch=4, batched=False)
    a = {(e.up, e.down): e.effect for e in fast}
    b = {(e.up, e.down): e.effect for e in looped}
    assert len(b) > 100 and a.keys() == b.keys()
    scale = max(abs(v) for v in b.values())
    assert max(abs(a[k] - b[k]) / (abs(b[k]) + 1e-3 * scale) for k in a) < 1e-4
