"""Ablation edits against hand-computed outputs; faithfulness and completeness end points."""

from __future__ import annotations

import pytest
import torch

from saelab.circuits.attribution import LogitDiff, metric_values
from saelab.circuits.evaluate import (
    Ablation,
    NodeSet,
    ablation_edits,
    curves,
    make_ablation,
    pearson,
)
from saelab.circuits.nodes import ERROR, SUMMED, Node, NodeKey


def _all_keys(spliced, d_sae):
    return [NodeKey(h, f, SUMMED) for h in spliced.hooks for f in range(d_sae)] + [
        NodeKey(h, ERROR, SUMMED) for h in spliced.hooks
    ]


def test_keeping_everything_is_the_model_and_ablating_nothing_too(random_spliced, sva_small):
    tokens = sva_small.clean[:3]
    metric = LogitDiff(sva_small.correct[:3], sva_small.wrong[:3])
    full = metric_values(random_spliced, tokens, metric)
    abl = make_ablation("resample", random_spliced, tokens)
    T = tokens.shape[1]
    everything = NodeSet.build(_all_keys(random_spliced, 128), random_spliced.hooks, T)
    nothing = NodeSet.build([], random_spliced.hooks, T)
    keep_all = ablation_edits(random_spliced, everything, abl, keep_only=True, errors="ablate")
    ablate_none = ablation_edits(random_spliced, nothing, abl, keep_only=False, errors="ablate")
    for edits in (keep_all, ablate_none):
        torch.testing.assert_close(
            metric_values(random_spliced, tokens, metric, edits), full, atol=2e-3, rtol=1e-4
        )


def test_zero_ablating_everything_leaves_the_decoder_bias(random_spliced, sva_small):
    """Hand-computed: with zero ablation, no kept node and errors removed, a hook outputs b_dec
    at every position but BOS (checked at the first spliced hook, which sees clean input)."""
    hook = random_spliced.hooks[0]
    tokens = sva_small.clean[:2]
    nothing = NodeSet.build([], random_spliced.hooks, tokens.shape[1])
    edits = ablation_edits(random_spliced, nothing, Ablation("zero"), True, "remove")
    _, captured = random_spliced.forward(tokens, {hook: edits[hook]}, capture=[hook])
    out = captured[hook]
    b_dec = random_spliced.saes[hook].b_dec
    torch.testing.assert_close(out[:, 1:], b_dec.expand_as(out[:, 1:]))
    with torch.no_grad():
        clean = random_spliced.forward(tokens, capture=[hook])[1][hook]
    torch.testing.assert_close(out[:, 0], clean[:, 0])

    # keeping one feature at one position adds exactly its clean value times its decoder row
    _, states, _ = random_spliced.run_spliced(tokens)
    st = states[hook]
    row = st.idx.view(2, -1, st.idx.shape[-1])[0, 2]
    vals = st.vals.view(2, -1, st.vals.shape[-1])[0, 2]
    f = int(row[vals.argmax()])
    one = NodeSet.build([NodeKey(hook, f, 2)], random_spliced.hooks, tokens.shape[1])
    edits = ablation_edits(random_spliced, one, Ablation("zero"), True, "remove")
    _, captured = random_spliced.forward(tokens, {hook: edits[hook]}, capture=[hook])
    expect = b_dec + float(vals.max()) * random_spliced.saes[hook].W_dec[f]
    torch.testing.assert_close(captured[hook][0, 2], expect, atol=1e-4, rtol=1e-5)


def test_curve_end_points(random_spliced, sva_small):
    tokens = sva_small.clean[:3]
    metric = LogitDiff(sva_small.correct[:3], sva_small.wrong[:3])
    abl = make_ablation("zero", random_spliced, tokens)
    keys = _all_keys(random_spliced, 128)
    nodes = [Node(k, effect=1.0 / (i + 1), activation=0.0) for i, k in enumerate(keys)]
    c = curves(random_spliced, tokens, metric, nodes, abl, "ablate", sizes=[0, len(nodes)])
    first, last, everything = c.points
    assert everything.everything and not last.everything
    assert everything.faithfulness == pytest.approx(1.0, abs=1e-3)
    assert first.faithfulness == pytest.approx(0.0, abs=1e-6)
    assert first.completeness == pytest.approx(1.0, abs=1e-3)
    assert last.faithfulness == pytest.approx(1.0, abs=1e-3)
    assert last.completeness == pytest.approx(0.0, abs=1e-3)
    assert abs(c.m_full - c.m_empty) > 0.1


def test_pearson_matches_a_hand_computed_value():
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(0.9933992677987828)
