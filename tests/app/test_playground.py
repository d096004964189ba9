"""The Steering page's playground: generate from the page, see clean and steered text and the
run's metrics, and find the run stored through the steering API's writer."""

from __future__ import annotations

import shutil

import pytest

from saelab.app import db as appdb
from saelab.app.tokens import visible

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402


def page(name: str, monkeypatch, path: str) -> AppTest:
    monkeypatch.setenv(appdb.DB_ENV, path)
    script = f"from saelab.app.main import run_page\nrun_page({name!r})\n"
    return AppTest.from_string(script, default_timeout=120).run()


def test_playground_generates_shows_and_stores(app_db, monkeypatch, tmp_path):
    from saelab import resultstore as results

    src, ids = app_db
    path = str(tmp_path / "results.duckdb")
    shutil.copy(src, path)  # the session's file stays as other tests expect it
    with results.ResultsStore(path).reading() as con:
        (before,) = con.execute("SELECT count(*) FROM steering_runs").fetchone()
        (alive,) = con.execute(
            "SELECT min(feature) FROM features WHERE sae_id = ? AND NOT dead", [ids[-1]]
        ).fetchone()
    at = page("steering", monkeypatch, path)
    assert not at.exception, at.exception
    at.text_area(key="pg_prompt").set_value("Paris is <b>the</b> capital of")
    at.selectbox(key="pg_sae").set_value(ids[-1])
    at.text_input(key="pg_feat").set_value(str(alive))
    at.selectbox(key="pg_mode").set_value("add")
    at.number_input(key="pg_strength").set_value(6.0)
    at.number_input(key="pg_tokens").set_value(5)
    at.button(key="pg_go").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]

    with results.ResultsStore(path).reading() as con:
        (after,) = con.execute("SELECT count(*) FROM steering_runs").fetchone()
        run = con.execute(
            "SELECT run_id, kl, feature_act, features, strength FROM steering_runs "
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
    (metrics,) = [d for d in at.dataframe if "metric" in d.value.columns]
    table = dict(zip(metrics.value["metric"], metrics.value["value"]))
    assert float(table["kl"]) == pytest.approx(run[1], rel=1e-3)
    assert float(table["feature_act"]) == pytest.approx(run[2], rel=1e-3)
    assert any(run[0] in str(c.value) for c in at.caption)


def test_playground_rejects_bad_latents(app_db, monkeypatch, tmp_path):
    src, _ = app_db
    path = str(tmp_path / "results.duckdb")
    shutil.copy(src, path)
    at = page("steering", monkeypatch, path)
    at.text_input(key="pg_feat").set_value("three")
    at.button(key="pg_go").click().run()
    assert not at.exception and "whole numbers" in at.error[0].value
