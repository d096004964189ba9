"""The app's pure pieces against independent references: token text, decoder neighbours,
compare winners and metric table, a circuit's curves, checked edges, node labels and node
table, logit-effect units, searches across SAEs, the "test your own text" activations; and the
command line's messages for bad files."""

from __future__ import annotations

import numpy as np
import pytest

from saelab.app import decoder
from saelab.app.tokens import (
    NEWLINE_MARK,
    TokenBytes,
    highlight_html,
    markdown_literal,
    merge_pieces,
    short_text,
)
from saelab.app.views.compare import winners
from saelab.cli import main


@pytest.fixture(scope="module")
def tokenizer_json():
    from saelab.activations.models import resolve_model_folder

    folder, _ = resolve_model_folder("smollm2-135m")
    return folder / "tokenizer.json"


def test_pieces_merge_byte_level_tokens_into_the_decoded_text(tokenizer_json):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    table = TokenBytes(tokenizer_json)
    text = "naïve café in 東京 🙂 costs 5€\n\tnext line"
    ids = tok.encode(text).ids
    vocab = {i: tok.decode([i]) for i in ids}
    assert any("�" in vocab[i] for i in ids)  # per-id strings break the multi-byte characters
    pieces = merge_pieces(ids, table, vocab)
    assert "".join(p.text for p in pieces) == tok.decode(ids) == text
    assert all("�" not in p.text for p in pieces)
    assert [i for p in pieces for i in range(p.first, p.last + 1)] == list(range(len(ids)))
    assert any(p.last > p.first for p in pieces)  # some characters span several tokens


def test_highlight_escapes_text_and_titles_and_shades_by_activation():
    pieces = merge_pieces([1, 2], None, {1: '<b x="1">', 2: " & \n"})
    out = highlight_html(pieces, [2.0, 0.0], 4.0, [1, 2])
    assert "<b " not in out and "&lt;b x=&quot;1&quot;&gt;" in out
    assert "&amp; " + NEWLINE_MARK in out and "rgba(255, 120, 0, 0.500)" in out
    assert "<br>" not in out  # a newline is a mark on the line, not a line break
    assert 'title="activation 2 · token 1"' in out


def test_nearest_matches_a_float64_cosine(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng()
    w = rng.normal(size=(50, 12)).astype(np.float32)
    w[7] = 0.0
    save_file({"W_dec": w}, str(tmp_path / decoder.WEIGHTS_FILE))
    unit = decoder.unit_decoder(tmp_path / decoder.WEIGHTS_FILE)
    f = int(rng.integers(0, 50))
    if f == 7:
        f = 8
    w64 = w.astype(np.float64)
    norms = np.linalg.norm(w64, axis=1)
    cos = w64 @ w64[f] / np.where(norms > 0, norms, 1) / norms[f]
    cos[f] = -np.inf
    expected = np.argsort(-cos, kind="stable")[:5]
    got = decoder.nearest(unit, f, k=5)
    assert [i for i, _ in got] == expected.tolist()
    np.testing.assert_allclose([c for _, c in got], cos[expected], rtol=1e-5)


def test_winners_follow_each_metrics_direction():
    """Directions come from the eval registry's catalogue: FVU lower, explained variance higher,
    L0 neither; auto-interp scores higher."""
    from saelab.app.views.compare import better_of

    table = {
        "core / fvu": {"a": 0.3, "b": 0.1, "c": 0.1},
        "core / explained_variance": {"a": 0.9, "b": 0.5, "c": None},
        "core / l0": {"a": 3.0, "b": 9.0},
    }
    assert winners(table) == {"core / fvu": {"b", "c"}, "core / explained_variance": {"a"}}
    assert better_of("autointerp / autointerp:llm:detection") == "higher"
    assert better_of("probing / probe_acc_k5") == "higher" and better_of("core / l0") is None


def test_app_command_refuses_missing_and_older_files(tmp_path, capsys):
    import duckdb

    assert main(["app", "--db", str(tmp_path / "none.duckdb")]) == 2
    assert "no results database" in capsys.readouterr().err
    older = tmp_path / "older.duckdb"
    con = duckdb.connect(str(older))
    con.execute("CREATE TABLE schema_info (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO schema_info VALUES ('schema_version', '1')")
    con.close()
    assert main(["app", "--db", str(older)]) == 2
    err = capsys.readouterr().err
    assert "older schema (1" in err and "--migrate" in err and err.count("\n") == 1


def _node(node: int, kept: bool, effect: float, attributed: float | None = None):
    from saelab.resultstore import CircuitNodeRow

    return CircuitNodeRow(
        circuit_id="c", node=node, hook="blocks.3.hook_mlp_out", submodule="mlp_out", layer=3,
        pos=-1, feature=node, is_error=False, sae_id="s", effect=effect, activation=1.0,
        kept=kept, attributed=attributed,
    )  # fmt: skip


def test_circuit_curves_set_the_zero_and_every_node_points_apart():
    from saelab.app import circuit_graph
    from saelab.resultstore import CircuitCurveRow

    rows = [
        CircuitCurveRow("c", "completeness", 0, 1.0, None),
        CircuitCurveRow("c", "faithfulness", 13830, 0.99, None, True),
        CircuitCurveRow("c", "faithfulness", 5, None, None),
        CircuitCurveRow("c", "faithfulness", 2, 0.5, None, None),  # NULL: an older file
        CircuitCurveRow("c", "faithfulness", 0, 0.0, None),
    ]
    curves = circuit_graph.curves_from(rows)
    assert list(curves) == ["faithfulness", "completeness"]
    faith = curves["faithfulness"]
    assert faith.points == [(0, 0.0), (2, 0.5)] and faith.everything == (13830, 0.99)
    assert faith.at(0) == 0.0 and faith.at(5) is None and curves["completeness"].everything is None
    zero = circuit_graph.zero_position(curves)
    assert 0 < zero < 2
    values, labels = circuit_graph.log_ticks(zero, 13830)
    assert labels[:3] == ["0", "1", "10"] and values[0] == zero
    assert values[-2] < 13830 <= values[-1] and labels[-1] == "100,000"


def test_checked_edges_and_node_table():
    from saelab.app import circuit_graph
    from saelab.resultstore import CircuitEdgeRow

    nodes = [_node(0, True, 0.8, 0.5), _node(1, True, -0.9), _node(2, False, 0.01, 0.3)]
    nodes.append(_node(3, False, 0.001))
    edges = [
        CircuitEdgeRow("c", 0, 1, 0.2, 0.25, 1.5),
        CircuitEdgeRow("c", 0, 7, 0.1, -0.1),  # its downstream node is not stored
        CircuitEdgeRow("c", 1, 2, 0.3, None),
    ]
    checks = circuit_graph.checked_edges(nodes, edges)
    assert [(c.label, c.attributed, c.measured, c.switched) for c in checks] == [
        ("L3 mlp #0 → L3 mlp #1", 0.2, 0.25, 1.5),
        ("L3 mlp #0 → node 7", 0.1, -0.1, None),
    ]
    table = circuit_graph.node_table(nodes)
    assert [r["node"] for r in table] == [1, 0, 2]  # kept or re-scored, largest |effect| first
    assert [r["attributed"] for r in table] == [None, 0.5, 0.3]
    assert "attributed" not in circuit_graph.node_table([_node(0, True, 0.8)])[0]


def test_node_labels_carry_shortened_explanations_and_tables_link_features():
    from saelab.app import circuit_graph

    nodes = [_node(0, True, 0.8), _node(1, True, -0.9), _node(2, False, 0.01, 0.3)]
    nodes.append(_node(3, False, 0.5))  # neither kept nor re-scored: not shown
    error = _node(4, True, 0.2)
    error.is_error, error.feature, error.pos = True, -1, 2
    nodes.append(error)
    long = "plural nouns   after a\ncomma, especially in lists of several items"
    explanations = {("s", 1): long, ("s", 4): "never shown for an error node", ("t", 0): "x"}
    assert circuit_graph.explained_latents(nodes) == {"s": [0, 1, 2]}
    assert circuit_graph.node_label(nodes[0], explanations) == "L3 mlp #0"
    label = circuit_graph.node_label(nodes[1], explanations)
    assert label == "L3 mlp #1 · 'plural nouns after a…'"
    assert circuit_graph.node_tag(nodes[1], explanations) == "#1 · 'plural nouns after a…'"
    assert len(label.split("'")[1]) <= circuit_graph.LABEL_EXPLANATION_CHARS
    assert circuit_graph.node_label(error, explanations) == "L3 mlp ε @2"
    graph = circuit_graph.build_graph(nodes, [], explanations)
    assert label in [n.label for n in graph.nodes] and "ε @2" in [n.tag for n in graph.nodes]
    table = {r["node"]: r for r in circuit_graph.node_table(nodes, explanations)}
    assert table[1]["label"] == label and table[4]["feature page"] is None
    assert table[2]["feature page"] == "./feature?sae=s&feature=2"


def test_short_text_and_markdown_literal():
    assert short_text(None) == "" and short_text(" a\n b ") == "a b"
    assert short_text("abcdefghij", 5) == "abcd…" and short_text("abcde", 5) == "abcde"
    assert short_text("one two three four", 12) == "one two…"  # ends on a whole word
    assert short_text("a bcdefghijklmnop", 8) == "a bcdef…"  # unless that wastes the room
    text = "**bold** [x](y) :red[z] `c` <b> #1 a_b"
    escaped = markdown_literal(text)
    assert escaped.replace("\\", "") == text  # only backslashes added
    assert all(escaped[i - 1] == "\\" for i, c in enumerate(escaped) if c in "*[]():`<>#_")


def test_logit_effects_in_standard_deviations_over_the_vocabulary():
    from saelab.app.views.feature import vocab_moments

    rng = np.random.default_rng(0)
    effects = rng.normal(3.0, 7.0, size=49_152)
    counts, edges = np.histogram(effects, bins=32)
    mean, std = vocab_moments(edges.tolist(), counts.tolist())
    width = edges[1] - edges[0]
    assert abs(mean - effects.mean()) < width / 4
    assert abs(std - effects.std()) < width / 2  # binning adds about width²/12 to the variance
    assert vocab_moments([0.0, 1.0], [0]) is None and vocab_moments([0.0], [3]) is None


def test_logit_table_sets_promoted_beside_suppressed():
    from saelab.app.views.feature import logit_table
    from saelab.resultstore import FeatureLogitRow

    rows = [FeatureLogitRow("s", 1, "top", 0, 7, 12.0), FeatureLogitRow("s", 1, "top", 1, 8, 8.0)]
    rows.append(FeatureLogitRow("s", 1, "bottom", 0, 9, -6.0))
    table, unit = logit_table(rows, {7: " cat", 8: "<b>"}, (2.0, 4.0))
    assert unit == "z" and table["▲ z"] == [2.5, 1.5] and table["▼ z"] == [-2.0, None]
    assert table["▲ token"] == ["' cat'", "'<b>'"] and table["▼ token"] == ["<9>", None]
    table, unit = logit_table(rows, {}, None)
    assert unit == "raw" and table["▲ raw"] == [12.0, 8.0]


def test_neighbour_labels_name_the_feature_and_its_explanation():
    from saelab.app.views.feature import neighbour_label

    assert neighbour_label(1011, 0.2262, None) == "\\#1011 · cos 0\\.23"
    label = neighbour_label(7, 0.5, "fires on *bold* text and more words than fit here")
    assert label.startswith("\\#7 · cos 0\\.50 · fires on \\*bold\\* text") and "…" in label


def test_metric_table_names_metrics_in_full_with_definitions():
    from saelab.app.views.compare import metric_frame

    table = {
        "core / fvu": {"a": 0.2, "b": 0.1},
        "autointerp / autointerp:llm:detection": {"a": 0.5},
    }
    frame = metric_frame(table, winners(table), ["a", "b"], {"a": "sae-a", "b": "sae-b"})
    assert list(frame["metric"]) == ["fvu", "autointerp:llm:detection"]
    assert list(frame["eval"]) == ["core", "autointerp"]
    assert list(frame.loc["core / fvu", ["sae-a", "sae-b"]]) == ["0.2", "★ 0.1"]
    assert frame.loc["core / fvu", "better"] == "lower"
    assert "variance" in frame.loc["core / fvu", "definition"].lower()
    # a stored 95% interval goes beside its value
    spread = {"core / fvu": {"a": (0.15, 0.25), "b": (0.09, 0.2)}}
    frame = metric_frame(table, winners(table), ["a", "b"], {"a": "sae-a", "b": "sae-b"}, spread)
    assert list(frame.loc["core / fvu", ["sae-a", "sae-b"]]) == ["0.2 ± 0.05", "★ 0.1 [0.09, 0.2]"]


def test_spread_panels_open_on_each_evals_headline_metric():
    from saelab.app.views.compare import HEADLINES, default_spreads

    per_attribute = [f"ravel / ravel_cause_{a}" for a in ("continent", "country", "language")]
    stored = [*per_attribute, "ravel / ravel_disentangle", "scr / scr_dir1_threshold_2",
              "scr / scr_metric_threshold_20", "stability / shared_fraction", "tpp / tpp_x"]  # fmt: skip
    shown = default_spreads(dict.fromkeys(stored), n=5)
    headline = [m for m in HEADLINES if m in stored]
    assert len(headline) == 3 and shown[:3] == headline  # the headlines first, in their order
    assert shown[3:] == sorted(set(stored) - set(headline))[:2]  # then the rest by name


def test_searches_span_every_sae(app_db):
    from saelab import resultstore as results

    path, ids = app_db
    store = results.ResultsStore(path)
    with store.reading() as con:
        live = {
            tuple(r)
            for r in con.execute("SELECT sae_id, feature FROM features WHERE NOT dead").fetchall()
        }
        explained = {
            tuple(r)
            for r in con.execute(
                "SELECT sae_id, feature FROM explanations WHERE explanation ILIKE '%fake%'"
            ).fetchall()
        }
        names = dict(con.execute("SELECT sae_id, name FROM saes").fetchall())
        sha = con.execute("SELECT model_sha256 FROM saes LIMIT 1").fetchone()[0]
    rows = results.search_ranges(store, None, (-7.0, 0.0), limit=10_000)
    assert {(r["sae_id"], r["feature"]) for r in rows} == live
    assert {r["sae_id"] for r in rows} == set(ids) and all(
        r["name"] == names[r["sae_id"]] for r in rows
    )
    one = results.search_ranges(store, ids[0], (-7.0, 0.0), limit=10_000)
    assert {(r["sae_id"], r["feature"]) for r in one} == {k for k in live if k[0] == ids[0]}
    text = results.search_explanations(store, None, "FAKE")
    assert explained and {(r["sae_id"], r["feature"]) for r in text} == explained
    assert {r["sae_id"] for r in text} == set(ids)
    ids_the = results.token_ids_for(store, sha, " the")
    both = results.search_token(store, list(ids), ids_the)
    assert {r["sae_id"] for r in both} == set(ids)
    assert {(r["sae_id"], r["feature"]) for r in results.search_token(store, ids[1], ids_the)} == {
        (r["sae_id"], r["feature"]) for r in both if r["sae_id"] == ids[1]
    }


def test_text_activations_match_the_eval_and_a_direct_encode(app_db, model):
    """The "test your own text" box against two references: the features eval's stored
    activations on windows that start a sequence (same tokens, a separate pipeline through the
    harvested store), and a direct SAE encode of a full forward's activations for a text."""
    import torch

    from saelab import resultstore as results
    from saelab.activations.corpus import bos_token_id
    from saelab.app import text_activations
    from saelab.sae.checkpoint import load_sae

    path, ids = app_db
    store = results.ResultsStore(path)
    row = results.sae_by_id(store, ids[-1])
    probe = text_activations.load_probe(row, model=model)
    bos = bos_token_id(model.tokenizer)
    with store.reading() as con:
        windows = con.execute(
            "SELECT feature, tokens, acts FROM feature_examples WHERE sae_id = ? AND kind = 'top' "
            "AND tokens[1] = ? ORDER BY activation DESC LIMIT 3",
            [row.sae_id, bos],
        ).fetchall()
    assert windows
    for feature, tokens, acts in windows:
        got = text_activations.activations_on_tokens(probe, tokens, feature)
        # the store holds float16 activations; the box runs the model in float32
        np.testing.assert_allclose(got[1:], acts[1:], rtol=0.05, atol=0.02 * max(acts))
        assert max(acts) > 0

    text = "The keys to the cabinet are on the table.\nParis is in France."
    sae = load_sae(row.path)
    tokens = torch.tensor([[bos, *model.tokenizer.encode(text, add_special_tokens=False)]])
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(tokens)
        reference = sae.encode(cache[row.hook][0].float())[1:]
    feature = int(reference.max(dim=0).values.argmax())
    got = text_activations.latent_activations(probe, text, feature)
    assert got.token_ids == tokens[0, 1:].tolist()
    assert max(got.acts) > 0
    np.testing.assert_allclose(got.acts, reference[:, feature].numpy(), rtol=1e-4, atol=1e-5)


def test_a_render_on_a_new_thread_never_waits_on_an_interrupted_ones_connection(app_db):
    """A click during a render: Streamlit may start the next render on another script thread
    while the interrupted one still holds its session. The new render reads at once (the
    reader used to hand it the held store, whose session lock the other thread owned)."""
    import threading

    from saelab import resultstore as results
    from saelab.app import db

    reader = db.Reader(app_db[0])
    held = reader.store  # this thread's render, never closed (interrupted)
    assert results.list_saes(held)
    got: list = []
    other = threading.Thread(target=lambda: got.append(len(results.list_saes(reader.store))))
    other.start()
    other.join(timeout=20)
    assert not other.is_alive(), "the second render waited on the first one's connection"
    assert got == [len(app_db[1])]
    reader.close()


@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_stopping_the_server_kills_it_when_it_does_not_stop(monkeypatch, ignores_sigterm):
    """`saelab app`'s SIGTERM/Ctrl-C handling: the streamlit server gets SIGTERM, and is killed
    `STOP_GRACE_S` later if it is still running (it waits for a running script first)."""
    import signal
    import subprocess
    import sys
    import time

    from saelab.app import server

    monkeypatch.setattr(server, "STOP_GRACE_S", 0.5)
    body = "import signal, time\n"
    if ignores_sigterm:
        body += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    body += "print('up', flush=True)\ntime.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", body], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    t0 = time.monotonic()
    server._stop(proc)
    code = proc.wait(timeout=20)
    assert code == (-signal.SIGKILL if ignores_sigterm else -signal.SIGTERM)
    assert time.monotonic() - t0 < 15


def test_the_server_dies_with_saelab_app_however_it_dies():
    """Linux: the server is started with PR_SET_PDEATHSIG, so a SIGKILLed `saelab app` (no
    handler of ours runs) still takes its streamlit server with it."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    parent_code = (
        "import subprocess, sys, time\n"
        "from saelab.app.server import _die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " preexec_fn=_die_with_parent())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True
    )
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            break
        if state == "Z":
            break
        assert time.monotonic() < deadline, "the server outlived a killed saelab app"
        time.sleep(0.05)
