"""Edge attribution: batched equals looped, and a hand-checkable direct effect."""

from __future__ import annotations

import pytest
import torch

from saelab.circuits.attribution import LogitDiff, attribute, patch_sides
from saelab.circuits.edges import edge_effects, hook_pairs
from saelab.circuits.nodes import ERROR, aggregate


def test_hook_pairs_stop_at_a_spliced_residual():
    hooks = [
        "blocks.1.hook_resid_post",
        "blocks.2.hook_attn_out",
        "blocks.2.hook_mlp_out",
        "blocks.3.hook_resid_post",
        "blocks.5.hook_mlp_out",
    ]
    pairs = hook_pairs(hooks)
    assert ("blocks.1.hook_resid_post", "blocks.2.hook_attn_out") in pairs
    assert ("blocks.2.hook_attn_out", "blocks.2.hook_mlp_out") in pairs
    assert ("blocks.1.hook_resid_post", "blocks.3.hook_resid_post") in pairs
    assert ("blocks.3.hook_resid_post", "blocks.5.hook_mlp_out") in pairs
    assert ("blocks.1.hook_resid_post", "blocks.5.hook_mlp_out") not in pairs
    assert ("blocks.2.hook_mlp_out", "blocks.5.hook_mlp_out") not in pairs


def _setup(spliced, task, per_position):
    tokens = task.clean[:3]
    metric = LogitDiff(task.correct[:3], task.wrong[:3])
    sides = patch_sides(spliced, task.patch[:3], "patch")
    effects, _ = attribute(spliced, tokens, metric, sides, "atp")
    nodes = aggregate(effects, per_position=per_position)
    kept = []
    for hook in spliced.hooks:  # a few nodes per hook, features and errors
        mine = [n for n in nodes if n.key.hook == hook]
        kept += [n for n in mine if n.key.feature != ERROR][:5] + [
            n for n in mine if n.key.feature == ERROR
        ][:2]
    logits, states, _ = spliced.run_spliced(tokens, grads=True)
    values = metric(logits, {})
    outs = [states[h].out for h in spliced.hooks]
    grads = dict(zip(spliced.hooks, torch.autograd.grad(values.sum(), outs)))
    return tokens, states, grads, sides, kept


def test_batched_edges_equal_looped_edges(random_spliced, sva_small):
    tokens, states, grads, sides, kept = _setup(random_spliced, sva_small, per_position=True)
    batched = edge_effects(random_spliced, tokens, states, grads, sides, kept, batch=16)
    looped = edge_effects(
        random_spliced, tokens, states, grads, sides, kept, batch=16, batched=False
    )
    assert len(batched) > 20
    a = {(e.up, e.down): e.effect for e in batched}
    b = {(e.up, e.down): e.effect for e in looped}
    assert a.keys() == b.keys()
    worst = max(abs(a[k] - b[k]) / (abs(b[k]) + 1e-6) for k in a)
    assert worst < 1e-3, worst
    hooks_seen = {(e.up.hook, e.down.hook) for e in batched}
    assert ("blocks.2.hook_attn_out", "blocks.2.hook_mlp_out") in hooks_seen


def test_an_edge_equals_a_finite_difference_along_the_direct_path(random_spliced, sva_small, model):
    """mlp_2 → resid_3 (block 3's attention and MLP not spliced, so they carry part of the
    direct path): one summed edge against a finite difference (independent of autograd)."""
    tokens, states, grads, sides, kept = _setup(random_spliced, sva_small, per_position=False)
    a, b = "blocks.2.hook_mlp_out", "blocks.3.hook_resid_post"
    mine = [n for n in kept if n.key.hook in (a, b) and n.key.feature != ERROR]
    edges = edge_effects(random_spliced, tokens, states, grads, sides, mine)
    edge = max(
        (e for e in edges if e.up.hook == a and e.down.hook == b), key=lambda e: abs(e.effect)
    )
    # finite difference: move u by eps·Δu along its decoder direction, attn/mlp of block 3
    # respond (not spliced), nothing spliced between; read d; weight by ∂m/∂d.
    from saelab.circuits.attribution import node_delta

    delta = node_delta(random_spliced, a, states[a], sides[a], edge.up.feature, None)
    sae_b = random_spliced.saes[b]
    f = edge.down.feature

    def d_value(scale):
        raw = {}
        edits = {a: lambda x: x + scale * delta, b: lambda x: raw.setdefault("x", x)}
        with torch.no_grad():
            random_spliced.forward(tokens, edits, stop_at_layer=4)
            code = sae_b.encode_sparse(raw["x"].reshape(-1, 576))
        return (code.vals * (code.idx == f)).sum(1).view(tokens.shape)

    eps = 1e-2
    dd = (d_value(eps) - d_value(-eps)) / (2 * eps)  # ∂d/∂u · Δu per prompt and position
    w = grads[b] @ sae_b.W_dec[f].detach()  # ∂m/∂d
    expect = float((dd[:, 1:] * w[:, 1:]).sum(1).mean())
    assert abs(expect) > 1e-5
    assert edge.effect == pytest.approx(expect, rel=2e-2, abs=1e-5)
