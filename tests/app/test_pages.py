"""Each page of the web app rendered by Streamlit's AppTest on a real results file."""

from __future__ import annotations

import html
import json
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
    picked = at.selectbox(key="saes_open_pick").value
    at.button(key="saes_open").click().run()
    assert at.query_params["sae"] == picked


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
    near = [b for b in at.button if b.key and b.key.startswith("open_near")]
    assert len(near) == 8 and all(b.label.startswith("\\#") and " · cos " in b.label for b in near)
    (logits,) = [d.value for d in at.dataframe if "▲ token" in d.value.columns]
    assert (logits["▲ z"] > 0).all() and (logits["▼ z"] < 0).all()
    assert list(logits["▲ z"]) == sorted(logits["▲ z"], reverse=True)
    at.button(key="next").click().run()
    assert at.query_params["feature"] == str(feature + 1)


def test_defaults_open_an_evaluated_sae_and_a_live_latent_and_bad_links_say_so(
    app_db, monkeypatch, tmp_path
):
    """A first click lands on data: with an SAE that was never evaluated listed first (the demo's
    circuit SAEs were), the pickers and "Browse features" open an evaluated SAE and an explained
    live latent; a link naming an unknown SAE shows a notice, never a silent substitute."""
    import dataclasses

    from saelab import resultstore as results

    path, ids = app_db
    copy = tmp_path / "results.duckdb"
    shutil.copy(path, copy)
    store = results.ResultsStore(copy, "write")
    bare = dataclasses.replace(results.sae_by_id(store, ids[0]), sae_id="0000", name="aaa-bare")
    with store.transaction() as con:
        results.saes.register_sae(con, bare, store)
        explained = dict(con.execute(
            "SELECT sae_id, count(DISTINCT feature) FROM explanations WHERE status = 'ok' "
            "GROUP BY sae_id"
        ).fetchall())  # fmt: skip
        con.execute("DELETE FROM explanations WHERE sae_id = ?", [ids[0]])  # one SAE explained
    assert results.list_saes(store)[0].name == "aaa-bare"
    best = ids[1]
    assert explained[best] > 0
    at = page("saes", monkeypatch, str(copy))
    assert at.selectbox(key="saes_open_pick").value == best
    at.button(key="saes_open").click().run()
    assert at.query_params["sae"] == best
    feature = int(at.query_params["feature"])
    with store.reading() as con:
        dead, n_expl = con.execute(
            "SELECT f.dead, (SELECT count(*) FROM explanations e WHERE e.sae_id = f.sae_id AND "
            "e.feature = f.feature AND e.status = 'ok') FROM features f WHERE sae_id = ? AND "
            "feature = ?",
            [best, feature],
        ).fetchone()
    assert not dead and n_expl > 0
    at = page("search", monkeypatch, str(copy))
    assert at.sidebar.selectbox(key="pick_search").value == best and not at.warning
    at = page("search", monkeypatch, str(copy), sae="no-such-sae")
    assert any("`?sae=no-such-sae` names no SAE" in w.value for w in at.warning)
    assert at.query_params["sae"] == best
    at = page("feature", monkeypatch, str(copy))  # no parameters: the default SAE and latent
    assert at.title[0].value == f"Feature {feature}" and not at.warning
    for bad in ("999999", "-3", "abc"):
        at = page("feature", monkeypatch, str(copy), sae=best, feature=bad)
        notice = [w.value for w in at.warning]
        assert any(f"`?feature={bad}` is not a latent of" in w for w in notice), notice
        assert at.title[0].value == f"Feature {feature}" and at.query_params["feature"] == str(
            feature
        )


def test_feature_page_runs_typed_text_and_opens_steering(app_db, model, monkeypatch):
    """The "test your own text" box shows the latent's activation on each typed token (values
    on hover, the typed markup escaped), equal to a direct run; "Steer with this feature"
    carries the SAE and latent to the playground."""
    import re

    from saelab import resultstore as results
    from saelab.app import text_activations
    from saelab.app.views import feature as feature_page

    path, ids = app_db
    store = results.ResultsStore(path)
    row = results.sae_by_id(store, ids[-1])
    text = "The cat <b>sat</b> on the mat.\n\nThe dogs run."
    probe = text_activations.load_probe(row, model=model)
    with store.reading() as con:
        live = [r[0] for r in con.execute(
            "SELECT feature FROM features WHERE sae_id = ? AND NOT dead", [row.sae_id]
        ).fetchall()]  # fmt: skip
    expected = {f: text_activations.latent_activations(probe, text, f) for f in live}
    feature = max(live, key=lambda f: max(expected[f].acts))
    assert max(expected[feature].acts) > 0
    monkeypatch.setattr(feature_page, "_model", lambda spec: model)
    at = page("feature", monkeypatch, path, sae=row.sae_id, feature=feature)
    at.text_area(key="test_text_input").input(text)
    at.button(key="test_text_run").click().run()
    assert not at.exception, at.exception
    (box,) = [str(e.proto.body) for e in at.get("html") if "saelab-test-text" in str(e.proto.body)]
    assert "<b>" not in box and "<br>" not in box  # typed markup is text; newlines stay inline
    assert "<b>sat</b>" in html.unescape(re.sub(r"<[^>]+>", "", box))
    shown = [float(v) for v in re.findall(r'title="activation ([^ ]+) ·', box)]
    want = [float(f"{a:.3g}") for a in expected[feature].acts]
    assert shown == want  # plain ASCII: one piece per token
    at.button(key="steer").click().run()
    assert at.query_params["sae"] == row.sae_id and at.query_params["feature"] == str(feature)


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

    path, ids = app_db
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
    found = {b.key.split("_")[2] for b in at.button if b.key and b.key.startswith("open_text")}
    assert found == set(ids)  # every SAE of the file by default
    assert at.query_params["text"] == "fake endpoint"  # the search is a link
    linked = page("search", monkeypatch, path, text="fake endpoint")
    assert {b.key for b in linked.button if b.key and b.key.startswith("open_text")} == {
        b.key for b in at.button if b.key and b.key.startswith("open_text")
    }
    at.button(key="search_range").click().run()
    ranged = {b.key.split("_")[2] for b in at.button if b.key and b.key.startswith("open_range")}
    assert ranged == set(ids)
    at.radio(key="search_scope").set_value(sae_id).run()
    assert not at.exception, at.exception
    ranged = {b.key.split("_")[2] for b in at.button if b.key and b.key.startswith("open_range")}
    assert ranged == {sae_id}
    opened = next(b for b in at.button if b.key and b.key.startswith("open_range"))
    opened.click().run()
    assert at.query_params["feature"] == opened.label.split()[-1]


def test_compare_page_marks_winners(app_db, db_copy, monkeypatch):
    from saelab import resultstore as results

    path = db_copy  # gets a stability run with 95% intervals; the session's file stays as is
    store = results.ResultsStore(path, mode="write")
    for i, sae in enumerate(results.list_saes(store)):
        value, low, high = (0.5, 0.4, 0.6) if i == 0 else (0.3, 0.25, 0.45)
        run = results.EvalRun(
            sae.sae_id, "stability", {}, "", 0, 0.0,
            metrics={"shared_fraction": value, "n_twins": 1.0},
            intervals={"shared_fraction": (low, high)},
        )  # fmt: skip
        results.write_eval_run(store, sae, run)
    at = page("compare", monkeypatch, path)
    assert not at.exception, at.exception
    (table,) = at.dataframe
    names = [c for c in table.value.columns if c not in ("eval", "metric", "better", "definition")]
    assert len(names) == 2
    fvu = table.value.loc["core / fvu", names]
    values = [float(v.lstrip("★ ")) for v in fvu]
    assert [v.startswith("★") for v in fvu] == [v == min(values) for v in values]
    assert not any(v.startswith("★") for v in table.value.loc["core / l0", names])  # no direction
    assert table.value.loc["core / fvu", "metric"] == "fvu"  # named in full, with a definition
    assert table.value.loc["core / fvu", "definition"]
    # the interval beside the value: ± half-width when centred, [low, high] when lopsided
    shared = table.value.loc["stability / shared_fraction", names]
    assert sorted(v.lstrip("★ ") for v in shared) == ["0.3 [0.25, 0.45]", "0.5 ± 0.1"]
    assert shared.iloc[0].startswith("★") != shared.iloc[1].startswith("★")
    assert "±" not in " ".join(table.value.loc["stability / n_twins", names])  # none stored
    frontiers, spreads = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    (bars,) = spreads["data"]  # one panel: the one metric with an interval, error bars to it
    got = {x: (y - lo, y + hi) for x, y, lo, hi in zip(
        bars["x"], bars["y"], bars["error_y"]["arrayminus"], bars["error_y"]["array"])}  # fmt: skip
    assert sorted((round(a, 6), round(b, 6)) for a, b in got.values()) == [(0.25, 0.45), (0.4, 0.6)]
    fvu_points = [t for t in frontiers["data"] if t["xaxis"] == "x" and t["yaxis"] == "y"]
    assert sorted(float(f"{y:.4g}") for t in fvu_points for y in t["y"]) == sorted(values)
    # the chosen SAEs are in the link; a link names them (by name), an unknown one is a notice
    assert sorted(at.query_params["saes"].split(",")) == sorted(names)
    at = page("compare", monkeypatch, path, saes=f"{names[1]},nope")
    by_name = {s.name: s.sae_id for s in results.list_saes(results.ResultsStore(path))}
    assert at.multiselect(key="compare_pick").value == [by_name[names[1]]]
    assert any("`?saes=nope` names no SAE" in w.value for w in at.warning)


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


def plant_circuit(path, ids: list[str], newer: bool) -> None:
    """A three-node circuit shaped as `saelab circuit` writes it; `newer=False` leaves the
    schema-7 columns NULL, as in a migrated older file."""
    import duckdb

    con = duckdb.connect(str(path))
    extra = ", 'reselect', 'ig', 2, 0.998, 0.75, 0.1, 2.5, -0.5" if newer else ""
    con.execute(
        "INSERT INTO circuits (circuit_id, task, method, n_nodes, faithfulness"
        + (", selection, edge_method, exact_nodes, faithfulness_all, edge_correlation, "
           "completeness, m_clean, m_empty" if newer else "")
        + f") VALUES ('c1', 'sva', 'atp', 3, 0.9{extra})"
    )  # fmt: skip
    attributed = ("0.6", "NULL", "NULL", "0.4") if newer else ("NULL",) * 4
    con.execute(
        "INSERT INTO circuit_nodes (circuit_id, node, hook, submodule, layer, pos, feature, "
        "is_error, sae_id, effect, kept, attributed) VALUES "
        f"('c1', 0, 'blocks.2.hook_resid_post', 'resid_post', 2, 3, 5, false, ?, 0.8, true, "
        f"{attributed[0]}), "
        f"('c1', 1, 'blocks.2.hook_resid_post', 'resid_post', 2, 3, -1, true, ?, -0.2, true, "
        f"{attributed[1]}), "
        f"('c1', 2, 'blocks.4.hook_mlp_out', 'mlp_out', 4, -1, 7, false, ?, 0.5, true, "
        f"{attributed[2]}), "
        f"('c1', 3, 'blocks.4.hook_mlp_out', 'mlp_out', 4, -1, 9, false, ?, 0.01, false, "
        f"{attributed[3]})",
        [ids[0], ids[0], ids[1], ids[1]],
    )
    checked = ("0.25, 1.5", "-0.05, 0.0") if newer else ("NULL, NULL", "NULL, NULL")
    con.execute(
        "INSERT INTO circuit_edges (circuit_id, up_node, down_node, effect, measured, switched) "
        f"VALUES ('c1', 0, 2, 0.3, {checked[0]}), ('c1', 1, 2, -0.1, {checked[1]})"
    )
    points = [("faithfulness", 1, 0.4), ("faithfulness", 2, 0.9), ("completeness", 1, 0.7)]
    if newer:
        points += [("faithfulness", 0, 0.0), ("completeness", 0, 1.0)]
    for kind, n, value in points:
        con.execute(
            "INSERT INTO circuit_curves (circuit_id, kind, n_nodes, value) VALUES ('c1', ?, ?, ?)",
            [kind, n, value],
        )
    if newer:
        con.execute(
            "INSERT INTO circuit_curves (circuit_id, kind, n_nodes, value, everything) VALUES "
            "('c1', 'faithfulness', 13830, 0.998, true), ('c1', 'completeness', 13830, 0.0, true)"
        )
    con.close()


def charts(at: AppTest) -> dict[str, dict]:
    """The page's plotly figures by title."""
    import json

    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return {s["layout"]["title"]["text"]: s for s in specs}


def chart(at: AppTest, title_starts: str) -> dict:
    (spec,) = [s for t, s in charts(at).items() if t.startswith(title_starts)]
    return spec


def test_circuits_page_draws_planted_circuit(app_db, monkeypatch, tmp_path):
    """A migrated older file: the newer columns are NULL, and the page says so."""
    path, ids = app_db
    copy = tmp_path / "results.duckdb"
    shutil.copy(path, copy)
    plant_circuit(copy, ids, newer=False)
    at = page("circuits", monkeypatch, str(copy))
    assert not at.exception, at.exception
    markers = chart(at, "Nodes")["data"][-1]
    assert len(markers["x"]) == 3 and len(chart(at, "Nodes")["data"]) == 1 + 2  # nodes + edges
    curves = chart(at, "Faithfulness and completeness")
    assert {t["name"] for t in curves["data"]} == {
        "faithfulness",
        "completeness",
        "kept circuit (3)",
    }
    assert curves["layout"]["xaxis"]["type"] == "log"
    assert not [t for t in curves["data"] if t["name"].startswith("every node")]
    assert not [t for t in charts(at) if t.startswith("Direct effects")]
    shown = texts(at)
    assert "every-node point: not recorded" in shown and "No 0-node point stored" in shown
    assert "selection <b>not recorded</b>" in shown and "edge method <b>not recorded</b>" in shown
    assert "No edge's direct effect was measured" in shown
    assert "Exact re-scoring of nodes: not recorded" in shown
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["faithfulness, every node"] == "not recorded"
    assert metrics["edge correlation (0 checked)"] == "not recorded"
    (nodes,) = [d.value for d in at.dataframe if "label" in d.value.columns]
    assert "attributed" not in nodes.columns and len(nodes) == 3
    at.button(key="circuit_open").click().run()
    assert at.query_params["feature"] == "5" and at.query_params["sae"] == ids[0]


def test_circuits_page_shows_edge_check_curves_and_every_node(app_db, monkeypatch, tmp_path):
    import duckdb
    import pandas as pd

    from saelab.app.circuit_graph import LABEL_EXPLANATION_CHARS
    from saelab.app.tokens import short_text

    path, ids = app_db
    copy = tmp_path / "results.duckdb"
    shutil.copy(path, copy)
    plant_circuit(copy, ids, newer=True)
    con = duckdb.connect(str(copy))  # latent 5 of the first SAE (node 0) gets explanations
    con.execute("UPDATE explanations SET feature = 5 WHERE sae_id = ? AND feature = 0", [ids[0]])
    (explanation,) = con.execute(
        "SELECT explanation FROM explanations WHERE sae_id = ? AND feature = 5 AND status = 'ok' "
        "ORDER BY explainer != 'llm', explainer != 'examples', explainer LIMIT 1",  # preferred
        [ids[0]],
    ).fetchone()
    con.close()
    at = page("circuits", monkeypatch, str(copy))
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["faithfulness, every node (13,830)"] == "0.998"
    assert metrics["edge correlation (2 checked)"] == "0.750"
    assert metrics["faithfulness (3 nodes kept)"] == "0.900"
    shown = texts(at)
    for setting in ("selection <b>reselect</b>", "edge method <b>ig</b>", "node method <b>atp</b>"):
        assert setting in shown
    assert "over the **2 checked edges**" in shown

    edges = chart(at, "Direct effects")
    diagonal, points = edges["data"]
    assert diagonal["name"] == "y = x" and diagonal["x"] == diagonal["y"]
    assert points["x"] == [0.3, -0.1] and points["y"] == [0.25, -0.05]
    assert points["text"][0] == html.escape("L2 resid #5 @3 → L4 mlp #7")
    assert points["customdata"] == ["1.5", "0"] and "switched" in points["hovertemplate"]

    curves = chart(at, "Faithfulness and completeness")
    axis = curves["layout"]["xaxis"]
    assert axis["type"] == "log" and axis["ticktext"][0] == "0"
    faith = next(t for t in curves["data"] if t["name"] == "faithfulness")
    assert faith["x"] == [1, 2]  # the 0-node and every-node points stand apart
    (zero,) = [t for t in curves["data"] if t["name"].startswith("0 nodes")]
    assert 0 < zero["x"][0] == axis["tickvals"][0] < 1 and sorted(zero["y"]) == [0.0, 1.0]
    (every,) = [t for t in curves["data"] if t["name"].startswith("every node")]
    assert every["name"] == "every node (13,830)" and set(every["x"]) == {13830}
    assert every["marker"]["symbol"] != faith.get("marker", {}).get("symbol")
    assert "every node (13,830)" in every["text"]
    assert "At 0 nodes" in shown and "m(empty) = -0.5" in shown

    tag = f"#5 @3 · '{short_text(explanation, LABEL_EXPLANATION_CHARS)}'"
    label = f"L2 resid {tag}"
    graph = chart(at, "Nodes")
    assert html.escape(tag, quote=False) in graph["data"][-1]["text"]
    assert html.escape(label, quote=False) in graph["data"][-1]["hovertext"]
    assert graph["data"][-1]["marker"]["colorbar"]["title"]["text"] == "effect"  # colour scale
    assert "**ε** (a square) is that SAE's error node" in shown and "token position 2" in shown
    (nodes,) = [d.value for d in at.dataframe if "label" in d.value.columns]
    assert nodes.set_index("node").loc[0, "label"] == label
    assert nodes.set_index("node").loc[0, "feature page"] == f"./feature?sae={ids[0]}&feature=5"
    assert pd.isna(nodes.set_index("node").loc[1, "feature page"])  # an error node
    rescored = nodes[nodes["attributed"].notna()]
    assert set(rescored["node"]) == {0, 3} and not rescored.set_index("node").loc[3, "kept"]
    assert "2 nodes re-scored by exact patching" in shown


def test_circuit_markup_is_escaped(app_db, monkeypatch, tmp_path):
    """Stored strings reach the page as text: a planted submodule name is escaped in the
    graph, the edge check and the settings line."""
    import duckdb

    path, ids = app_db
    copy = tmp_path / "results.duckdb"
    shutil.copy(path, copy)
    plant_circuit(copy, ids, newer=True)
    planted = "<img src=x onerror=alert(1)>"
    con = duckdb.connect(str(copy))
    con.execute("UPDATE circuit_nodes SET submodule = ? WHERE node = 0", [planted])
    con.execute("UPDATE circuits SET ablation = ?", [planted])
    con.execute(  # an explanation of node 2's latent (a node label) with markup in it
        "UPDATE explanations SET feature = 7, explanation = '<b>x</b> <i>y' "
        "WHERE sae_id = ? AND feature = 0",
        [ids[1]],
    )
    con.close()
    at = page("circuits", monkeypatch, str(copy))
    assert not at.exception, at.exception
    everything = json.dumps(list(charts(at).values())) + texts(at)
    assert planted not in everything and html.escape(planted) in everything
    nodes = chart(at, "Nodes")["data"][-1]
    assert "#7 · '&lt;b&gt;x&lt;/b&gt; &lt;i&gt;y'" in nodes["text"]
    assert not any("<b>" in t or "<i>" in t for t in nodes["text"] + nodes["hovertext"])


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
