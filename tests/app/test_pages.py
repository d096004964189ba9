"""Each page of the web app rendered by Streamlit's AppTest on a real results file."""

from __future__ import annotations

import html
import shutil

import pytest

from saelab.app import db as appdb

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

SCRIPT = "from saelab.app.main import run_page\nrun_page({page!r})\n"


def page(name: str, monkeypatch, path: str, **params) -> AppTest:
    monkeypatch.setenv(appdb.DB_ENV, path)
    at = AppTest.from_string(SCRIPT.format(page=name), default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = str(v)
    return at.run()


def texts(at: AppTest) -> str:
    parts = []
    for kind in ("title", "markdown", "caption", "info", "warning", "error", "text", "subheader"):
        parts += [str(getattr(e, "value", "")) for e in getattr(at, kind)]
    parts += [str(e.proto.body) for e in at.get("html")]
    return "\n".join(parts)


def test_saes_page(app_db, monkeypatch):
    path, ids = app_db
    at = page("saes", monkeypatch, path)
    assert not at.exception, at.exception
    (table,) = [d for d in at.dataframe if "l0" in d.value.columns]
    assert set(table.value["sae_id"]) == set(ids)
    assert table.value["fvu"].notna().all() and table.value["ce_loss_score"].notna().all()
    assert len(at.get("plotly_chart")) == 3  # two frontiers, dead/dense
    at.button(key="saes_open").click().run()
    assert at.query_params["sae"] == ids[0]


def test_feature_page_shows_examples_explanations_and_neighbours(app_db, monkeypatch):
    from saelab import resultstore as results

    path, ids = app_db
    with results.ResultsStore(path).reading() as con:
        feature, sae_id = con.execute(
            "SELECT feature, sae_id FROM explanations WHERE status = 'ok' ORDER BY ALL LIMIT 1"
        ).fetchone()
        n_examples = con.execute(
            "SELECT count(*) FROM feature_examples WHERE sae_id = ? AND feature = ? "
            "AND kind = 'top'",
            [sae_id, feature],
        ).fetchone()[0]
        expl = con.execute(
            "SELECT explanation FROM explanations WHERE sae_id = ? AND feature = ? "
            "AND status = 'ok'",
            [sae_id, feature],
        ).fetchall()
    at = page("feature", monkeypatch, path, sae=sae_id, feature=feature)
    assert not at.exception, at.exception
    assert at.title[0].value == f"Feature {feature}"
    html_blocks = [str(e.proto.body) for e in at.get("html")]
    windows = [b for b in html_blocks if "saelab-window" in b]
    assert windows and sum(b.count("saelab-window") for b in windows) >= n_examples
    assert "�" not in "".join(windows)
    shown = "\n".join(html_blocks)
    for (text,) in expl:
        assert html.escape(text) in shown
    scores = [d.value for d in at.dataframe if "scorer" in d.value.columns]
    assert scores and {"ci_low", "ci_high", "n_windows", "n_failures", "interval"} <= set(
        scores[0].columns
    )
    assert any(b.label.startswith("feature ") for b in at.button)  # nearest features
    at.button(key="next").click().run()
    assert at.query_params["feature"] == str(feature + 1)


def test_feature_page_says_dead_and_handles_missing_checkpoint(app_db, monkeypatch, tmp_path):
    from saelab import resultstore as results

    path, _ = app_db
    copy = tmp_path / "results.duckdb"
    shutil.copy(path, copy)
    with results.ResultsStore(copy, "write").transaction() as con:
        feature, sae_id = con.execute(
            "SELECT feature, sae_id FROM features WHERE dead ORDER BY ALL LIMIT 1"
        ).fetchone()
        con.execute("UPDATE saes SET path = ? WHERE sae_id = ?", [str(tmp_path / "gone"), sae_id])
    at = page("feature", monkeypatch, str(copy), sae=sae_id, feature=feature)
    assert not at.exception, at.exception
    assert any("Dead latent" in w.value for w in at.warning)
    assert not [e for e in at.get("html") if "saelab-window" in str(e.proto.body)]
    assert any("no longer holds it" in c.value for c in at.caption)


def test_search_page(app_db, monkeypatch):
    from saelab import resultstore as results

    path, _ = app_db
    with results.ResultsStore(path).reading() as con:
        sae_id, feature, tokens, acts, sha = con.execute(
            "SELECT e.sae_id, e.feature, e.tokens, e.acts, s.model_sha256 FROM feature_examples e "
            "JOIN saes s USING (sae_id) WHERE e.kind = 'top' ORDER BY e.activation DESC LIMIT 1"
        ).fetchone()
    token = results.token_strings(
        results.ResultsStore(path), sha, [tokens[max(range(len(acts)), key=acts.__getitem__)]]
    )
    at = page("search", monkeypatch, path, sae=sae_id)
    assert not at.exception, at.exception
    at.text_input(key="search_token").input(next(iter(token.values()))).run()
    assert not at.exception, at.exception
    assert f"feature {feature}" in [b.label for b in at.button]
    at.text_input(key="search_text").input("fake endpoint").run()
    assert any(b.key and b.key.startswith("open_text") for b in at.button)
    at.button(key="search_range").click().run()
    assert any(b.key and b.key.startswith("open_range") for b in at.button)
    opened = next(b for b in at.button if b.key and b.key.startswith("open_range"))
    opened.click().run()
    assert at.query_params["feature"] == opened.label.split()[-1]


def test_compare_page_marks_winners(app_db, monkeypatch):
    path, _ = app_db
    at = page("compare", monkeypatch, path)
    assert not at.exception, at.exception
    (table,) = at.dataframe
    fvu = table.value.loc["core / fvu"]
    values = [float(v.lstrip("★ ")) for v in fvu]
    assert [v.startswith("★") for v in fvu] == [v == min(values) for v in values]
    assert not any(v.startswith("★") for v in table.value.loc["core / l0"])  # no direction


def test_circuits_empty_state_and_steering_runs(app_db, monkeypatch, tmp_path):
    from saelab import resultstore as results

    path, _ = app_db
    at = page("circuits", monkeypatch, path)
    assert not at.exception and "No circuits" in at.info[0].value
    at = page("steering", monkeypatch, path)
    assert not at.exception, at.exception
    with results.ResultsStore(path).reading() as con:
        clean, steered = con.execute(
            "SELECT clean_text, steered_text FROM steering_samples LIMIT 1"
        ).fetchone()
    shown = "\n".join(str(e.proto.body) for e in at.get("html"))
    assert html.escape(clean) in shown and html.escape(steered) in shown
    empty = tmp_path / "empty.duckdb"
    shutil.copy(path, empty)
    with results.ResultsStore(empty, "write").transaction() as con:
        con.execute("DELETE FROM steering_samples")
        con.execute("DELETE FROM steering_runs")
    at = page("steering", monkeypatch, str(empty))
    assert not at.exception and "No steering runs" in at.info[0].value


def test_circuits_page_draws_planted_circuit(app_db, monkeypatch, tmp_path):
    import duckdb

    path, ids = app_db
    copy = tmp_path / "results.duckdb"
    shutil.copy(path, copy)
    con = duckdb.connect(str(copy))  # rows shaped as `saelab circuit` writes them
    con.execute(
        "INSERT INTO circuits (circuit_id, task, method, n_nodes, faithfulness) "
        "VALUES ('c1', 'sva', 'atp', 3, 0.9)"
    )
    con.execute(
        "INSERT INTO circuit_nodes (circuit_id, node, hook, submodule, layer, pos, feature, "
        "is_error, sae_id, effect, kept) VALUES "
        "('c1', 0, 'blocks.2.hook_resid_post', 'resid_post', 2, 3, 5, false, ?, 0.8, true), "
        "('c1', 1, 'blocks.2.hook_resid_post', 'resid_post', 2, 3, -1, true, ?, -0.2, true), "
        "('c1', 2, 'blocks.4.hook_mlp_out', 'mlp_out', 4, -1, 7, false, ?, 0.5, true), "
        "('c1', 3, 'blocks.4.hook_mlp_out', 'mlp_out', 4, -1, 9, false, ?, 0.01, false)",
        [ids[0], ids[0], ids[1], ids[1]],
    )
    con.execute(
        "INSERT INTO circuit_edges (circuit_id, up_node, down_node, effect) "
        "VALUES ('c1', 0, 2, 0.3), ('c1', 1, 2, -0.1)"
    )
    con.execute(
        "INSERT INTO circuit_curves (circuit_id, kind, n_nodes, value) VALUES "
        "('c1', 'faithfulness', 1, 0.4), ('c1', 'faithfulness', 2, 0.9), "
        "('c1', 'completeness', 1, 0.7)"
    )
    con.close()
    at = page("circuits", monkeypatch, str(copy))
    assert not at.exception, at.exception
    graph, curves = at.get("plotly_chart")
    import json

    spec = json.loads(graph.proto.spec)
    markers = spec["data"][-1]
    assert len(markers["x"]) == 3 and len(spec["data"]) == 1 + 2  # nodes + two edges
    assert {t["name"] for t in json.loads(curves.proto.spec)["data"]} == {
        "faithfulness",
        "completeness",
    }
    at.button(key="circuit_open").click().run()
    assert at.query_params["feature"] == "5" and at.query_params["sae"] == ids[0]


def test_missing_older_and_busy_files_give_messages(app_db, monkeypatch, tmp_path):
    import subprocess
    import sys

    import duckdb

    at = page("saes", monkeypatch, str(tmp_path / "nope.duckdb"))
    assert not at.exception and "no results database" in at.error[0].value

    older = tmp_path / "older.duckdb"
    con = duckdb.connect(str(older))
    con.execute("CREATE TABLE schema_info (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO schema_info VALUES ('schema_version', '1')")
    con.close()
    at = page("saes", monkeypatch, str(older))
    assert not at.exception and "older schema" in at.error[0].value
    assert "--migrate" in at.error[0].value

    path, _ = app_db
    busy = tmp_path / "busy.duckdb"
    shutil.copy(path, busy)
    monkeypatch.setattr(appdb, "BUSY_RETRY_S", 0.3)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(busy)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        at = page("saes", monkeypatch, str(busy))
        assert not at.exception, at.exception
        assert "Busy, retry" in at.warning[0].value
    finally:
        holder.kill()
        holder.wait()
    at.button(key="busy_retry").click().run()
    assert not at.exception and not at.warning and at.title[0].value == "SAEs"


HOLD_LOCK = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("holding", flush=True)
time.sleep(60)
"""
