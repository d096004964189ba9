"""The Graph page and the HTML export of an attribution graph: the pure layout (pruning against a
brute-force reference, every edge drawn once with its sign, escaping, speed at a few thousand
edges), the page under AppTest on a planted graph whose latents belong to the fixture file's
SAEs (their examples and explanations show), the standalone HTML file, and the page in a real
browser (screenshot; planted markup shows as text and never runs)."""

from __future__ import annotations

import html
import itertools
import json
import random
import shutil
import time

import pytest

from saelab import resultstore as results
from saelab.app import attribution_graph as ag
from saelab.resultstore import GraphEdgeRow, GraphNodeRow, GraphRunRow
from tests.app.test_browser import Server, browser, open_page, settle  # noqa: F401 (fixture)
from tests.app.test_pages import chart, page, texts

SCRIPT_PROMPT_TOKEN = "<script>window.__xss = 5</script>"
BOLD_EXPLANATION = "fires on <b>bold</b> <script>window.__xss = 6</script> text"
N_LAYERS = 30
"""The embedded model's layer count: the logits' layer."""


def make_graph(
    sae_ids: list[str],
    n_tokens: int = 6,
    layers: int = 8,
    latents_per_layer: int = 3,
    n_edges: int = 120,
    seed: int = 0,
    tokens: list[str] | None = None,
) -> tuple[GraphRunRow, list[GraphNodeRow], list[GraphEdgeRow]]:
    """A graph shaped as `saelab graph` writes it: embeddings, latents of the given SAEs
    (latents 0-3 among them: the fixture file explains those), one error per layer at the
    last position and a few others, two target logits; edges run from lower to higher layers
    and from earlier to later (or the same) positions, both signs."""
    rng = random.Random(seed)
    tokens = tokens or ["<|im_start|>", "The", " capital", " of", " France", " is"][:n_tokens]
    tokens = (tokens + [f" t{i}" for i in range(n_tokens)])[:n_tokens]
    gid = f"g{seed:04d}{n_tokens:03d}"
    last = n_tokens - 1

    def node(name, kind, layer, pos, feature=None, sae=None, act=None, label=None, infl=None):
        return GraphNodeRow(
            graph_id=gid, node=name, kind=kind, layer=layer, pos=pos, feature=feature,
            sae_id=sae, hook=None if sae is None else f"blocks.{layer}.ln2.hook_normalized",
            activation=act, influence=rng.uniform(0.01, 1.0) if infl is None else infl,
            label=label,
        )  # fmt: skip

    nodes = [node(f"emb@{p}", "embedding", -1, p, feature=1000 + p, label=tokens[p])
             for p in range(n_tokens)]  # fmt: skip
    features = itertools.cycle([0, 1, 2, 3, 17, 40])
    for layer in range(layers):
        for i in range(latents_per_layer):
            f = next(features)
            pos = last if i == 0 else rng.randrange(n_tokens)
            sae = sae_ids[(layer + i) % len(sae_ids)]
            name = f"L{layer}.f{f}@{pos}"
            if any(n.node == name for n in nodes):
                continue
            nodes.append(node(name, "latent", layer, pos, f, sae, rng.uniform(0.5, 8.0)))
        nodes.append(node(f"err.L{layer}@{last}", "error", layer, last, act=rng.uniform(0.1, 2)))
    for layer in (1, 4):
        nodes.append(node(f"err.L{layer}@1", "error", layer, 1, act=0.3))
    nodes.append(node("logit.3681", "logit", N_LAYERS, last, 3681, act=0.62, label=" Paris",
                      infl=0.0))  # fmt: skip
    nodes.append(node("logit.260", "logit", N_LAYERS, last, 260, act=0.07, label=" the",
                      infl=0.0))  # fmt: skip
    pairs = [
        (a, b) for a in nodes for b in nodes
        if a.kind != "logit" and b.kind in ("latent", "logit") and a.layer < b.layer
        and a.pos <= b.pos
    ]  # fmt: skip
    edges = [
        GraphEdgeRow(gid, a.node, b.node, rng.choice([-1, 1]) * rng.uniform(0.01, 3.0))
        for a, b in rng.sample(pairs, min(n_edges, len(pairs)))
    ]
    run = GraphRunRow(
        graph_id=gid, model="smollm2-135m", model_sha256="0" * 64,
        prompt="".join(tokens[1:]), tokens=list(range(1000, 1000 + n_tokens)),
        token_strs=tokens, targets=[3681, 260], target_strs=[" Paris", " the"],
        target_probs=[0.62, 0.07], sae_ids=sae_ids, hooks=["blocks.2.hook_resid_post"] * len(sae_ids),
        dictionary="transcoders", node_budget=64, edge_budget=512, n_nodes_total=1234,
        n_nodes=len(nodes), n_edges=len(edges), replacement_score=0.71,
        completeness_score=0.88, replacement_score_pruned=0.64, completeness_score_pruned=0.83,
        config_json=json.dumps({"node_budget": 64, "note": "</script><b>cfg</b>"}),
        config_hash="c" * 16, seconds=1.5, saelab_version="test",
    )  # fmt: skip
    return run, nodes, edges


def store_graph(path, graph) -> None:
    run, nodes, edges = graph
    results.write_graph(results.ResultsStore(path, "write"), run, nodes, edges, [])


# -- pure layout -------------------------------------------------------------------------------


def brute_force_prune(nodes, edges, node_t, edge_t):
    """The reference: embeddings and logits, and the smallest set of the other nodes, most
    influential first, whose influence reaches the share (checked over every prefix length),
    then the same for edges; isolated nodes (not logits) dropped."""
    ends = {n.node for n in nodes if n.kind in ("embedding", "logit")}
    others = sorted((n for n in nodes if n.node not in ends), key=lambda n: (-n.influence, n.node))
    total = sum(n.influence for n in others)
    k = next(i for i in range(len(others) + 1)
             if sum(n.influence for n in others[:i]) >= node_t * total - 1e-12)  # fmt: skip
    kept = {n.node for n in others[:k]} | ends
    between = sorted((e for e in edges if e.source in kept and e.target in kept),
                     key=lambda e: (-abs(e.weight), e.source, e.target))  # fmt: skip
    total_w = sum(abs(e.weight) for e in between)
    m = next(i for i in range(len(between) + 1)
             if sum(abs(e.weight) for e in between[:i]) >= edge_t * total_w - 1e-12)  # fmt: skip
    kept_edges = between[:m]
    touched = {e.source for e in kept_edges} | {e.target for e in kept_edges}
    kept = {n for n in kept if n in touched} | {n.node for n in nodes if n.kind == "logit"}
    return kept, {(e.source, e.target) for e in kept_edges}


@pytest.mark.parametrize("node_t,edge_t", [(0.5, 0.9), (0.8, 0.98), (1.0, 1.0), (0.05, 0.5)])
def test_prune_matches_a_brute_force_reference(node_t, edge_t):
    _, nodes, edges = make_graph(["a", "b"], seed=3)
    kept_nodes, kept_edges = ag.prune(nodes, edges, ag.Pruning(node_t, edge_t))
    want_nodes, want_edges = brute_force_prune(nodes, edges, node_t, edge_t)
    assert {n.node for n in kept_nodes} == want_nodes
    assert {(e.source, e.target) for e in kept_edges} == want_edges
    assert {"logit.3681", "logit.260"} <= want_nodes  # targets always stay
    assert {n.node for n in kept_nodes if n.kind == "embedding"} == {
        e.source for e in kept_edges if e.source.startswith("emb@")
    }  # every embedding an edge leaves from
    if node_t == 1.0 and edge_t == 1.0:
        assert len(kept_edges) == len(edges)
    capped = ag.prune(nodes, edges, ag.Pruning(node_t, edge_t, max_edges=7, drop_isolated=False))
    assert capped[1] == kept_edges[:7]


def test_layout_puts_layers_in_rows_and_tokens_in_columns_and_draws_each_edge_once():
    run, nodes, edges = make_graph(["a", "b"], seed=1)
    graph = ag.layout(run, nodes, edges)
    assert graph.layers == [-1, *range(8), N_LAYERS] and graph.n_layers == N_LAYERS
    row = {layer: i for i, layer in enumerate(graph.layers)}
    for n in graph.nodes:
        if n.kind != "logit":  # in its token's column
            assert abs(n.x - n.row.pos) <= ag.CELL_WIDTH / 2 + 1e-9, n.id
        assert abs(n.y - row[n.row.layer]) < 0.45, n.id  # in its layer's row
    paris, the = sorted((n for n in graph.nodes if n.kind == "logit"), key=lambda n: -n.x)
    assert (paris.id, paris.x, the.x) == ("logit.3681", 5, 5 - ag.LOGIT_STEP)  # likeliest last
    spots = [(round(n.x, 6), round(n.y, 6)) for n in graph.nodes]
    assert len(set(spots)) == len(spots)  # no two nodes on one spot
    fig = ag.figure(graph).to_plotly_json()
    where = {(round(n.x, 6), round(n.y, 6)): n.id for n in graph.nodes}
    drawn = []
    lines = [t for t in fig["data"] if t["mode"] == "lines"]
    assert len(lines) <= 2 * len(ag.EDGE_WIDTHS)  # a few traces, not one per edge
    for t in lines:
        positive = t["line"]["color"] == ag.SIGN_COLORS[True]
        xs, ys = list(t["x"]), list(t["y"])
        assert xs[2::3] == [None] * (len(xs) // 3)
        for i in range(0, len(xs), 3):
            a = where[(round(xs[i], 6), round(ys[i], 6))]
            b = where[(round(xs[i + 1], 6), round(ys[i + 1], 6))]
            drawn.append((a, b, positive))
    assert sorted(drawn) == sorted((e.source, e.target, e.weight >= 0) for e in edges)
    markers = {t["name"]: t for t in fig["data"] if t["mode"] != "lines"}
    assert set(markers) == {s["name"] for s in ag.KIND_STYLE.values()}
    latent = markers["latent"]
    biggest = max(range(len(latent["x"])), key=lambda i: latent["marker"]["size"][i])
    node_id, sae_id, feature = latent["customdata"][biggest]
    top = max((n for n in nodes if n.kind == "latent"), key=lambda n: n.influence)
    assert (node_id, sae_id, feature) == (top.node, top.sae_id, top.feature)
    ticks = fig["layout"]["yaxis"]["ticktext"]
    assert ticks[0] == "embeddings" and ticks[-1] == "logits" and ticks[1] == "L0"


def test_markup_is_escaped_in_the_figure_and_the_html_export(tmp_path):
    tokens = ["<|im_start|>", SCRIPT_PROMPT_TOKEN, " <b>x</b>", " of", " &amp;", " is"]
    run, nodes, edges = make_graph(["a"], tokens=tokens, seed=2)
    explanations = {("a", 0): BOLD_EXPLANATION, ("a", 1): "<img src=x onerror=alert(1)>"}
    fig = ag.figure(ag.layout(run, nodes, edges, explanations))
    shown = json.dumps(fig.to_plotly_json()["data"]) + json.dumps(fig.layout.xaxis.ticktext)
    for raw in ("<script>", "<b>", "<img"):
        assert raw not in shown, raw
    assert html.escape(BOLD_EXPLANATION[:30], quote=False) in shown
    assert "&amp;amp;" in shown  # a token that reads "&amp;" shows as those five characters
    page_html = ag.graph_html(run, nodes, edges, explanations)
    body = page_html.split("<body>", 1)[1]
    outside_scripts = "".join(part.split("</script>")[-1] for part in body.split("<script"))
    for raw in (SCRIPT_PROMPT_TOKEN, "<b>bold</b>", "<b>cfg</b>", "<img src=x", "<b>x</b>"):
        assert raw not in outside_scripts, raw
    assert html.escape(SCRIPT_PROMPT_TOKEN) in body
    assert html.escape(BOLD_EXPLANATION) in body  # the node table's explanation column
    # inside the figure's script, plotly's JSON writes "<" as \u003c: nothing can close the tag
    assert body.count("</script>") == body.count("<script")


def test_figure_of_hundreds_of_nodes_and_thousands_of_edges_is_quick():
    run, nodes, edges = make_graph(
        ["a", "b"], n_tokens=32, layers=30, latents_per_layer=14, n_edges=4000, seed=4
    )
    assert len(nodes) > 400 and len(edges) == 4000
    start = time.perf_counter()
    kept_nodes, kept_edges = ag.prune(nodes, edges, ag.Pruning(1.0, 1.0))
    fig = ag.figure(ag.layout(run, kept_nodes, kept_edges))
    spec = fig.to_json()
    seconds = time.perf_counter() - start
    print(f"{len(nodes)} nodes, {len(edges)} edges: {seconds:.3f} s, {len(spec) / 1e6:.2f} MB")
    assert len(fig.data) <= 2 * len(ag.EDGE_WIDTHS) + len(ag.KINDS)
    assert seconds < 3.0  # about 0.1 s on a quiet core


# -- the page -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph_db(app_db, tmp_path_factory):
    """(db path, sae ids, graph): the fixture file with one planted graph whose latents are
    latents of its SAEs, and a planted explanation with markup on latent 17 of the first."""
    path, ids = app_db
    db = tmp_path_factory.mktemp("graph") / "results.duckdb"
    shutil.copy(path, db)
    graph = make_graph(ids, tokens=["<|im_start|>", "The", " capital", " of", " France", " is"])
    store_graph(db, graph)
    with results.ResultsStore(db, "write").transaction() as con:
        con.execute(
            "INSERT INTO explanations (sae_id, feature, explainer, status, explanation, "
            "n_examples) VALUES (?, 17, 'llm', 'ok', ?, 3)",
            [ids[0], BOLD_EXPLANATION],
        )
    return str(db), ids, graph


def test_graph_page_empty_state_names_the_command(app_db, monkeypatch):
    at = page("graph", monkeypatch, app_db[0])
    assert not at.exception, at.exception
    assert "saelab graph --transcoders DIR... --prompt TEXT --db FILE" in at.info[0].value


def test_graph_page_draws_the_graph_and_shows_a_latents_dashboard(graph_db, monkeypatch):
    path, ids, (run, nodes, edges) = graph_db
    at = page("graph", monkeypatch, path)
    assert not at.exception, at.exception
    assert at.query_params["graph"] == run.graph_id
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["replacement · unpruned"] == "0.710"
    assert metrics["completeness · unpruned"] == "0.880"
    assert metrics["replacement · pruned"] == "0.640"
    assert metrics["completeness · pruned"] == "0.830"
    assert "1,234 nodes" in at.metric[0].proto.help
    shown = texts(at)
    assert "&#x27; Paris&#x27;</b> p 0.62" in shown and "<small>2</small> capital" in shown
    fig = chart(at, "Attribution graph")
    drawn = [p[0] for t in fig["data"] if t["mode"] != "lines" for p in t["customdata"]]
    want, _ = ag.prune(nodes, edges, ag.Pruning(0.8, 0.98))
    assert sorted(drawn) == sorted(n.node for n in want)
    # every node at thresholds 1: all stored nodes that an edge touches, and both logits
    at.slider(key="graph_node_threshold").set_value(1.0).run()
    at.slider(key="graph_edge_threshold").set_value(1.0).run()
    fig = chart(at, "Attribution graph")
    drawn = [p[0] for t in fig["data"] if t["mode"] != "lines" for p in t["customdata"]]
    touched = {e.source for e in edges} | {e.target for e in edges}
    assert sorted(drawn) == sorted(n.node for n in nodes if n.node in touched or
                                   n.kind == "logit")  # fmt: skip
    # the default node is the most influential drawn latent: its dashboard shows
    picker = at.selectbox(key="graph_node")
    top = max((n for n in nodes if n.kind == "latent" and n.node in drawn),
              key=lambda n: n.influence)  # fmt: skip
    assert picker.value == top.node
    # pick latent 17 of the first SAE (planted explanation with markup)
    planted = min(
        n.node for n in nodes if n.feature == 17 and n.sae_id == ids[0] and n.node in drawn
    )
    planted = next(n for n in nodes if n.node == planted)
    at.selectbox(key="graph_node").set_value(planted.node).run()
    assert not at.exception, at.exception
    assert at.query_params["node"] == planted.node
    assert at.subheader[0].value.startswith(f"L{planted.layer} \\#17 @{planted.pos}")
    assert "\\<b\\>bold" in at.subheader[0].value  # shown literally, never as markup
    blocks = "\n".join(str(e.proto.body) for e in at.get("html"))
    assert html.escape(BOLD_EXPLANATION) in blocks and BOLD_EXPLANATION not in blocks
    assert "saelab-window" in blocks  # its top examples
    assert any("Strongest inputs" in m.value for m in at.markdown)
    link = f"./feature?sae={ids[0]}&feature=17"
    assert any(link in m.value for m in at.markdown)
    # the node table escapes nothing itself (a dataframe shows text) and links latents
    (table,) = [d.value for d in at.dataframe if "feature page" in d.value.columns]
    assert table.set_index("node").loc[planted.node, "feature page"] == link
    assert table.set_index("node").loc[planted.node, "explanation"] == BOLD_EXPLANATION
    # hover text in the figure: escaped
    fig_text = json.dumps(chart(at, "Attribution graph")["data"])
    assert "<b>bold" not in fig_text and "&lt;b&gt;bold&lt;/b&gt;" in fig_text
    at.button(key="graph_open_feature").click().run()
    assert at.query_params["sae"] == ids[0] and at.query_params["feature"] == "17"


def test_graph_page_escapes_a_planted_prompt_and_a_bad_link_says_so(graph_db, monkeypatch,
                                                                    tmp_path):  # fmt: skip
    path, ids, _ = graph_db
    db = tmp_path / "xss.duckdb"
    shutil.copy(path, db)
    tokens = ["<|im_start|>", SCRIPT_PROMPT_TOKEN, " <b>x</b>", " of", " France", " is"]
    run, nodes, edges = make_graph(ids, tokens=tokens, seed=9)
    store_graph(db, (run, nodes, edges))
    at = page("graph", monkeypatch, str(db), graph=run.graph_id)
    assert not at.exception, at.exception
    everything = texts(at) + json.dumps(chart(at, "Attribution graph"))
    assert SCRIPT_PROMPT_TOKEN not in everything and "<b>x</b>" not in everything
    assert html.escape(SCRIPT_PROMPT_TOKEN) in everything
    at = page("graph", monkeypatch, str(db), graph="nope")
    assert not at.exception and "`?graph=nope` names no graph" in at.warning[0].value
    newest = results.graph_runs(results.ResultsStore(db))[0].graph_id
    assert at.query_params["graph"] == newest


def test_write_graph_html(graph_db, tmp_path):
    from saelab.base.errors import UserError

    path, ids, (run, nodes, _) = graph_db
    store = results.ResultsStore(path)
    out = ag.write_graph_html(store, run.graph_id, tmp_path / "sub" / "graph.html")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "Plotly.newPlot" in text
    assert "cdn.plot.ly" not in text.split("<body>", 1)[1][:2000]  # plotly.js inline
    assert html.escape(BOLD_EXPLANATION) in text and "0.71" in text and "0.83" in text
    assert all(html.escape(n.node) in text for n in nodes)
    with pytest.raises(UserError, match="no graph 'nope'"):
        ag.write_graph_html(store, "nope", tmp_path / "x.html")


def test_graph_page_in_a_browser(browser, graph_db, tmp_path):  # noqa: F811
    """The page in Chromium: the graph draws, a click on a latent opens its panel, planted
    markup never runs. Screenshot: graph_page.png in the test's folder."""
    path, ids, _ = graph_db
    db = tmp_path / "browser.duckdb"
    shutil.copy(path, db)
    tokens = ["<|im_start|>", SCRIPT_PROMPT_TOKEN, " capital", " of", " France", " is"]
    run, nodes, edges = make_graph(ids, tokens=tokens, seed=0)
    store_graph(db, (run, nodes, edges))
    server = Server(str(db))
    try:
        page_ = open_page(browser, f"{server.url}/graph")
        settle(page_, "Strongest inputs")
        main = page_.inner_text("[data-testid=stMain]")
        assert "Attribution graphs" in main and SCRIPT_PROMPT_TOKEN in main
        points = page_.locator(".js-plotly-plot .scatterlayer .trace .points path")
        points.first.wait_for(timeout=20_000)  # plotly draws after the script has finished
        assert points.count() > 20
        shot = tmp_path / "graph_page.png"
        page_.set_viewport_size({"width": 1400, "height": 2600})  # Streamlit scrolls inside
        page_.wait_for_timeout(800)
        page_.screenshot(path=str(shot))
        picker = page_.get_by_role("combobox", name="Node", exact=True)
        before = picker.input_value()
        # click markers until one other than the selected node is hit: the picker follows
        changed = False
        for i in range(min(points.count(), 6)):
            points.nth(i).click(force=True)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not changed:
                page_.wait_for_timeout(250)
                changed = picker.input_value() != before
            if changed:
                print(f"marker {i} clicked: node {picker.input_value()!r}")
                break
        assert changed, f"no click on a marker changed the node from {before!r}"
        settle(page_, "Strongest inputs")
        assert picker.input_value().split(" · influence")[0] in page_.inner_text(
            "[data-testid=stMain] h3"
        )
        assert page_.evaluate("window.__xss") is None
        assert page_.locator("[data-testid=stMain] script").count() == 0
        assert not page_.errors, page_.errors
    finally:
        server.close()
    print("screenshot:", shot)
    assert shot.stat().st_size > 20_000
