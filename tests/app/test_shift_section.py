"""The Circuits page's SHIFT section on a results file holding one planted SHIFT run."""

from __future__ import annotations

import shutil

from tests.app.test_pages import page, texts


def test_circuits_page_lists_shift_runs_with_escaped_text_and_feature_links(
    app_db, monkeypatch, tmp_path
):
    from saelab import resultstore as results

    path, ids = app_db
    copy = tmp_path / "shift.duckdb"
    shutil.copy(path, copy)
    store = results.ResultsStore(copy, "write")
    (explained,) = store.query(
        "SELECT sae_id, feature, explanation FROM explanations WHERE status = 'ok' "
        "ORDER BY ALL LIMIT 1"
    )
    sae_id, feature = explained["sae_id"], explained["feature"]
    run = results.ShiftRunRow(
        run_id="s1", model="smollm2-135m", model_sha256="x", sae_ids=[sae_id],
        hooks=["blocks.2.hook_resid_post"], probe_hook="blocks.2.hook_resid_post",
        professions=["professor", "nurse"], data_source="<b>stand-in</b>", data_hash="h",
        judge="correlation", n_candidates=5, n_ablated=1, n_train=16, n_test=16,
        train_accuracy=1.0, interval="bootstrap over test examples", config_json="{}",
        config_hash="c", seconds=1.0, saelab_version="x",
    )  # fmt: skip
    accs = [
        results.ShiftAccuracyRow("s1", m, label, v, v - 0.1, v + 0.1, n)
        for m, n, prof, gen in (("original", 0, 0.6, 0.9), ("shift", 1, 0.85, 0.55))
        for label, v in (("profession", prof), ("gender", gen))
    ]
    feats = [
        results.ShiftFeatureRow(
            "s1", "latent", 0, "blocks.2.hook_resid_post", sae_id, feature, 0.3, True,
            "correlation", 0.9, 0.05, None, None,
        ),
        results.ShiftFeatureRow(
            "s1", "latent", 1, "blocks.2.hook_resid_post", sae_id, feature + 1, 0.2, False,
            "correlation", 0.1, 0.6, None, None,
        ),
    ]  # fmt: skip
    results.write_shift(store, run, accs, feats, [])
    at = page("circuits", monkeypatch, str(copy))
    assert not at.exception, at.exception
    shown = texts(at)
    assert (
        "SHIFT" in shown and "&lt;b&gt;stand-in&lt;/b&gt;" in shown and "<b>stand-in" not in shown
    )
    table = next(d.value for d in at.dataframe if "classifier" in d.value.columns)
    assert list(table["classifier"]) == ["original (biased probe)", "SHIFT"]
    assert list(table["profession accuracy"]) == [0.6, 0.85]
    ablated = next(d.value for d in at.dataframe if "latent" in d.value.columns)
    assert list(ablated["latent"]) == [feature]  # only the spurious one
    preferred = results.explanation_texts(store, sae_id, [feature])[feature]
    assert ablated["explanation"][0] == preferred
    assert ablated["feature page"][0] == f"./feature?sae={sae_id}&feature={feature}"
