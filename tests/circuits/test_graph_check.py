"""The real-model check: with everything the graph freezes held in the real model (patterns,
norm scales, MLPs as transcoders with their clean active latents and errors), ablating a node
moves the target logit by exactly the graph's total effect; this ties the graph's chain of
latents to the bridge and checks that the bridge uses hooked patterns and scales downstream."""

from __future__ import annotations

import pytest
import torch

from tests.circuits.graph_fixtures import random_transcoder


@pytest.fixture(scope="module")
def small_graph(model):
    from saelab.activations.corpus import bos_token_id
    from saelab.circuits.graph_attribution import attribute
    from saelab.circuits.replacement import build_replacement

    bos = bos_token_id(model.tokenizer)
    tokens = [bos] + model.tokenizer.encode("The capital of France is", add_special_tokens=False)
    tcs = {1: random_transcoder(1, seed=1), 3: random_transcoder(3, skip=True, seed=3)}
    rm = build_replacement(model, tokens, tcs, bos)
    top = int(rm.frozen.logits[-1].argmax())
    return rm, attribute(rm, torch.tensor([top]), torch.tensor([0.7]), progress=False)


def test_with_everything_frozen_the_real_model_moves_as_the_graph_predicts(model, small_graph):
    from saelab.circuits.graph_check import agreement

    rm, graph = small_graph
    ag = agreement(model, rm, graph, n_nodes=20, factor=0.0, freeze="all")
    pred = torch.tensor([c.predicted for c in ag.checks])
    real = torch.tensor([c.measured for c in ag.checks])
    direct = torch.tensor([c.direct for c in ag.checks])
    assert len(ag.checks) == 20 and ag.freeze == "all"
    assert (pred - direct).abs().max() > 1e-3  # some effects pass through later latents
    assert (pred - real).abs().max() <= 1e-3 * pred.abs().max() + 1e-4
    assert ag.pearson > 0.9999 and ag.sign_agreement == 1.0
    # with nothing frozen the same numbers come out finite (the agreement is what varies)
    loose = agreement(model, rm, graph, n_nodes=4, factor=0.0, freeze="none")
    assert all(torch.isfinite(torch.tensor(c.measured)) for c in loose.checks)
