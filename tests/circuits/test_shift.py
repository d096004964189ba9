"""SHIFT: a hand-built case whose outcome is known (tests/circuits/shift_toy.py), attribution
against exact ablation, the LLM judge through a fake endpoint, the bootstrap, and a tiny real
run on the embedded model (store round trip, CLI, app tables, bad input)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from saelab import resultstore as results
from saelab.base.errors import UserError
from saelab.circuits import shift_acts as acts
from saelab.circuits.shift import ShiftConfig, bootstrap_accuracy, raw_probe, run_shift
from saelab.circuits.splice import SplicedModel
from tests.circuits.shift_toy import GENDER_LATENTS, HOOK, ToyModel, toy_data, toy_sae

REAL_HOOK = "blocks.2.hook_resid_post"
TINY = dict(
    n_train=16, n_judge=16, n_test=16, attribution_texts=8, candidates=8, random_draws=1,
    bootstrap=200, min_corr=0.0, batch_size=8, max_length=32, progress=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def toy():
    model = ToyModel()
    return model, SplicedModel(model, {HOOK: toy_sae(model)}, selection="reselect")


def _toy_run(toy, **kw):
    cfg = ShiftConfig(sae=["toy"], candidates=6, progress=False, **kw)
    return run_shift(cfg, data=toy_data(), spliced=toy[1], log=lambda *_: None)


def test_shift_ablates_exactly_the_gender_latents_and_removes_gender(toy):
    r = _toy_run(toy)
    assert r.judge == "correlation"
    assert {f.feature for f in r.ablated} == GENDER_LATENTS
    acc = {(a.method, a.label): a for a in r.accuracies}
    # the biased probe follows gender on the balanced test split
    assert acc["original", "gender"].accuracy > 0.95
    assert acc["original", "profession"].accuracy < 0.65
    # after SHIFT: gender at chance (its interval holds 0.5), profession up to the oracle's
    assert acc["shift", "gender"].ci_low <= 0.5 <= acc["shift", "gender"].ci_high
    assert acc["shift", "profession"].accuracy > acc["original", "profession"].accuracy + 0.25
    assert acc["shift", "profession"].accuracy >= acc["oracle", "profession"].accuracy - 0.05
    # as many random latents do much less
    assert acc["random", "gender"].accuracy > acc["shift", "gender"].accuracy + 0.1
    for a in r.accuracies:
        assert a.ci_low <= a.accuracy <= a.ci_high
        assert a.n_ablated == (
            2 if a.method in ("shift", "shift_retrain", "random") else a.n_ablated
        )


def test_zero_ablation_keeps_the_error_and_removes_the_latents_direction(toy):
    """Independent reference: zeroing the ±g latents (error kept) leaves x − (x·g) g."""
    model, spliced = toy
    data = toy_data(n=8)
    texts = [b.text for b in data.test]
    batch = acts.tokenize(model.tokenizer, texts)
    edits = {HOOK: acts.zero_latents(spliced.saes[HOOK], torch.tensor(sorted(GENDER_LATENTS)))}
    got = acts.pooled(spliced, [batch], HOOK, edits)
    x = model.bridge.embed(batch.tokens)
    g = model.basis[1]
    want = acts.mean_pool(x - (x @ g).unsqueeze(-1) * g, batch.mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    clean = acts.pooled(spliced, [batch], HOOK)
    torch.testing.assert_close(clean, acts.mean_pool(x, batch.mask), atol=1e-6, rtol=1e-6)


def test_attribution_equals_exact_single_latent_ablation_on_a_linear_model(toy):
    """The toy is linear up to a linear probe, so AtP must equal the measured effect."""
    from saelab.evaluation.probing.probes import fit_probe

    model, spliced = toy
    data = toy_data(n=16)
    texts, y = (
        [b.text for b in data.biased_train],
        torch.tensor([b.profession for b in data.biased_train]),
    )
    batch = acts.tokenize(model.tokenizer, texts)
    x = acts.pooled(spliced, [batch], HOOK).numpy()
    probe = raw_probe(fit_probe(x, y.numpy()))
    np.testing.assert_allclose(  # the raw-space probe gives the pipeline's logits
        probe.logits(torch.tensor(x)).numpy(),
        fit_probe(x, y.numpy()).decision_function(x),
        rtol=1e-4,
        atol=1e-4,
    )
    got = acts.attribute_latents(spliced, batch, y, probe, HOOK)[HOOK] / len(texts)

    def metric(edits):
        pooled = acts.pooled(spliced, [batch], HOOK, edits)
        logit = probe.logits(pooled)
        return torch.where(y == 0, logit, -logit).mean()

    base = metric(None)
    sae = spliced.saes[HOOK]
    exact = [metric({HOOK: acts.zero_latents(sae, torch.tensor([j]))}) - base for j in range(6)]
    torch.testing.assert_close(got, torch.stack(exact), atol=1e-4, rtol=1e-4)


def test_no_gender_related_feature_is_a_one_line_error(toy):
    with pytest.raises(UserError, match="no gender-related feature among the top 4.*min_corr"):
        _toy_run(toy, min_corr=1.0)


def test_llm_judge_reads_each_feature_and_decides(toy):
    from saelab.autointerp.fake_endpoint import FakeEndpoint

    def responder(messages):
        prompt = messages[-1]["content"]
        return "Yes." if re.search(r"'(he|she)'", prompt) else "No"

    with FakeEndpoint(responder=responder) as fake:
        r = _toy_run(toy, base_url=fake.base_url, neurons=False, retrain=False, random_draws=0)
    assert r.judge == "llm"
    assert {f.feature for f in r.ablated} == GENDER_LATENTS
    said = {f.feature: f.verdict for f in r.features if f.kind == "latent"}
    assert all(said[j].answer.startswith("Yes") for j in GENDER_LATENTS)
    assert "'she'" in said[2].description + said[3].description


def test_unparsable_llm_answers_fall_back_to_correlation_and_say_so(toy):
    from saelab.autointerp.fake_endpoint import FakeEndpoint
    from saelab.circuits.shift import judge_label

    with FakeEndpoint(responder=lambda m: "This feature is primarily about gender") as fake:
        r = _toy_run(toy, base_url=fake.base_url, neurons=False, retrain=False, random_draws=0)
    assert r.judge == "correlation (every llm answer unparsable)"
    assert {f.feature for f in r.ablated} == GENDER_LATENTS  # the correlation verdicts
    assert judge_label(["llm", "correlation (llm answer unparsable)"]) == "llm+correlation"


def test_bootstrap_interval_against_the_normal_approximation():
    y = np.zeros(400, dtype=int)
    pred = np.r_[np.zeros(280, dtype=int), np.ones(120, dtype=int)]  # 70% right
    value, low, high = bootstrap_accuracy(pred, y, 2000, seed=0)
    half = 1.96 * np.sqrt(0.7 * 0.3 / 400)
    assert value == pytest.approx(0.7)
    assert low == pytest.approx(0.7 - half, abs=0.01) and high == pytest.approx(
        0.7 + half, abs=0.01
    )
    assert bootstrap_accuracy(y, y, 100, 0) == (1.0, 1.0, 1.0)
    # several draws: each example's correctness is averaged over the draws
    assert bootstrap_accuracy(np.stack([y, 1 - y]), y, 0, 0) == (0.5, 0.5, 0.5)


# -- the embedded model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gender_sae_folder(model, tmp_path_factory):
    """A ReLU SAE at blocks.2 whose latents 0 and 1 read ±(mean female − mean male pooled
    activation) of stand-in biographies, centred on their mean; the others are random. (At
    this size the biased probe barely leans on gender, so which latents end up ablated is not
    fixed: the toy above is the case with a known outcome.)"""
    from saelab.circuits.shift_data import load_shift_data
    from saelab.sae.checkpoint import save_sae
    from saelab.sae.registry import build_sae, make_config

    data = load_shift_data(ShiftConfig(sae=["x"], **TINY))
    plain = SplicedModel(model, {})
    batch = acts.tokenize(model.tokenizer, [b.text for b in data.balanced_train])
    pooled = acts.pooled(plain, [batch], REAL_HOOK)
    gender = torch.tensor([b.gender for b in data.balanced_train])
    u = pooled[gender == 1].mean(0) - pooled[gender == 0].mean(0)
    u = u / u.norm()
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(14, model.d_model, generator=g)
    dirs = torch.cat([u[None], -u[None], rand / rand.norm(dim=1, keepdim=True)])
    sae = build_sae(make_config("relu", d_sae=16, seed=0), model.d_model)
    with torch.no_grad():
        sae.W_dec.copy_(dirs)
        sae.encoder_weight.copy_(dirs)
        sae.b_enc.zero_()
        sae.b_enc[2:] = -5.0  # the random latents fire rarely
        sae.b_dec.copy_(pooled.mean(0))
    folder = tmp_path_factory.mktemp("shift") / "gender-sae"
    save_sae(sae, folder, meta={"hook_name": REAL_HOOK, "model_name": "smollm2-135m"})
    return str(folder)


def test_pooled_activations_agree_with_the_scr_evals_pooling(model):
    """Independent reference: `text_acts.pooled_activations` (run_with_cache, length-sorted
    batches) pools exactly as SHIFT's spliced forward does."""
    from saelab.evaluation.datasets.bios import bios_texts
    from saelab.evaluation.datasets.text_acts import pooled_activations

    texts = bios_texts("nurse", "male", 3) + bios_texts("professor", "female", 2)
    plain = SplicedModel(model, {})
    got = acts.pooled(plain, acts.batches(model.tokenizer, texts, 2, 40), REAL_HOOK)
    want = pooled_activations(model, texts, REAL_HOOK, max_length=40)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_real_model_run_is_stored_and_read_back(model, gender_sae_folder, tmp_path):
    db = tmp_path / "r.duckdb"
    cfg = ShiftConfig(sae=[gender_sae_folder], db=str(db), **TINY)
    r = run_shift(cfg, model=model, log=lambda *_: None)
    assert r.ablated and all(
        abs(f.verdict.corr_gender) > abs(f.verdict.corr_profession) for f in r.ablated
    )
    for a in r.accuracies:
        assert 0 <= a.ci_low <= a.accuracy <= a.ci_high <= 1
    store = results.ResultsStore(db, "read")
    (run,) = results.shift_runs(store)
    assert run.run_id == r.run_id and run.judge == "correlation"
    assert run.n_ablated == len(r.ablated) and run.probe_hook == REAL_HOOK
    assert run.config["n_train"] == 16
    rows = {(a.method, a.label): a for a in results.shift_accuracies(store, r.run_id)}
    assert set(rows) == {(a.method, a.label) for a in r.accuracies}
    for a in r.accuracies:
        assert rows[a.method, a.label].accuracy == pytest.approx(a.accuracy)
        assert rows[a.method, a.label].ci_high == pytest.approx(a.ci_high)
    ablated = results.shift_features(store, r.run_id, "latent", spurious_only=True)
    assert [f.feature for f in ablated] == [f.feature for f in r.ablated]
    assert all(f.sae_id == run.sae_ids[0] for f in ablated)
    assert results.find_sae(store, run.sae_ids[0]).hook == REAL_HOOK  # registered
    # the app's tables: escaped-free plain cells, links to the Feature page
    from saelab.app.shift_section import accuracy_rows, feature_rows

    table = accuracy_rows(results.shift_accuracies(store, r.run_id))
    assert table[0]["classifier"].startswith("original") and table[-1]["classifier"].startswith(
        "oracle"
    )
    links = feature_rows(ablated, {})
    assert (
        links[0]["feature page"] == f"./feature?sae={run.sae_ids[0]}&feature={ablated[0].feature}"
    )
    # writing the same run again replaces it
    store = results.ResultsStore(db, "write")
    accs = results.shift_accuracies(store, r.run_id)
    feats = results.shift_features(store, r.run_id)
    results.write_shift(store, run, accs, feats, [])
    assert len(results.shift_runs(store)) == 1
    assert len(results.shift_accuracies(store, r.run_id)) == len(accs)


def test_cli_prints_the_table_and_bad_input_is_one_line(
    model, gender_sae_folder, tmp_path, monkeypatch, capsys
):
    import saelab.activations.models
    from saelab.cli import main

    monkeypatch.setattr(saelab.activations.models, "load_model", lambda *a, **k: model)
    db = tmp_path / "cli.duckdb"
    skip = ("progress", "random_draws")
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k not in skip]
    assert main(["shift", "--sae", gender_sae_folder, "--db", str(db), *args, "--no-progress",
                 "--no-neurons", "--no-retrain", "--random-draws", "0"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "SHIFT" in out and "oracle (balanced probe)" in out and "neurons" not in out
    assert re.search(r"original \(biased probe\)\s+0\s+\d\.\d{3} \[", out)
    assert f"written to {db}" in out
    assert main(["shift", "--sae", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "neither an SAE folder" in err
    assert main(["shift", "--sae", gender_sae_folder, "--judge", "llm"]) == 2
    assert "--base-url" in capsys.readouterr().err
    assert main(["shift", "--sae", gender_sae_folder, "--professions", "nurse", "wizard"]) == 2
    assert "unknown profession 'wizard'" in capsys.readouterr().err
    import saelab

    assert saelab.ShiftConfig is ShiftConfig
    with pytest.raises(UserError, match="ShiftConfig"):
        saelab.shift({"sae": [gender_sae_folder]})
