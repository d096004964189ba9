"""The Steering page's playground: generate from the page, see clean and steered text and the
run's metrics, and find the run stored through the steering API's writer."""

from __future__ import annotations

import pytest

from saelab.app import db as appdb
from saelab.app.tokens import visible

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402


def page(name: str, monkeypatch, path: str, **params) -> AppTest:
    monkeypatch.setenv(appdb.DB_ENV, path)
    script = f"from saelab.app.main import run_page\nrun_page({name!r})\n"
    at = AppTest.from_string(script, default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = str(v)
    return at.run()


def test_playground_generates_shows_and_stores(app_db, db_copy, monkeypatch, model):
    """A fixed strength, no baseline: the run is stored and shown, the prompt escaped."""
    from saelab import resultstore as results
    from saelab.app.views import playground

    monkeypatch.setattr(playground, "_model", lambda spec: model)
    src, ids = app_db
    path = db_copy  # the session's file stays as other tests expect it
    with results.ResultsStore(path).reading() as con:
        (before,) = con.execute("SELECT count(*) FROM steering_runs").fetchone()
        (alive,) = con.execute(
            "SELECT min(feature) FROM features WHERE sae_id = ? AND NOT dead", [ids[-1]]
        ).fetchone()
    with results.ResultsStore(path, mode="update").transaction() as con:  # defaults that differ
        con.execute("UPDATE features SET dense = true WHERE sae_id = ? AND feature = ?",
                    [ids[-1], results.default_feature(results.ResultsStore(src), ids[0])])  # fmt: skip
    store = results.ResultsStore(path)
    first, other = (results.default_feature(store, i) for i in (ids[0], ids[-1]))
    assert first != other
    at = page("steering", monkeypatch, path, sae=ids[0])
    assert not at.exception, at.exception
    assert at.text_input(key="pg_feat").value == str(first)
    at.selectbox(key="pg_sae").set_value(ids[-1]).run()  # another SAE: its default latent
    assert at.text_input(key="pg_feat").value == str(other)
    at.text_area(key="pg_prompt").set_value("Paris is <b>the</b> capital of")
    at.text_input(key="pg_feat").set_value(str(alive))
    at.selectbox(key="pg_mode").set_value("add")
    at.radio(key="pg_how").set_value(playground.FIXED)
    at.number_input(key="pg_strength").set_value(6.0)
    at.number_input(key="pg_tokens").set_value(5)
    at.checkbox(key="pg_baseline").uncheck()
    at.button(key="pg_go").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]

    with results.ResultsStore(path).reading() as con:
        (after,) = con.execute("SELECT count(*) FROM steering_runs").fetchone()
        run = con.execute(
            "SELECT run_id, kl, feature_act, features, strength, sweep_id FROM steering_runs "
            "WHERE method = 'sae' ORDER BY created_at DESC LIMIT 1"
        ).fetchone()
        clean, steered, prompt = con.execute(
            "SELECT clean_text, steered_text, prompt FROM steering_samples WHERE run_id = ?",
            [run[0]],
        ).fetchone()
    assert after == before + 2  # the unsteered reference and the SAE run
    assert list(run[3]) == [alive] and run[4] == 6.0 and run[1] > 0

    shown = "\n".join(str(e.proto.body) for e in at.get("html"))
    assert visible(clean) in shown and visible(steered) in shown
    assert "&lt;b&gt;the&lt;/b&gt;" in shown and "<b>the</b>" not in shown  # prompt escaped
    assert prompt == "Paris is <b>the</b> capital of"
    (metrics,) = [d for d in at.dataframe if d.proto.id.endswith("pg_metrics")] or [
        d for d in at.dataframe if "latent activation on text" in d.value.columns
    ][-1:]
    table = metrics.value.set_index("run")
    assert float(table.loc["SAE latent", "KL (nats)"]) == pytest.approx(run[1], rel=1e-3)
    assert float(table.loc["SAE latent", "latent activation on text"]) == pytest.approx(
        run[2], rel=1e-3, abs=1e-6
    )
    assert run[5] in shown  # the stored experiment named under the texts
    assert any("fixed" in m.value and "6" in m.value for m in at.markdown)


def _independent_kl(model, run, sae_folder: str) -> float:
    """KL(clean ‖ steered) of the stored run's neutral texts recomputed here: the latent's
    decoder row times strength × max_act added at the hook after BOS, the two logit sets
    compared with torch's own kl_div."""
    import json

    import torch

    from saelab.sae.checkpoint import load_sae

    sae = load_sae(sae_folder)
    tok, bridge = model.tokenizer, model.bridge
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    rows = [[bos] + tok.encode(t, add_special_tokens=False) for t in json.loads(run.neutral_json)]
    width = min(map(len, rows))
    ids = torch.tensor([r[:width] for r in rows])
    vector = sum(
        run.strength * u * sae.W_dec[f].detach().float()
        for f, u in zip(run.features, run.unit_values)
    )

    def add(h, hook=None):
        h = h.clone()
        h[:, 1:] += vector.to(h.dtype)
        return h

    with torch.no_grad():
        clean = bridge(ids, return_type="logits")[:, 1:]
        point = bridge.hook_dict[run.hook]
        handle = point.add_hook(add)
        try:
            steered = bridge(ids, return_type="logits")[:, 1:]
        finally:
            handle.hook.remove()
            if handle in point.fwd_hooks:
                point.fwd_hooks.remove(handle)
    p = torch.log_softmax(clean.double(), -1)
    q = torch.log_softmax(steered.double(), -1)
    kl = torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1)
    return float(kl.mean())


def test_generate_with_the_defaults_calibrates_and_lists_the_run(
    app_db, db_copy, monkeypatch, model
):
    """Defaults only (a few tokens to stay quick): a live latent, the strength calibrated to the
    target KL, clean, steered and DiffMean texts shown, and the runs list (empty before) showing
    the new experiment by SAE name, latent and strength in the same render."""
    from saelab import resultstore as results
    from saelab.app.views import playground

    monkeypatch.setattr(playground, "_model", lambda spec: model)
    src, _ = app_db
    path = db_copy  # the session's file stays as other tests expect it
    with results.ResultsStore(path, mode="update").transaction() as con:
        con.execute("DELETE FROM steering_samples")
        con.execute("DELETE FROM steering_runs")
    at = page("steering", monkeypatch, path)
    assert not at.exception, at.exception
    assert any("No steering runs" in i.value for i in at.info)
    feature = int(at.text_input(key="pg_feat").value)
    sae_id = at.selectbox(key="pg_sae").value
    at.number_input(key="pg_tokens").set_value(4)
    at.button(key="pg_go").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]

    store = results.ResultsStore(path)
    runs = {r.method: r for r in results.steering_runs(store)}
    assert set(runs) == {"none", "sae", "diffmean"}
    sae_run = runs["sae"]
    stats = results.feature_stats(store, sae_id, [feature])[feature]
    assert sae_run.features == [feature] and not stats.dead and stats.max_act > 0
    assert sae_run.target_kl == playground.TARGET_KL
    assert abs(sae_run.kl - playground.TARGET_KL) <= 0.05 * playground.TARGET_KL
    sae_row = results.sae_by_id(store, sae_id)
    assert _independent_kl(model, sae_run, sae_row.path) == pytest.approx(sae_run.kl, rel=1e-3)
    assert abs(runs["diffmean"].kl - sae_run.kl) <= 0.05 * sae_run.kl

    (sample,) = results.steering_samples(store, sae_run.run_id)
    (dm,) = results.steering_samples(store, runs["diffmean"].run_id)
    shown = "\n".join(str(e.proto.body) for e in at.get("html"))
    for css, text in (("pg-clean", sample.clean_text), ("pg-steered", sample.steered_text),
                      ("pg-diffmean", dm.steered_text)):  # fmt: skip
        assert f"class='{css}'" in shown and visible(text) in shown
    assert any(
        "calibrated" in m.value and f"{sae_run.strength:.3g}" in m.value for m in at.markdown
    )
    assert not any("No steering runs" in i.value for i in at.info)
    (label,) = at.selectbox(key="steer_pick").options
    assert label.startswith(f"{sae_row.name} · latent {feature} · add · strength ")
    assert f"{sae_run.strength:.3g} (target KL 1)" in label and "+ DiffMean" in label
    assert sae_run.run_id not in label and sae_run.sweep_id not in label


def test_run_labels_group_an_experiment():
    """One entry per experiment: the unsteered reference folded in, a sweep as a range."""
    from saelab.app.views.steering import experiments, label
    from saelab.resultstore import SteeringRunRow

    def row(sweep, method, strength, kl, when, target=None):
        return SteeringRunRow(
            run_id=f"{sweep}-{method}-{strength}", sweep_id=sweep, sae_id="abc123", features=[7],
            method=method, mode="add" if method != "none" else None, strength=strength,
            unit=None, unit_values=[], positions="all", hook="h", model="m", model_sha256="",
            kl=kl, feature_act=0.0, concept=0.0, concept_kind="logit_lift", perplexity=1.0,
            target_kl=target, prompts_json="[]", neutral_json="[]", sampling_json="{}",
            config_json="{}", config_hash="", saelab_version="", created_at=when,
        )  # fmt: skip

    runs = [
        row("s1", "none", 0.0, 0.0, "2026-01-01 10:00:00"),
        row("s1", "sae", 0.25, 1.01, "2026-01-01 10:00:01", target=1.0),
        row("s2", "none", 0.0, 0.0, "2026-01-02 09:00:00"),
        row("s2", "sae", 0.5, 2.0, "2026-01-02 09:00:01"),
        row("s2", "sae", 2.0, 9.0, "2026-01-02 09:00:02"),
        row("s2", "diffmean", 3.0, 9.1, "2026-01-02 09:00:03"),
    ]
    groups = experiments(runs)
    assert list(groups) == ["s2", "s1"]  # newest first, each with its unsteered run
    names = {"abc123": "topk-k32"}
    assert label(groups["s1"], names) == (
        "topk-k32 · latent 7 · add · strength 0.25 (target KL 1) · KL 1.01 · 2026-01-01 10:00"
    )
    assert label(groups["s2"], names) == (
        "topk-k32 · latent 7 · add · sweep 0.5–2 (2) · + DiffMean · 2026-01-02 09:00"
    )


def test_playground_rejects_bad_latents(app_db, db_copy, monkeypatch):
    src, _ = app_db
    path = db_copy  # the session's file stays as other tests expect it
    at = page("steering", monkeypatch, path)
    at.text_input(key="pg_feat").set_value("three")
    at.button(key="pg_go").click().run()
    assert not at.exception and "whole numbers" in at.error[0].value


def test_a_dead_latent_gets_a_one_line_notice(app_db, db_copy, monkeypatch):
    """Before any model loads: a latent that never fired is named as such, with a live one."""
    from saelab import resultstore as results

    src, ids = app_db
    path = db_copy  # the session's file stays as other tests expect it
    store = results.ResultsStore(path, mode="update")
    with store.transaction() as con:  # make one latent dead, as the features eval records it
        con.execute(
            "UPDATE features SET dead = true, max_act = 0 WHERE sae_id = ? AND feature = 3",
            [ids[0]],
        )
    at = page("steering", monkeypatch, path)
    at.selectbox(key="pg_sae").set_value(ids[0]).run()
    at.text_input(key="pg_feat").set_value("3")
    at.button(key="pg_go").click().run()
    assert not at.exception, at.exception
    (error,) = at.error
    assert "latent 3" in error.value and "never fired" in error.value and "\n" not in error.value
    live = results.default_feature(store, ids[0])
    assert live != 3 and f"latent {live} is live" in error.value


def test_the_default_latent_is_live_and_explained_first(app_db):
    """`default_feature` (what every page opens) against the rule computed here from every
    latent's row: live, not dense and with enough examples, explained first (best mean score
    first), then the most often active."""
    from saelab import resultstore as results

    src, ids = app_db
    store = results.ResultsStore(src)
    with store.reading() as con:
        score = {
            (sae, feature): value
            for sae, feature, value in con.execute(
                "SELECT e.sae_id, e.feature, avg(s.value) FROM explanations e LEFT JOIN scores s "
                "ON s.sae_id = e.sae_id AND s.feature = e.feature AND s.explainer = e.explainer "
                "AND s.status = 'ok' WHERE e.status = 'ok' AND e.explanation IS NOT NULL "
                "GROUP BY e.sae_id, e.feature"
            ).fetchall()
        }
    for sae_id in ids:
        stats = results.feature_stats(store, sae_id).values()
        live = [r for r in stats if not r.dead and (r.max_act or 0) > 0]

        def rank(r, sae_id=sae_id):
            explained = (sae_id, r.feature) in score
            value = score.get((sae_id, r.feature))
            return (bool(r.dense or r.too_few_examples), not explained,
                    value is None, -(value or 0), -r.n_active, r.feature)  # fmt: skip

        assert results.default_feature(store, sae_id) == min(live, key=rank).feature
