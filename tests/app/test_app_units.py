"""The app's pure pieces against independent references: token text, decoder neighbours,
compare winners, a circuit's curves, checked edges and node table; and the command line's
messages for bad files."""

from __future__ import annotations

import numpy as np
import pytest

from saelab.app import decoder
from saelab.app.tokens import TokenBytes, highlight_html, merge_pieces
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
    assert "&amp; ↵<br>" in out and "rgba(255, 120, 0, 0.500)" in out
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
