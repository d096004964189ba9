"""The DuckDB results store: typed rows held against the schema, ownership of rows, opening
modes, concurrency, interruptions, bad files."""

from __future__ import annotations

import dataclasses
import datetime
import subprocess
import sys
import types
import typing

import duckdb
import pyarrow as pa
import pytest

from saelab import resultstore as results
from saelab.base.errors import UserError

DUCKDB_TYPES = {
    "VARCHAR": str, "INTEGER": int, "BIGINT": int, "DOUBLE": float, "BOOLEAN": bool,
    "TIMESTAMP": datetime.datetime, "INTEGER[]": list[int], "BIGINT[]": list[int],
    "FLOAT[]": list[float], "DOUBLE[]": list[float], "VARCHAR[]": list[str],
}  # fmt: skip


def sae_row(sae_id="s1", d_sae=8):
    return results.SAERow(
        sae_id=sae_id, name=f"sae-{sae_id}", path="/x", architecture="topk", d_in=4,
        d_sae=d_sae, hook="blocks.0.hook_resid_post", model="m", model_sha256="abc",
        cfg_json='{"k": 2}', cfg_hash="h", weights_sha256="w",
    )  # fmt: skip


def feature_table(sae_id, d_sae, fill):
    return pa.table(
        {
            "sae_id": [sae_id] * d_sae,
            "feature": pa.array(range(d_sae), pa.int32()),
            "n_tokens": pa.array([100] * d_sae, pa.int64()),
            "n_active": pa.array([fill] * d_sae, pa.int64()),
            "density": [fill / 100] * d_sae,
            "log10_density": [0.0] * d_sae,
            "max_act": [1.0] * d_sae,
            "mean_act": [0.5] * d_sae,
            "dead": [False] * d_sae,
            "dense": [False] * d_sae,
            "too_few_examples": [False] * d_sae,
        }
    )


def run(sae_id, eval_name, metrics, tables=None, latent=None):
    return results.EvalRun(
        sae_id=sae_id, eval=eval_name, config={"x": 1}, acts_url="acts", n_tokens=10,
        seconds=0.1, metrics=metrics, latent_metrics=latent or {}, tables=tables,
    )  # fmt: skip


def test_every_table_has_one_row_class_with_its_columns_and_types(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    with store.reading() as con:
        columns = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "ORDER BY table_name, ordinal_position"
        ).fetchall()
    schema: dict[str, list[tuple[str, str]]] = {}
    for table, column, kind in columns:
        schema.setdefault(table, []).append((column, kind))
    assert set(schema) == set(results.TABLES)
    for cls in results.ROWS:
        hints = typing.get_type_hints(cls)
        fields = [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]
        assert [name for name, _ in fields] == [c for c, _ in schema[cls.TABLE]], cls.TABLE
        for (name, hint), (_, kind) in zip(fields, schema[cls.TABLE]):
            union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            options = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
            assert DUCKDB_TYPES[kind] in options, f"{cls.TABLE}.{name}: {hint} vs {kind}"
        assert set(cls.KEY) <= {f.name for f in dataclasses.fields(cls)}


def test_schema_is_created_and_versioned(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    with store.reading() as con:
        assert results.schema_version(con) == results.SCHEMA_VERSION == len(results.MIGRATIONS)


def test_rerun_replaces_its_own_rows_only(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    write = results.write_eval_run
    write(store, sae_row("a"), run("a", "core", {"l0": 3.0, "mse": 1.0}))
    write(store, sae_row("a"), run("a", "loss", {"ce_loss_score": 0.9}))
    write(store, sae_row("b"), run("b", "core", {"l0": 5.0}))
    write(
        store,
        sae_row("a"),
        run("a", "features", {"n": 1.0}, {"features": feature_table("a", 8, 3)}),
    )
    write(
        store,
        sae_row("b"),
        run("b", "features", {"n": 1.0}, {"features": feature_table("b", 8, 4)}),
    )
    write(store, sae_row("a"), run("a", "core", {"l0": 4.0}))  # re-run: mse disappears
    write(
        store,
        sae_row("a"),
        run("a", "features", {"n": 2.0}, {"features": feature_table("a", 8, 7)}),
    )
    rows = {(r["name"], r["eval"], r["metric"]): r["value"] for r in results.metrics_long(store)}
    assert rows == {
        ("sae-a", "core", "l0"): 4.0,
        ("sae-a", "loss", "ce_loss_score"): 0.9,
        ("sae-a", "features", "n"): 2.0,
        ("sae-b", "core", "l0"): 5.0,
        ("sae-b", "features", "n"): 1.0,
    }
    counts = store.query("SELECT sae_id, sum(n_active) AS n FROM features GROUP BY sae_id")
    assert {r["sae_id"]: r["n"] for r in counts} == {"a": 56, "b": 32}
    assert len(results.eval_runs(store)) == 5
    dash = results.feature_dashboard(store, "a", 3)
    assert dash.stats.n_active == 7 and dash.sae.name == "sae-a"
    with pytest.raises(UserError, match="out of range.*0 … 7"):
        results.feature_dashboard(store, "a", 8)
    with pytest.raises(UserError, match="no SAE"):
        results.feature_dashboard(store, "zzz", 0)


def test_per_latent_metrics_are_stored_and_replaced_by_a_rerun(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    first = {"score": [0.5, float("nan"), 2.0]}  # NaN: not measured, not stored
    results.write_eval_run(store, sae_row("a", 3), run("a", "mine", {"m": 1.0}, latent=first))
    results.write_eval_run(
        store, sae_row("a", 3), run("a", "other", {"m": 1.0}, latent={"x": [1, 1, 1]})
    )
    assert [(r.feature, r.value) for r in results.latent_metrics(store, "a", 2)] == [
        (2, 2.0),
        (2, 1.0),
    ]
    assert [r.metric for r in results.latent_metrics(store, "a", 1)] == ["x"]
    results.write_eval_run(
        store, sae_row("a", 3), run("a", "mine", {"m": 1.0}, latent={"score": [7, 8, 9]})
    )
    rows = store.select(results.LatentMetricRow, "eval = ?", ["mine"], order="feature")
    assert [r.value for r in rows] == [7.0, 8.0, 9.0]
    assert len(store.select(results.LatentMetricRow, "eval = ?", ["other"])) == 3


def test_intervals_are_stored_beside_their_metric_and_replaced_by_a_rerun(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    first = run("a", "scr", {"scr_n2": 0.25, "scr_n5": 0.5})
    first.intervals = {"scr_n2": (0.125, 0.375)}
    results.write_eval_run(store, sae_row("a"), first)
    got = {
        m["metric"]: (m["value"], m["ci_low"], m["ci_high"]) for m in results.metrics_long(store)
    }
    assert got == {"scr_n2": (0.25, 0.125, 0.375), "scr_n5": (0.5, None, None)}
    results.write_eval_run(store, sae_row("a"), run("a", "scr", {"scr_n2": 0.3}))
    (row,) = results.metrics_long(store)
    assert (row["value"], row["ci_low"], row["ci_high"]) == (0.3, None, None)


def test_an_eval_interval_must_belong_to_a_metric_and_be_ordered():
    from saelab.evaluation.spec import EvalResult, EvalSpec, Metric, check_result

    spec = EvalSpec("s", "d", lambda ctx: None, (Metric("m", "a metric", "higher"),))
    check_result(spec, EvalResult({"m": 0.5}, 1, intervals={"m": (0.4, 0.6)}), d_sae=4)
    for intervals, message in (
        ({"other": (0.0, 1.0)}, "no value"),
        ({"m": (0.6, 0.4)}, r"\[0.6, 0.4\]"),
        ({"m": (float("nan"), 0.6)}, "interval"),
    ):
        with pytest.raises(ValueError, match=message):
            check_result(spec, EvalResult({"m": 0.5}, 1, intervals=intervals), d_sae=4)


def test_values_with_quotes_are_stored_verbatim(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    evil = "x'); DROP TABLE metrics; --"
    results.write_eval_run(store, sae_row(evil), run(evil, "core", {evil: 1.0}))
    rows = results.metrics_long(store)
    assert rows[0]["metric"] == evil and rows[0]["sae_id"] == evil
    assert results.find_sae(store, evil).sae_id == evil


def test_failed_write_leaves_nothing_behind(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    results.write_eval_run(store, sae_row("a"), run("a", "core", {"l0": 3.0}))
    bad = pa.table({"no_such_column": [1]})
    with pytest.raises(ValueError, match="columns"):
        results.write_eval_run(
            store, sae_row("a"), run("a", "features", {"n": 1.0}, {"features": bad})
        )
    rows = results.metrics_long(store)
    assert [(r["eval"], r["value"]) for r in rows] == [("core", 3.0)]


class _CommitThenInterrupt:
    """A connection whose COMMIT goes through and is then interrupted (Ctrl-C landing just
    after the database committed)."""

    def __init__(self, con):
        self.con = con

    def execute(self, sql, *args):
        out = self.con.execute(sql, *args)
        if sql == "COMMIT":
            raise KeyboardInterrupt
        return out

    def __getattr__(self, name):
        return getattr(self.con, name)


def test_ctrl_c_during_commit_keeps_the_rows_and_reports_the_interruption(tmp_path, monkeypatch):
    from saelab.resultstore import store as store_module

    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    results.write_vocab(store, "m", ["a"])  # the file exists: the next commit is the eval run's
    real = store_module.open_database
    monkeypatch.setattr(
        store_module, "open_database", lambda *a, **k: _CommitThenInterrupt(real(*a, **k))
    )
    with pytest.raises(KeyboardInterrupt):  # not duckdb's "cannot rollback"
        results.write_eval_run(store, sae_row("a"), run("a", "core", {"l0": 3.0}))
    monkeypatch.setattr(store_module, "open_database", real)
    assert [r["value"] for r in results.metrics_long(store)] == [3.0]


def test_second_writer_gets_busy_error(tmp_path, monkeypatch):
    monkeypatch.setattr(results.schema, "BUSY_WAIT_S", 0.3)
    db = tmp_path / "r.duckdb"
    store = results.ResultsStore(db, "write")
    results.write_eval_run(store, sae_row("a"), run("a", "core", {"l0": 3.0}))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="busy"):
            results.write_eval_run(store, sae_row("a"), run("a", "core", {"l0": 9.0}))
    finally:
        holder.kill()
        holder.wait()
    assert results.metrics_long(store)[0]["value"] == 3.0  # nothing changed, nothing corrupted


def test_newer_schema_and_foreign_files_are_refused(tmp_path):
    db = tmp_path / "r.duckdb"
    store = results.ResultsStore(db, "write")
    with store.transaction() as con:
        con.execute("UPDATE schema_info SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(UserError, match="schema version 99, newer"):
        results.ResultsStore(db)
    junk = tmp_path / "junk.duckdb"
    junk.write_text("this is not a database")
    for mode in results.store.MODES:
        with pytest.raises(UserError):
            results.ResultsStore(junk, mode)
    assert junk.read_text() == "this is not a database"
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE mine (x INTEGER)")
    con.close()
    with pytest.raises(UserError, match="not a saelab results file"):
        results.ResultsStore(other, "write")
    con = duckdb.connect(str(other), read_only=True)
    assert [
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    ] == ["mine"]
    con.close()
    with pytest.raises(UserError, match="is a folder"):
        results.ResultsStore(tmp_path, "write")


@pytest.mark.parametrize("mode", ["read", "update"])
def test_a_missing_file_is_never_created_by_a_reader(tmp_path, mode):
    missing = tmp_path / "missing.duckdb"
    with pytest.raises(UserError, match="no results database"):
        results.ResultsStore(missing, mode)
    assert not missing.exists()


def test_unwritable_database_location_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot create the folder of results database"):
        results.ResultsStore(blocker / "sub" / "results.duckdb", "write")
    assert blocker.read_text() == "not a folder"


def test_a_version_1_file_is_migrated_with_its_rows_kept(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    for statement in results.MIGRATIONS[0]:
        con.execute(statement)
    con.execute("INSERT INTO schema_info VALUES ('schema_version', '1')")
    con.execute("INSERT INTO metrics VALUES ('s1', 'core', 'l0', 3.5, 'r')")
    con.close()
    with pytest.raises(results.OlderSchemaError, match="older schema"):
        results.ResultsStore(path, "read")
    store = results.ResultsStore(path, "update")
    assert store.query("SELECT value, ci_low, ci_high FROM metrics") == [
        {"value": 3.5, "ci_low": None, "ci_high": None}
    ]
    assert store.query("SELECT count(*) AS n FROM scores") == [{"n": 0}]
    with store.reading() as con:
        assert results.schema_version(con) == results.SCHEMA_VERSION == len(results.MIGRATIONS)


def test_a_writer_waits_for_a_reader_that_lets_go(tmp_path):
    """A reader (the app, a notebook, a script polling progress) holds the file for a moment;
    a pipeline's write waits for it instead of failing."""
    db = tmp_path / "r.duckdb"
    store = results.ResultsStore(db, "write")
    results.write_eval_run(store, sae_row("a"), run("a", "core", {"l0": 3.0}))
    hold = (
        f"import duckdb, time; c = duckdb.connect({str(db)!r}, read_only=True); "
        "print('held', flush=True); time.sleep(1.5); c.close(); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        results.write_eval_run(store, sae_row("a"), run("a", "core", {"l0": 9.0}))
    finally:
        holder.kill()
        holder.wait()
    assert results.metrics_long(store)[0]["value"] == 9.0


def test_replaced_weights_are_refused_by_every_reader_through_the_store(tmp_path):
    folder = tmp_path / "sae"
    folder.mkdir()
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(b"the registered weights")
    row = results.record_for_folder(
        folder, weights.name, {"k": 2}, architecture="topk", d_in=4, d_sae=8,
        hook="blocks.0.hook_resid_post", model="m", model_sha256="abc",
    )  # fmt: skip
    assert results.verified_folder(row, weights.name) == folder
    weights.write_bytes(b"other weights, retrained")
    with pytest.raises(UserError, match="not the ones registered"):
        results.verified_folder(row, weights.name)
    weights.unlink()
    with pytest.raises(UserError, match="no longer holds it"):
        results.verified_folder(row, weights.name)


def test_a_circuit_written_again_replaces_itself(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    cid = results.circuit_id("cfg", "prompts", ["a"], "model")
    assert cid == results.circuit_id("cfg", "prompts", ["a"], "model")
    assert cid != results.circuit_id("cfg", "prompts", ["b"], "model")

    def record(effect):
        circuit = results.CircuitRow(
            circuit_id=cid, task="sva", task_source="builtin", prompts_hash="prompts",
            n_prompts=2, model="m", model_sha256="model", sae_ids=["a"], hooks=["h"],
            method="atp", baseline="patch", steps=1, per_position=True, node_threshold=0.1,
            edge_threshold=0.01, ablation="mean", error_policy="ablate", m_clean=1.0,
            m_patch=-1.0, m_empty=0.0, clean_accuracy=1.0, faithfulness=0.5, completeness=0.1,
            n_nodes=1, n_edges=0, edge_correlation=None, config_json="{}", config_hash="cfg",
            seconds=1.0, saelab_version="x",
        )  # fmt: skip
        node = results.CircuitNodeRow(
            cid, 0, "h", "resid_post", 2, 1, 5, False, "a", effect, 1.0, True
        )
        curve = results.CircuitCurveRow(cid, "faithfulness", 1, 0.5, 0.5)
        return results.CircuitRecord(circuit, [node], [], [curve])

    results.write_circuit(store, record(0.3), [sae_row("a")])
    results.write_circuit(store, record(0.7), [sae_row("a")])
    assert [c.circuit_id for c in results.list_circuits(store)] == [cid]
    assert [n.effect for n in results.circuit_nodes(store, cid)] == [0.7]
    assert len(results.circuit_curves(store, cid)) == 1


def test_a_features_run_replaces_rows_no_earlier_run_wrote(tmp_path):
    """Per-feature rows that no eval run of the file owns (written by hand, or by a plugin) are
    replaced too: a latent has one set of dashboard rows."""
    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    with store.transaction() as con:
        results.saes.register_sae(con, sae_row("a"), store)
        con.execute("INSERT INTO features (sae_id, feature, n_active) VALUES ('a', 0, 99)")
    features = {"features": feature_table("a", 8, 3)}
    results.write_eval_run(store, sae_row("a"), run("a", "features", {"n": 1.0}, features))
    rows = results.feature_stats(store, "a")
    assert len(rows) == 8 and rows[0].n_active == 3


def test_sae_paths_inside_the_results_folder_move_with_it(tmp_path):
    """A checkpoint inside the results file's folder is stored relative to it: the folder moved
    (or copied to another machine) still finds its SAEs; one outside stays absolute; a missing
    checkpoint is a one-line error naming the SAE."""
    import shutil

    folder = tmp_path / "project"
    weights = folder / "saes" / "a" / "sae_weights.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(bytes(range(256)) * 3)
    outside = tmp_path / "elsewhere" / "sae_weights.safetensors"
    outside.parent.mkdir()
    outside.write_bytes(b"other weights")
    store = results.ResultsStore(folder / "r.duckdb", "write")
    inside_row = dataclasses.replace(
        sae_row("a"), path=str(weights.parent), weights_sha256=results.saes.file_sha256(weights)
    )
    outside_row = dataclasses.replace(sae_row("b"), path=str(outside.parent))
    with store.transaction() as con:
        results.saes.register_sae(con, inside_row, store)
        results.saes.register_sae(con, outside_row, store)
    with store.reading() as con:
        stored = dict(con.execute("SELECT sae_id, path FROM saes").fetchall())
    assert stored == {"a": "saes/a", "b": str(outside.parent.resolve())}
    # the file alone copied elsewhere: its SAEs are found in the folder it was written in
    alone = tmp_path / "alone" / "r.duckdb"
    alone.parent.mkdir()
    shutil.copy(folder / "r.duckdb", alone)
    copy = results.ResultsStore(alone)
    assert results.sae_by_id(copy, "a").path == str(weights.parent.resolve())
    assert results.find_sae(copy, str(weights.parent)).sae_id == "a"

    moved = tmp_path / "moved" / "project-copy"
    moved.parent.mkdir()
    shutil.move(folder, moved)
    store = results.ResultsStore(moved / "r.duckdb")
    a = results.sae_by_id(store, "a")
    assert a.path == str((moved / "saes" / "a").resolve())
    assert results.saes.verified_folder(a, weights.name) == moved / "saes" / "a"
    assert results.find_sae(store, str(moved / "saes" / "a")).sae_id == "a"
    assert {r.sae_id: r.path for r in results.list_saes(store)}["b"] == str(outside.parent)
    shutil.rmtree(moved / "saes")
    with pytest.raises(UserError, match="checkpoint of SAE sae-a .* no longer holds it"):
        results.saes.verified_folder(results.sae_by_id(store, "a"), weights.name)


def test_the_preferred_explanation_is_the_llm_then_examples_then_token_list(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    with store.transaction() as con:
        results.saes.register_sae(con, sae_row("a"), store)
        for feature, explainers in ((0, ("baseline", "examples", "llm", "zzz")), (1, ("baseline", "examples", "aaa")), (2, ("baseline",))):  # fmt: skip
            for explainer in explainers:
                con.execute(
                    "INSERT INTO explanations (sae_id, feature, explainer, status, explanation) "
                    "VALUES ('a', ?, ?, 'ok', ?)",
                    [feature, explainer, f"{explainer} says {feature}"],
                )
    texts = results.explanation_texts(store, "a", [0, 1, 2, 3])
    assert texts == {0: "llm says 0", 1: "examples says 1", 2: "baseline says 2"}
    assert [results.stored_explanation(store, "a", f) for f in range(4)] == [
        "llm says 0", "examples says 1", "baseline says 2", None,
    ]  # fmt: skip
    assert results.stored_explanation(store, "a", 0, "baseline") == "baseline says 0"
