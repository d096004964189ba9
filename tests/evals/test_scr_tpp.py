"""SCR and TPP: hand-built SAEs on synthetic activations whose scores are known, the ablation
against the SAE's own decode, and a smoke run through `evaluate` on the real model."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from saelab.base.errors import UserError
from saelab.evaluation.datasets.text_acts import TokenActivations
from saelab.evaluation.scr_tpp import tasks
from saelab.evaluation.scr_tpp.config import ScrSettings, TppSettings
from saelab.evaluation.scr_tpp.effects import ablate, latent_effects, pooled_latents, top_latents
from saelab.evaluation.scr_tpp.probes import LinearProbe, train_probe
from saelab.evaluation.scr_tpp.scores import scr_scores, t_interval, tpp_scores

D = 8


class PlusMinusSAE(torch.nn.Module):
    """Latents relu(x·u) and relu(−x·u) for each row u of an orthonormal basis: it reconstructs
    every x exactly, and latent pair j holds the whole component along u_j."""

    def __init__(self, basis: torch.Tensor):
        super().__init__()
        self.basis = basis
        self.W_dec = torch.nn.Parameter(torch.cat([basis, -basis]))
        self.b_dec = torch.nn.Parameter(torch.zeros(basis.shape[1]))
        self.d_sae = 2 * len(basis)

    def encode(self, x):
        proj = x @ self.basis.T
        return torch.relu(torch.cat([proj, -proj], -1))

    def decode(self, f):
        return f @ self.W_dec + self.b_dec


def rotated_basis(angle: float) -> torch.Tensor:
    """The identity with its first two axes rotated by `angle` in their plane."""
    basis = torch.eye(D)
    c, s = math.cos(angle), math.sin(angle)
    basis[0, :2] = torch.tensor([c, s])
    basis[1, :2] = torch.tensor([-s, c])
    return basis


def synthetic_acts(a_class: float, a_spurious: float, tokens: int = 3):
    """Each text's tokens: ±a_class on axis 0 (its class), ±a_spurious on axis 1 (its spurious
    label), small noise on the other axes; texts are named "c{class}s{spurious}_{i}"."""

    def acts(model, texts, hook, **_):
        rows = []
        for text in texts:
            cls, spur = int(text[1]), int(text[3])
            gen = torch.Generator().manual_seed(zlib.crc32(text.encode()))
            x = 0.05 * torch.randn(tokens, D, generator=gen)
            x[:, 0] = a_class * (2 * cls - 1)
            x[:, 1] = a_spurious * (2 * spur - 1)
            rows.append(x)
        return TokenActivations(torch.cat(rows), np.arange(len(texts) + 1) * tokens)

    return acts


@pytest.fixture
def synthetic_scr(monkeypatch):
    """SCR tasks (by seed) on synthetic activations: class on axis 0 (a=2), the spurious label
    on axis 1 (a=4, stronger, so the biased probe leans on it)."""
    tasks.clear_cache()
    monkeypatch.setattr(tasks, "token_activations", synthetic_acts(2.0, 4.0))
    monkeypatch.setattr(
        tasks,
        "quadrant_texts",
        lambda dataset, c, s, n, part, seed, path: [f"c{c}s{s}_{part}{seed}_{i}" for i in range(n)],
    )
    monkeypatch.setitem(tasks.SPURIOUS, "synthetic", ("1", "0"))
    # A large learning rate: these tasks are separable at once, and the probe kept is that of
    # the first epoch with the best test accuracy (SAEBench), so it must move in one epoch.
    s = ScrSettings(train_size=64, test_size=32, probe_epochs=8, probe_lr=0.1, repeats=2)
    yield lambda seed: tasks.scr_task(None, "h", s, "synthetic", ("1", "0"), seed, None)
    tasks.clear_cache()


def _scr(task, sae, n_values):
    f_train, f_test = pooled_latents(sae, task.train.acts), pooled_latents(sae, task.test.acts)
    return scr_scores(task, f_train, f_test, sae.W_dec, n_values)


def test_scr_is_one_when_one_latent_pair_is_exactly_the_spurious_direction(synthetic_scr):
    aligned, mixed = PlusMinusSAE(torch.eye(D)), PlusMinusSAE(rotated_basis(math.pi / 4))
    out = _scr(synthetic_scr(0), aligned, [2, 4])
    # Oracles are perfect, the biased probe follows the spurious axis on balanced data...
    assert out["scr_oracle_acc_class"] == out["scr_oracle_acc_spurious"] == 1.0
    assert out["scr_biased_acc"] == 1.0 and out["scr_biased_acc_spurious"] == 1.0
    assert out["scr_biased_acc_class"] == 0.5
    # ...the spurious probe's top two latents are axis 1's pair: ablating them leaves the
    # class axis alone, so the biased probe reaches the oracle: score exactly 1.
    assert out["scr_dir1_threshold_2"] == 1.0 and out["scr_metric_threshold_2"] == 1.0
    # dir2's denominator A_oracle − A_biased is 0 (< 0.001): SAEBench scores it 0.
    assert out["scr_dir2_threshold_2"] == 0.0
    # Other seeds (data and probes): still exactly 1. An SAE whose latents mix the two axes
    # (rotated 45°) cannot remove the spurious signal alone.
    assert [
        _scr(synthetic_scr(seed), aligned, [2])["scr_metric_threshold_2"] for seed in (1, 2)
    ] == [1.0, 1.0]
    scores = [_scr(synthetic_scr(seed), mixed, [2])["scr_metric_threshold_2"] for seed in range(3)]
    assert np.mean(scores) < 0.5


def test_tpp_with_hand_set_probes_has_a_known_score():
    """Three classes, each on its own axis; probe i reads only axis i. Ablating class i's one
    positive-effect latent takes probe i to chance on its positives (accuracy 0.5) and leaves
    the other probes untouched: TPP = 0.5 for every n (only nonzero effects are ablated)."""
    n_per, a = 6, 2.0
    rows = []
    for k in range(3):
        x = torch.zeros(n_per, D)
        x[:, k] = a
        rows.append(x)
    x = torch.cat(rows)
    acts = TokenActivations(x, np.arange(len(x) + 1))
    part = tasks.Part([str(i) for i in range(len(x))], acts, acts.pooled())
    cls = np.repeat(np.arange(3), n_per)
    keys, probes = {}, {}
    for k in range(3):
        pos, neg = np.nonzero(cls == k)[0], np.nonzero(cls != k)[0][::2]
        y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
        keys[str(k)] = tasks.ProbeKey(np.concatenate([pos, neg]), y, np.concatenate([pos, neg]), y)
        probes[str(k)] = LinearProbe(torch.eye(D)[k], -a / 2, 1.0)
    task = tasks.Task(part, part, keys, probes)
    sae = PlusMinusSAE(torch.eye(D))
    f = pooled_latents(sae, acts)
    out = tpp_scores(task, f, f, sae.W_dec, [1, 5])
    assert out["tpp_probe_acc"] == 1.0
    for n in (1, 5):
        assert out[f"tpp_threshold_{n}_intended_diff_only"] == 0.5
        assert out[f"tpp_threshold_{n}_unintended_diff_only"] == 0.0
        assert out[f"tpp_threshold_{n}_total_metric"] == 0.5


def test_effects_rank_and_clamp_as_saebench():
    f_pos = torch.tensor([[1.0, 0.0, 2.0, 0.0], [3.0, 0.0, 2.0, 0.0]])
    f_neg = torch.tensor([[0.0, 4.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    W_dec = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.5, 0.0], [1.0, 1.0]])
    w = torch.tensor([2.0, 1.0])
    # mean diffs 2, -3, 2, 0; w·W_dec rows 2, -1, 1, 3
    scr = latent_effects(f_pos, f_neg, w, W_dec, scr=True)
    assert scr.tolist() == [4.0, 3.0, 2.0, 0.0]
    tpp = latent_effects(f_pos, f_neg, w, W_dec, scr=False)
    assert tpp.tolist() == [4.0, 0.0, 2.0, 0.0]
    assert top_latents(scr, 2).tolist() == [0, 1]
    assert top_latents(tpp, 10).tolist() == [0, 2]  # k = min(n, nonzero effects)
    # A negative TPP effect (the clamped difference times a negative w·W_dec): k counts it,
    # but the top k are taken over every latent, so a zero effect ranks above it (SAEBench).
    assert top_latents(torch.tensor([4.0, 0.0, -1.0, 0.0, 2.0]), 10).tolist() == [0, 4, 1]


def test_ablation_matches_decoding_each_token_with_the_error_kept():
    from saelab.sae.registry import build_sae, make_config

    torch.manual_seed(0)
    sae = build_sae(make_config("relu", d_sae=32, d_in=D, seed=3)).eval()
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
        x = torch.randn(11, D)
        offsets = np.array([0, 4, 5, 11])
        latents = torch.tensor([3, 17, 8])
        f = sae.encode(x)
        zeroed = f.clone()
        zeroed[:, latents] = 0
        per_token = sae.decode(zeroed) + (x - sae.decode(f))
        reference = torch.stack([per_token[a:b].mean(0) for a, b in zip(offsets, offsets[1:])])
        acts = TokenActivations(x, offsets)
        got = ablate(acts.pooled(), pooled_latents(sae, acts), sae.W_dec, latents)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)


def test_probe_training_matches_torch_adamw_on_a_linear_layer():
    """The hand-written AdamW steps equal torch's AdamW on nn.Linear with autograd (same init,
    same batches), and the epoch kept is the one with the best test accuracy."""
    gen = torch.Generator().manual_seed(0)
    x, xt = torch.randn(96, 6, generator=gen), torch.randn(40, 6, generator=gen)
    y, yt = (x[:, 0] - x[:, 1] > 0).float(), (xt[:, 0] - xt[:, 1] > 0).float()
    got = train_probe(x, y, xt, yt, batch_size=16, epochs=3, lr=1e-2, l1=1e-3, seed=5)
    gen = torch.Generator().manual_seed(5)
    init = torch.cat([torch.rand(6, generator=gen), torch.rand(1, generator=gen)]) * 2 - 1
    linear = torch.nn.Linear(6, 1)
    with torch.no_grad():
        linear.weight.copy_(init[None, :6] / 6**0.5)
        linear.bias.copy_(init[6:] / 6**0.5)
    opt = torch.optim.AdamW(linear.parameters(), lr=1e-2)
    best = (-1.0, None, None)
    for _ in range(3):
        order = torch.randperm(96, generator=gen)
        for start in range(0, 96, 16):
            idx = order[start : start + 16]
            logits = linear(x[idx]).squeeze(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx])
            loss = loss + 1e-3 * linear.weight.abs().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = float(((linear(xt).squeeze(-1) > 0) == yt.bool()).float().mean())
            if acc > best[0]:
                best = (acc, linear.weight[0].clone(), float(linear.bias))
    assert got.test_accuracy == best[0]
    torch.testing.assert_close(got.weight, best[1], atol=1e-6, rtol=1e-5)
    assert got.bias == pytest.approx(best[2], abs=1e-6)


def test_t_interval_matches_the_textbook_value():
    low, high = t_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(0.975, 2) = 4.302653
    assert high - 2.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert 2.0 - low == pytest.approx(high - 2.0)


def test_settings_refuse_bad_values():
    with pytest.raises(UserError, match="repeats must be at least 2"):
        ScrSettings(repeats=1).validate()
    with pytest.raises(UserError, match="unknown data set 'wiki'"):
        TppSettings(datasets=("wiki",)).validate()
    with pytest.raises(UserError, match="pairs must be 1 to 4"):
        ScrSettings(pairs=5).validate()
    with pytest.raises(UserError, match="does not exist"):
        TppSettings(dataset="/nonexistent/bios.parquet").validate()


def test_scr_and_tpp_run_through_evaluate_on_the_real_model(model, small_store, tmp_path):
    """Smoke: a random SAE of the small store's hook, tiny settings; finite catalogued metrics
    with intervals land in the results store."""
    from saelab import resultstore as results
    from saelab.evaluation.runner import EvalConfig, evaluate
    from saelab.sae.checkpoint import save_sae
    from saelab.sae.registry import build_sae, make_config

    hook = "blocks.2.hook_resid_post"
    sae = build_sae(make_config("topk", d_sae=64, k=8, seed=1), d_in=576)
    folder = save_sae(sae, tmp_path / "sae", meta={"hook_name": hook, "model_name": "smollm2-135m"})
    tiny = dict(datasets=["bios"], train_size=16, test_size=8, repeats=2, probe_epochs=2,
                n_values=[2, 100])  # fmt: skip
    cfg = EvalConfig(
        sae=str(folder), acts=small_store, db=str(tmp_path / "r.duckdb"), evals=["scr", "tpp"],
        settings={"scr": {**tiny, "pairs": 1}, "tpp": {**tiny, "classes": 2}},
    )  # fmt: skip
    out = evaluate(cfg, model=model, log=lambda *_: None)["sae"]
    assert set(out["scr"]) >= {"scr_metric_threshold_2", "scr_dir1_threshold_2"}
    assert "scr_metric_threshold_100" not in out["scr"]  # above d_sae: skipped
    assert "tpp_threshold_2_total_metric" in out["tpp"]
    db = results.ResultsStore(cfg.db)
    rows = results.metrics_long(db)
    assert len(rows) == len(out["scr"]) + len(out["tpp"])
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in rows)


def test_a_local_copy_replaces_the_stand_in_of_its_kind(tmp_path):
    import pandas as pd

    from saelab.evaluation.scr_tpp.run import dataset_paths

    path = tmp_path / "bios.csv"
    pd.DataFrame({"hard_text": ["a", "b"], "profession": [21, 13], "gender": [0, 1]}).to_csv(path)
    assert dataset_paths(ScrSettings(dataset=str(path))) == {"bios": str(path), "reviews": None}
    with pytest.raises(UserError, match="is bios, which `datasets` \\(reviews\\) leaves out"):
        dataset_paths(ScrSettings(dataset=str(path), datasets=("reviews",)))
    other = tmp_path / "other.csv"
    pd.DataFrame({"text": ["a"], "label": [1]}).to_csv(other)
    with pytest.raises(UserError, match="neither Bias in Bios"):
        dataset_paths(TppSettings(dataset=str(other)))
