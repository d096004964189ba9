"""The whole run on trained SAEs (CLI, store rows, HTML), the migration, and bad input."""

from __future__ import annotations

import json
import math

import duckdb
import pytest

import saelab
from saelab import resultstore as results
from saelab.base.errors import UserError
from saelab.circuits.run import CircuitConfig, run_circuit
from saelab.circuits.splice import hook_label


def test_a_schema_2_file_migrates_in_place(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    for step in results.MIGRATIONS[:2]:
        for statement in step:
            con.execute(statement)
    con.execute("INSERT INTO schema_info VALUES ('schema_version', '2')")
    con.execute("INSERT INTO metrics VALUES ('s1', 'core', 'l0', 3.5, 'r')")
    con.close()
    with results.ResultsStore(path, "write").transaction() as con:
        assert con.execute("SELECT value FROM metrics").fetchall() == [(3.5,)]
        for table in results.CIRCUIT_TABLES:
            assert con.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def test_circuit_cli_end_to_end(model, trained_folders, small_store, tmp_path, monkeypatch, capsys):
    import saelab.activations.models
    from saelab.cli import main

    monkeypatch.setattr(
        saelab.activations.models, "load_model", lambda *a, **k: model
    )  # loaded once
    db = tmp_path / "r.duckdb"
    code = main(
        [
            "circuit",
            "--sae",
            *trained_folders,
            "--task",
            "sva",
            "--prompts",
            "4",
            "--acts",
            small_store,
            "--db",
            str(db),
            "--node-threshold",
            "0.01",
            "--edge-threshold",
            "0.0001",
            "--check-edges",
            "4",
            "--curve-sizes",
            "0",
            "2",
            "--exact-nodes",  # the flags reach the run; the methods have their own tests
            "16",
            "--ig-edges",
            "8",
            "--steps",
            "3",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "clean accuracy" in out and "faithfulness" in out and "completeness" in out
    assert "edges checked: 4" in out
    store = results.ResultsStore(db)
    (row,) = results.list_circuits(store)
    nodes = results.circuit_nodes(store, row.circuit_id)
    edges = results.circuit_edges(store, row.circuit_id)
    kept = [n for n in nodes if n.kept]
    assert len(kept) == row.n_nodes > 0
    assert all(abs(n.effect) >= 0.01 for n in kept)
    assert len(edges) == row.n_edges
    assert sum(e.measured is not None for e in edges) == 4
    kinds = {c.kind for c in results.circuit_curves(store, row.circuit_id)}
    assert kinds == {"faithfulness", "completeness"}
    curve = results.circuit_curves(store, row.circuit_id)
    assert sorted({c.n_nodes for c in curve if not c.everything}) == sorted(
        {0, 2, row.n_nodes}
    )  # --curve-sizes reached the run (and the kept circuit's size is always a point)
    (every,) = [c for c in curve if c.everything and c.kind == "faithfulness"]
    assert every.value == pytest.approx(1.0, abs=1e-3) == row.faithfulness_all
    assert row.selection == "frozen" and row.edge_method == "ig" and row.exact_nodes == 16
    assert row.hooks == ["blocks.2.hook_resid_post", "blocks.4.hook_mlp_out"]
    assert json.loads(row.config_json)["task"] == "sva"
    html = (tmp_path / "circuit.html").read_text()
    assert "plotly" in html and len(html) > 100_000  # plotly.js inlined: self-contained
    assert math.isfinite(row.faithfulness)
    assert row.circuit_id == results.circuit_id(
        row.config_hash, row.prompts_hash, row.sae_ids, row.model_sha256
    )  # the same circuit found again gets the same id, and replaces this one


def _cfg(folders, **kw):
    base = dict(
        sae=folders,
        task="sva",
        n_prompts=3,
        ablation="zero",
        check_edges=0,
        progress=False,
        curve_sizes=[0],
    )
    base.update(kw)
    return CircuitConfig(**base)


def test_bad_input_is_one_line_and_writes_nothing(model, trained_folders, tmp_path):
    db = tmp_path / "bad.duckdb"
    bad_answers = tmp_path / "bad.jsonl"
    bad_answers.write_text(
        json.dumps({"clean": "The cat", "patch": "The cats", "correct": " is", "wrong": " are"})
        + "\n"
        + json.dumps(
            {"clean": "The dog", "patch": "The dogs", "correct": " is happy", "wrong": " are"}
        )
        + "\n"
    )
    bad_row = tmp_path / "row.jsonl"
    bad_row.write_text('{"clean": "The cat", "correct": " is", "wrong": " are"}\n{"clean": 3}\n')
    cases = [
        (_cfg(trained_folders, task=str(bad_answers), db=str(db)), "single tokens"),
        (_cfg(trained_folders, task=str(bad_row), db=str(db)), "row.jsonl:2"),
        (_cfg(trained_folders, node_threshold=1e6, db=str(db)), "no node reaches"),
        (_cfg(trained_folders, ablation="mean", db=str(db)), "mean ablation needs"),
        (_cfg(trained_folders, task="nope", db=str(db)), "unknown task"),
    ]
    for cfg, message in cases:
        with pytest.raises(UserError, match=message) as err:
            run_circuit(cfg, model=model, log=lambda s: None)
        assert "\n" not in str(err.value)
    assert not db.exists()


def test_saes_of_another_model_or_width_are_refused(model, trained_folders, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained_folders[0], other)
    cfg_path = other / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["saelab"]["provenance"]["model_sha256"] = "0" * 64
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="another model"):
        run_circuit(_cfg([str(other)]), model=model)

    from saelab.circuits.splice import SplicedModel
    from saelab.sae.registry import build_sae, make_config

    narrow = build_sae(make_config("topk", d_sae=32, k=4), 64)
    with pytest.raises(UserError, match="width 64"):
        SplicedModel(model, {"blocks.2.hook_resid_post": narrow})


def test_nan_metric_is_refused(model, trained_folders):
    import torch

    from saelab.circuits.attribution import LogitDiff, attribute, patch_sides
    from saelab.circuits.splice import SplicedModel
    from saelab.sae.checkpoint import load_sae

    sae = load_sae(trained_folders[0])
    with torch.no_grad():
        sae.b_dec.fill_(float("nan"))
    spliced = SplicedModel(model, {"blocks.2.hook_resid_post": sae})
    from saelab.activations.corpus import bos_token_id
    from saelab.circuits.tasks import load_task

    task = load_task("sva", model.tokenizer, bos_token_id(model.tokenizer), n=2)
    sides = patch_sides(spliced, task.patch, "zero")
    with pytest.raises(UserError, match="NaN"):
        attribute(spliced, task.clean, LogitDiff(task.correct, task.wrong), sides)


# -- the notebook API's figures (saelab.circuit_graph, saelab.circuit_curves) ------------


@pytest.fixture(scope="module")
def api_result(model, trained_folders, small_store, tmp_path_factory):
    db = tmp_path_factory.mktemp("circuit-api") / "r.duckdb"
    cfg = saelab.CircuitConfig(
        sae=trained_folders, task="sva", n_prompts=3, acts=small_store, db=str(db),
        node_threshold=0.02, check_edges=0, curve_sizes=[0, 1, 3], progress=False,
    )  # fmt: skip
    return saelab.circuit(cfg, model=model)


def test_api_graph_has_one_marker_per_kept_node_in_hook_columns(api_result, model):
    fig = saelab.circuit_graph(api_result, model=model)
    (markers,) = [t for t in fig.data if t.mode == "markers"]
    assert len(markers.x) == len(api_result.kept) > 0
    hooks = ["blocks.2.hook_resid_post", "blocks.4.hook_mlp_out"]  # computation order
    assert list(fig.layout.xaxis.ticktext) == [hook_label(h) for h in hooks]
    column = {h: i for i, h in enumerate(hooks)}
    for x, node in zip(markers.x, api_result.kept):
        # per-position nodes sit inside their hook's column, right of its tick
        assert column[node.key.hook] <= x < column[node.key.hook] + 1
    assert all("effect" in t for t in markers.hovertext)


def test_api_curves_plot_the_results_own_points(api_result):
    fig = saelab.circuit_curves(api_result)
    points = {p.n_nodes: p for p in api_result.curves.points if p.n_nodes > 0 and not p.everything}
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {"faithfulness", "completeness", "every node kept"}
    every = by_name.pop("every node kept")
    assert list(every.y) == [api_result.faithfulness_all]
    for name, trace in by_name.items():
        assert list(trace.x) == sorted(points)
        assert list(trace.y) == [getattr(points[n], name) for n in sorted(points)]
    assert fig.layout.xaxis.type == "log"
