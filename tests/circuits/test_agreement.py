"""Circuits that agree with patching: the frozen selection, the task-mean ablation, the
every-node point, exact node patching and integrated-gradient edges, each against an
independent computation (a dense float64 one, a one-node-at-a-time loop, the measurement)."""

from __future__ import annotations

import pytest
import torch

from saelab.circuits.attribution import LogitDiff, metric_values, patch_sides
from saelab.circuits.edges import Edge, ig_edge_effects
from saelab.circuits.evaluate import curves, make_ablation, measure_edges, pearson, task_means
from saelab.circuits.exact import exact_node_effects, key_delta
from saelab.circuits.nodes import ERROR, SUMMED, Node, NodeKey
from saelab.circuits.splice import SplicedModel
from saelab.sae.registry import build_sae, make_config


def _task(task, n=4):
    return task.clean[:n], task.patch[:n], LogitDiff(task.correct[:n], task.wrong[:n])


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu", "gated", "matryoshka"])
def test_encode_at_the_clean_active_set_is_the_encoding(arch):
    """At the input it was selected on, the frozen encoding equals the SAE's own, for every
    architecture, and its gradient is the encoding's gradient."""
    g = torch.Generator().manual_seed(11)
    sae = build_sae(make_config(arch, d_sae=96, seed=4), 24)
    with torch.no_grad():
        sae.encoder_weight.add_(0.5 * torch.randn(sae.encoder_weight.shape, generator=g))
        sae.b_enc.copy_(0.2 * torch.randn(96, generator=g))
    x = torch.randn(7, 24, generator=g, requires_grad=True)
    code = sae.encode_sparse(x)
    mask = (code.vals != 0).float()
    assert mask.sum() > 0
    frozen = sae.encode_at(x, code.idx) * mask
    torch.testing.assert_close(frozen, code.vals, atol=1e-5, rtol=1e-5)
    w = torch.randn(code.vals.shape, generator=g)
    (g_own,) = torch.autograd.grad((code.vals * w).sum(), x)
    (g_frozen,) = torch.autograd.grad((frozen * w).sum(), x)
    torch.testing.assert_close(g_frozen, g_own, atol=1e-5, rtol=1e-4)


def test_frozen_selection_keeps_the_clean_set_and_counts_what_would_switch(
    random_spliced, sva_small
):
    tokens, patch, _ = _task(sva_small)
    hook = random_spliced.hooks[0]
    _, clean, _ = random_spliced.run_spliced(tokens)
    _, other, _ = random_spliced.run_spliced(patch)
    x_new = other[hook].x
    with random_spliced.frozen_at(clean):
        idx, vals, x_hat = random_spliced.encode(hook, x_new)
        switched = random_spliced.switched(hook, x_new)
        same = random_spliced.switched(hook, clean[hook].x)
    assert torch.equal(idx, clean[hook].idx)
    assert bool((vals[clean[hook].vals == 0] == 0).all())
    # independent count: sets as Python sets, row by row
    own = other[hook]
    expect = []
    for r in range(own.idx.shape[0]):
        on = {int(i) for i, v in zip(own.idx[r], own.vals[r]) if v != 0}
        held = {int(i) for i, v in zip(clean[hook].idx[r], clean[hook].vals[r]) if v != 0}
        expect.append(len(on - held))
    assert switched.reshape(-1).tolist() == expect
    assert sum(expect) > 0 and float(same.sum()) == 0.0
    # outside the block the SAE selects again
    assert not torch.equal(random_spliced.encode(hook, x_new)[0], clean[hook].idx)


def test_task_means_equal_a_dense_float64_mean(random_spliced, sva_small):
    _, patch, _ = _task(sva_small)
    means = task_means(random_spliced, patch)
    for hook, sae in random_spliced.saes.items():
        _, states, _ = random_spliced.run_spliced(patch)
        x = states[hook].x.double()
        dense = sae.encode(states[hook].x).double()  # [B, T, d_sae]
        torch.testing.assert_close(
            means[hook].features.double(), dense.mean(0), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            means[hook].x_hat.double(),
            dense.mean(0) @ sae.W_dec.double() + sae.b_dec.double(),
            atol=1e-4,
            rtol=1e-4,
        )
        torch.testing.assert_close(
            means[hook].err.double() + means[hook].x_hat.double(), x.mean(0), atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("ablation", ["task-mean", "zero", "resample"])
@pytest.mark.parametrize("selection", ["frozen", "reselect"])
def test_every_node_kept_is_the_model(random_spliced, sva_small, ablation, selection):
    """Faithfulness 1 to within 1e-3 with every node kept (features, errors and the nodes the
    ranking never listed), whatever the ablation and the selection policy."""
    tokens, patch, metric = _task(sva_small)
    spliced = SplicedModel(random_spliced.model, random_spliced.saes, selection=selection)
    abl = make_ablation(ablation, spliced, tokens, patch=patch)
    _, states, _ = spliced.run_spliced(tokens)
    hook = spliced.hooks[1]
    listed = [Node(NodeKey(hook, int(states[hook].idx[5, 0]), 2), 1.0, 0.0)]
    with spliced.frozen_at(states):
        c = curves(spliced, tokens, metric, listed, abl, "ablate", sizes=[0, 1])
    last = c.points[-1]
    assert last.everything
    assert last.n_nodes == sum((s.d_sae + 1) * (tokens.shape[1] - 1) for s in spliced.saes.values())
    assert abs(c.m_full - c.m_empty) > 0.05
    assert last.faithfulness == pytest.approx(1.0, abs=1e-3)
    assert last.m_circuit == pytest.approx(
        float(metric_values(spliced, tokens, metric).mean()), abs=1e-3
    )


def test_batched_exact_node_effects_equal_one_at_a_time(random_spliced, sva_small):
    tokens, patch, metric = _task(sva_small)
    sides = patch_sides(random_spliced, patch, "patch")
    _, states, _ = random_spliced.run_spliced(tokens)
    keys = []
    for hook in random_spliced.hooks[:3]:
        row = states[hook].idx.view(tokens.shape[0], -1, states[hook].idx.shape[-1])[0, 2]
        keys += [
            NodeKey(hook, int(row[0]), 2),
            NodeKey(hook, ERROR, 3),
            NodeKey(hook, int(row[1]), SUMMED),
        ]
    batched = exact_node_effects(random_spliced, tokens, metric, states, sides, keys, batch=4)
    base = metric_values(random_spliced, tokens, metric)
    for key, got in zip(keys, batched):
        delta = key_delta(random_spliced, key, states, sides)
        alone = metric_values(random_spliced, tokens, metric, {key.hook: lambda x, d=delta: x + d})
        torch.testing.assert_close(got, alone - base, atol=2e-4, rtol=1e-4)
    assert float(batched.abs().max()) > 1e-3


@pytest.mark.parametrize("selection", ["frozen", "reselect"])
def test_ig_edges_agree_with_the_measured_direct_effect(random_spliced, sva_small, selection):
    """Integrated-gradient edges converge to the edge check's measurement under either
    selection policy (the same policy used by both)."""
    tokens, patch, metric = _task(sva_small)
    spliced = SplicedModel(random_spliced.model, random_spliced.saes, selection=selection)
    sides = patch_sides(spliced, patch, "patch")
    _, states, _ = spliced.run_spliced(tokens)
    nodes = []
    for hook in (spliced.hooks[0], spliced.hooks[-1]):
        st = states[hook]
        row = st.idx.view(tokens.shape[0], -1, st.idx.shape[-1])[1, 2]
        nodes += [
            Node(NodeKey(hook, int(row[0]), 2), 1.0, 0.0),
            Node(NodeKey(hook, ERROR, 2), 1.0, 0.0),
        ]
    with spliced.frozen_at(states):
        edges = ig_edge_effects(spliced, tokens, metric, states, sides, nodes, steps=12)
        checks = measure_edges(spliced, tokens, metric, states, sides, edges)
    assert len(edges) >= 3
    att = [c.edge.effect for c in checks]
    meas = [c.measured for c in checks]
    assert max(abs(m) for m in meas) > 1e-3
    for a, m in zip(att, meas):
        assert a == pytest.approx(m, abs=2e-3 + 0.02 * abs(m))
    if len(att) > 2:
        assert pearson(att, meas) > 0.99
    assert isinstance(edges[0], Edge)


def test_the_neuron_basis_is_an_exact_dictionary_with_no_error(model, sva_small):
    """The neuron baseline: every coordinate a node, x̂ = x, ε = 0, and the same code finds
    and evaluates a circuit over it (every node kept is the model)."""
    from saelab.circuits.attribution import attribute
    from saelab.circuits.neurons import neuron_spliced
    from saelab.circuits.nodes import aggregate

    tokens, patch, metric = _task(sva_small, n=3)
    spliced = neuron_spliced(model, ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"])
    _, states, _ = spliced.run_spliced(tokens)
    for st in states.values():
        torch.testing.assert_close(st.x_hat, st.x)
        assert float(st.err.abs().max()) == 0.0
    sides = patch_sides(spliced, patch, "patch")
    effects, _ = attribute(spliced, tokens, metric, sides, "atp")
    nodes = aggregate(effects, per_position=True)
    assert all(n.key.feature < model.d_model for n in nodes)
    abl = make_ablation("task-mean", spliced, tokens, patch=patch)
    with spliced.frozen_at(states):
        c = curves(spliced, tokens, metric, nodes, abl, "ablate", sizes=[0, 10])
    assert c.points[-1].everything
    assert c.points[-1].faithfulness == pytest.approx(1.0, abs=1e-3)


def test_frozen_at_restores_the_outer_state_and_refuses_other_batches(random_spliced, sva_small):
    tokens, patch, _ = _task(sva_small)
    hook = random_spliced.hooks[0]
    _, clean, _ = random_spliced.run_spliced(tokens)
    _, half, _ = random_spliced.run_spliced(tokens[:2])
    with random_spliced.frozen_at(clean):
        with random_spliced.frozen_at(half):
            assert torch.equal(random_spliced.encode(hook, half[hook].x)[0], half[hook].idx)
        # the outer clean selection is back, and holds for stacked copies of its batch
        idx, _, _ = random_spliced.encode(hook, clean[hook].x.repeat(2, 1, 1))
        assert torch.equal(idx, clean[hook].idx.repeat(2, 1))
        with pytest.raises(ValueError, match="encode other prompts outside"):
            random_spliced.encode(hook, half[hook].x[:, :-1])
    assert random_spliced.switched(hook, clean[hook].x) is None


def test_summed_graph_size_and_the_remove_policys_full_model(random_spliced, sva_small):
    from saelab.circuits.evaluate import NodeSet, ablation_edits

    tokens, patch, metric = _task(sva_small, n=3)
    T = tokens.shape[1]
    per_hook = [s.d_sae + 1 for s in random_spliced.saes.values()]
    assert NodeSet.count(random_spliced, T, per_position=False) == sum(per_hook)
    assert NodeSet.count(random_spliced, T) == sum(per_hook) * (T - 1)
    abl = make_ablation("zero", random_spliced, tokens)
    listed = [Node(NodeKey(random_spliced.hooks[0], 3, SUMMED), 1.0, 0.0)]
    c = curves(random_spliced, tokens, metric, listed, abl, "ablate", [0, 1], per_position=False)
    assert c.points[-1].everything and c.points[-1].n_nodes == sum(per_hook)
    # remove: the "full model" is every feature kept (listed or not) with every error ablated
    c = curves(random_spliced, tokens, metric, listed, abl, "remove", [0, 1])
    every = NodeSet.everything(random_spliced, T)
    edits = ablation_edits(random_spliced, every, abl, True, "remove")
    expect = float(metric_values(random_spliced, tokens, metric, edits).mean())
    assert c.m_full == pytest.approx(expect, abs=1e-5)
    assert not any(p.everything for p in c.points)
