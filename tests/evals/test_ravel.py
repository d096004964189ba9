"""RAVEL: a hand-built model and SAE whose scores are known, the bootstrap against a direct
computation, and a tiny run on the embedded model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from saelab.base.errors import UserError
from saelab.evaluation.ravel.config import RavelSettings
from saelab.evaluation.ravel.entities import EntityTable, load_ravel
from saelab.evaluation.ravel.pipeline import run_ravel
from saelab.evaluation.ravel.prompts import is_correct
from saelab.evaluation.ravel.scores import Outcomes
from saelab.sae.registry import build_sae
from tests.evals.test_absorption import make_config

HOOK = "blocks.0.hook_resid_post"
# Entity k has Alpha value k % 2 and Beta value (k // 2) % 2: all four combinations, 4 times.
ENTITIES = [f"e{k}" for k in range(16)]
WORDS = ["<bos>", "<pad>", "Alpha", "Beta", "of", "the", "is", "a0", "a1", "b0", "b1", *ENTITIES]
VOCAB = {w: i for i, w in enumerate(WORDS)}


class WordTokenizer:
    pad_token_id = VOCAB["<pad>"]
    eos_token_id = None
    bos_token_id = VOCAB["<bos>"]

    def encode(self, text, add_special_tokens=False):
        return [VOCAB[w] for w in text.split()]

    def decode(self, ids):
        return "".join(" " + WORDS[i] for i in ids)


def embedding(entity_index: int) -> torch.Tensor:
    """Dims 0/1: Alpha one-hot; dims 2/3: Beta one-hot."""
    x = torch.zeros(4)
    x[entity_index % 2] = 1.0
    x[2 + (entity_index // 2) % 2] = 1.0
    return x


class ToyBridge:
    """A model whose hook activation at an entity token is its embedding, and whose last-position
    logits read the value of the attribute the prompt names ("Alpha"/"Beta") from the
    (hooked) activation at the entity, the second-to-last token ("... of ENTITY is")."""

    def __init__(self):
        self.embed = torch.zeros(len(WORDS), 4)
        for k, e in enumerate(ENTITIES):
            self.embed[VOCAB[e]] = embedding(k)
        self.read_alpha = torch.zeros(4, len(WORDS))
        self.read_beta = torch.zeros(4, len(WORDS))
        for dim, word in enumerate(["a0", "a1"]):
            self.read_alpha[dim, VOCAB[word]] = 5.0
        for dim, word in enumerate(["b0", "b1"]):
            self.read_beta[2 + dim, VOCAB[word]] = 5.0

    def run_with_hooks(self, tokens, fwd_hooks=(), return_type="logits", attention_mask=None):
        act = self.embed[tokens]
        for name, fn in fwd_hooks:
            assert name == HOOK
            act = fn(act, hook=None)
        entity = act[:, -2]
        alpha = (tokens == VOCAB["Alpha"]).any(1).float()[:, None]
        last = alpha * (entity @ self.read_alpha) + (1 - alpha) * (entity @ self.read_beta) - 1
        rest = torch.zeros(len(tokens), tokens.shape[1] - 1, len(WORDS))
        return torch.cat([rest, last[:, None]], dim=1)


def toy_model():
    return SimpleNamespace(bridge=ToyBridge(), tokenizer=WordTokenizer())


def toy_table() -> EntityTable:
    values = {e: {"Alpha": f"a{k % 2}", "Beta": f"b{(k // 2) % 2}"} for k, e in enumerate(ENTITIES)}
    templates = {
        "Alpha": ["Alpha of %s is", "the Alpha of %s is"],
        "Beta": ["Beta of %s is", "the Beta of %s is"],
    }
    return EntityTable("toy", values, templates, "hand-built")


def relu_sae(encoder: torch.Tensor, b_enc: torch.Tensor, decoder: torch.Tensor):
    sae = build_sae(make_config("relu", d_sae=len(encoder)), d_in=encoder.shape[1]).eval()
    with torch.no_grad():
        sae.encoder_weight.copy_(encoder)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(decoder)
        sae.b_dec.zero_()
    return sae


def disentangled_sae():
    """One latent per value: latents 0/1 carry Alpha, 2/3 carry Beta."""
    return relu_sae(torch.eye(4), torch.zeros(4), torch.eye(4))


def entangled_sae():
    """One latent per (Alpha, Beta) combination: no latent moves Alpha without Beta."""
    rows = torch.stack([embedding(k) for k in range(4)])
    return relu_sae(rows, torch.full((4,), -1.5), rows * 2)  # fires at 0.5 on its own entities


SETTINGS = dict(n_pairs=40, batch_size=8, n_epochs=3, n_bootstrap=200, seed=0)


def test_a_disentangled_sae_switches_one_attribute_and_keeps_the_other():
    s = RavelSettings(attributes=("Alpha", "Beta"), **SETTINGS)
    run = run_ravel(toy_model(), HOOK, disentangled_sae(), toy_table(), s, VOCAB["<bos>"])
    assert run.model_accuracy == {"Alpha": 1.0, "Beta": 1.0}
    assert run.entities == {"Alpha": 16, "Beta": 16}
    m = run.metrics()
    assert m["ravel_cause"] == 1.0 and m["ravel_isolation"] == 1.0 and m["ravel_disentangle"] == 1.0
    assert run.mask_sizes == {"Alpha": 2, "Beta": 2}  # exactly the attribute's two latents
    assert m["ravel_isolation_empty_mask"] == 1.0  # the SAE reconstructs exactly
    assert min(len(v) for v in run.outcomes.cause.values()) >= 5


def test_a_latent_shared_by_two_attributes_costs_isolation():
    s = RavelSettings(attributes=("Alpha", "Beta"), **SETTINGS)
    run = run_ravel(toy_model(), HOOK, entangled_sae(), toy_table(), s, VOCAB["<bos>"])
    m = run.metrics()
    # Switching Alpha means moving the entity's combination latent, which carries Beta too: no
    # mask reaches both scores (the best is about 1/2 each way).
    assert m["ravel_disentangle"] <= 0.75
    assert min(m["ravel_cause"], m["ravel_isolation"]) < 0.75


def test_bootstrap_intervals_match_a_direct_resampling():
    out = Outcomes(cause={"A": [True] * 6 + [False] * 4}, isolation={"A": [True] * 9 + [False]})
    ci = out.intervals(2000, seed=3)
    rng = np.random.default_rng(3)
    c, i = np.array([1.0] * 6 + [0.0] * 4), np.array([1.0] * 9 + [0.0])
    draws = []
    for _ in range(2000):
        dc, di = c[rng.integers(0, 10, 10)].mean(), i[rng.integers(0, 10, 10)].mean()
        draws.append((dc + di) / 2)
    assert ci["ravel_disentangle"] == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))
    assert ci["ravel_cause"][0] < 0.6 < ci["ravel_cause"][1]
    assert out.scores()["ravel_disentangle"] == pytest.approx(0.75)


def test_answers_are_judged_by_saebenchs_rule():
    assert is_correct("France", " France. Q:")
    assert is_correct("South America", " South")  # a prefix of the value counts
    assert is_correct("United States", " the United States")
    assert is_correct("Chinese", " Mandarin")
    assert not is_correct("France", " Germany")


def test_a_local_ravel_copy_is_read_and_a_bad_one_refused(tmp_path):
    (tmp_path / "ravel_city_entity_attributes.json").write_text(
        json.dumps({"Paris": {"Country": "France", "Continent": "Europe"}})
    )
    (tmp_path / "ravel_city_attribute_to_prompts.json").write_text(
        json.dumps({"Country": ["%s is in the country of", "%s and %s"], "Continent": ["%s is in"]})
    )
    table = load_ravel(str(tmp_path), "city")
    assert table.values["Paris"]["Country"] == "France"
    assert table.templates["Country"] == ["%s is in the country of"]
    with pytest.raises(UserError, match="no attribute 'Language'"):
        table.restrict(["Country", "Language"])
    with pytest.raises(UserError, match="missing"):
        load_ravel(str(tmp_path), "nobel_prize_winner")
    with pytest.raises(UserError, match="is not a folder"):
        RavelSettings(dataset=str(tmp_path / "nowhere")).validate()
    with pytest.raises(UserError, match="at least two attributes"):
        RavelSettings(attributes=("Country",)).validate()


def identity_sae(d: int):
    """Latents x⁺ and (−x)⁺: decodes every activation exactly."""
    eye = torch.eye(d)
    return relu_sae(torch.cat([eye, -eye]), torch.zeros(2 * d), torch.cat([eye, -eye]))


def test_on_the_embedded_model_the_full_mask_is_activation_patching(model):
    """A tiny run on SmolLM2: left padding leaves the answers unchanged, the model knows the
    countries of big cities, and with an exact SAE and the full mask the intervention equals
    patching the source's residual into the base's entity token (computed here directly).
    (Patching only the last token of "Mexico City" at layer 2 does not carry the city: the model
    says China, so the answer itself is not asserted.)"""
    from saelab.activations.corpus import bos_token_id
    from saelab.evaluation.ravel.entities import builtin_cities
    from saelab.evaluation.ravel.mask import intervention_hook
    from saelab.evaluation.ravel.prompts import CITY_TEMPLATES, pad_left

    hook = "blocks.2.hook_resid_post"
    s = RavelSettings(attributes=("Country", "Continent"), n_entities=5, n_pairs=3, batch_size=8,
                      n_epochs=1, n_bootstrap=50, forward_batch_size=16)  # fmt: skip
    table = builtin_cities(5, {a: CITY_TEMPLATES[a][:1] for a in s.attributes})
    sae = identity_sae(model.d_model)
    bos = bos_token_id(model.tokenizer)
    run = run_ravel(model, hook, sae, table, s, bos)
    m = run.metrics()
    assert all(np.isfinite(v) for v in m.values())
    assert 0 <= m["ravel_disentangle"] <= 1 and m["ravel_model_acc_country"] >= 0.5
    assert 2 <= run.entities["Country"] <= 5

    ask = "Q: Which country is Cairo in? A: Egypt. Q: Which country is {} in? A:"
    base = [bos, *model.tokenizer.encode(ask.format("Paris"))]
    source = [bos, *model.tokenizer.encode(ask.format("Mexico City"))]
    tail = len(model.tokenizer.encode(" in? A:"))
    pos_b, pos_s = len(base) - tail - 1, len(source) - tail - 1
    assert len(source) > len(base)  # the base row is padded
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(torch.tensor([source]), names_filter=[hook])
        state = cache[hook][:, pos_s].float()

        def patch(act, hook=None):
            act = act.clone()
            act[:, pos_b] = state.to(act.dtype)
            return act

        patched = model.bridge.run_with_hooks(torch.tensor([base]), fwd_hooks=[(hook, patch)])[
            0, -1
        ]
        tokens, attention, offsets = pad_left([base, source], model.tokenizer.pad_token_id, "cpu")
        edit = intervention_hook(
            sae, torch.ones(sae.d_sae), state.repeat(2, 1), offsets + torch.tensor([pos_b, pos_s])
        )
        ours = model.bridge.run_with_hooks(
            tokens, fwd_hooks=[(hook, edit)], attention_mask=attention
        )[0, -1]
        plain = model.bridge(torch.tensor([base]))[0, -1]
        padded = model.bridge(tokens, attention_mask=attention)[0, -1]
    assert torch.allclose(padded, plain, atol=1e-3)  # left padding changes nothing
    assert torch.allclose(ours, patched, atol=1e-3)
    assert model.tokenizer.decode(plain.argmax()).strip() == "France"


def test_the_intervention_decodes_without_the_error_term():
    """With a lossy SAE, m = 0 writes decode(encode(x_base)) at the entity position (not x:
    no error term, SAEBench's default), m = 1 decode(encode(x_source)); other positions and
    rows keep their activations."""
    from saelab.evaluation.ravel.mask import intervention_hook
    from saelab.sae.registry import build_sae, make_config

    torch.manual_seed(7)
    sae = build_sae(make_config("topk", d_sae=24, k=3, d_in=8, seed=5)).eval()
    act = torch.randn(2, 5, 8)
    source = torch.randn(2, 8)
    pos = torch.tensor([1, 3])
    with torch.no_grad():
        lossy = sae.decode(sae.encode(act[[0, 1], pos]))
        assert (lossy - act[[0, 1], pos]).norm() > 0.1  # the SAE does lose something
        for m, expected in ((0.0, lossy), (1.0, sae.decode(sae.encode(source)))):
            out = intervention_hook(sae, torch.full((24,), m), source, pos)(act)
            assert torch.allclose(out[[0, 1], pos], expected, atol=1e-6)
            keep = torch.ones(2, 5, dtype=torch.bool)
            keep[[0, 1], pos] = False
            assert torch.equal(out[keep], act[keep])


def test_held_out_pairs_hold_both_kinds_in_their_shuffled_order():
    from saelab.evaluation.ravel.mask import Pair
    from saelab.evaluation.ravel.scores import split_pairs

    kinds = [True, True, False, True, False, True, True]  # 5 cause, 2 isolation pairs
    pairs = [Pair(i, i + 1, cause, 0, "v") for i, cause in enumerate(kinds)]
    train, test = split_pairs(pairs, 0.7)
    assert [p.base for p in train] == [0, 1, 2, 3]  # int(5 * .7) = 3 cause, 1 of 2 isolation
    assert [p.base for p in test] == [4, 5, 6]
    train, test = split_pairs(pairs, 0.99)  # a kind of two or more always keeps one held out
    assert {p.cause for p in test} == {True, False} and len(test) == 2
