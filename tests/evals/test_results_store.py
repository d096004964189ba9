"""The DuckDB results store: schema, ownership of rows, concurrency, bad files."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import pyarrow as pa
import pytest

import resultstore as results
from saelab_base.errors import UserError


def record(sae_id="s1", d_sae=8):
    return results.SAERecord(
        sae_id=sae_id,
        name=f"sae-{sae_id}",
        path="/x",
        architecture="topk",
        d_in=4,
        d_sae=d_sae,
        hook="blocks.0.hook_resid_post",
        model="m",
        model_sha256="abc",
        cfg={"k": 2},
        weights_sha256="w",
    )


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


def run(sae_id, eval_name, metrics, tables=None):
    return results.EvalRun(
        sae_id=sae_id,
        eval=eval_name,
        config={"x": 1},
        acts_url="acts",
        n_tokens=10,
        seconds=0.1,
        metrics=metrics,
        tables=tables,
    )


def test_schema_is_created_and_versioned(tmp_path):
    db = tmp_path / "r.duckdb"
    with results.connect(db) as con:
        tables = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        version = con.execute(
            "SELECT value FROM schema_info WHERE key = 'schema_version'"
        ).fetchone()[0]
    assert {
        "saes",
        "eval_runs",
        "metrics",
        "features",
        "feature_examples",
        "feature_histograms",
        "feature_logits",
        "vocab",
    } <= tables
    assert int(version) == results.SCHEMA_VERSION


def test_rerun_replaces_its_own_rows_only(tmp_path):
    db = tmp_path / "r.duckdb"
    results.write_eval_run(db, record("a"), run("a", "core", {"l0": 3.0, "mse": 1.0}))
    results.write_eval_run(db, record("a"), run("a", "loss", {"ce_loss_score": 0.9}))
    results.write_eval_run(db, record("b"), run("b", "core", {"l0": 5.0}))
    results.write_eval_run(
        db, record("a"), run("a", "features", {"n": 1.0}, {"features": feature_table("a", 8, 3)})
    )
    results.write_eval_run(
        db, record("b"), run("b", "features", {"n": 1.0}, {"features": feature_table("b", 8, 4)})
    )
    results.write_eval_run(db, record("a"), run("a", "core", {"l0": 4.0}))  # re-run: mse disappears
    results.write_eval_run(
        db, record("a"), run("a", "features", {"n": 2.0}, {"features": feature_table("a", 8, 7)})
    )
    rows = {(r["name"], r["eval"], r["metric"]): r["value"] for r in results.metrics_table(db)}
    assert rows == {
        ("sae-a", "core", "l0"): 4.0,
        ("sae-a", "loss", "ce_loss_score"): 0.9,
        ("sae-a", "features", "n"): 2.0,
        ("sae-b", "core", "l0"): 5.0,
        ("sae-b", "features", "n"): 1.0,
    }
    with results.connect(db, read_only=True) as con:
        counts = dict(
            con.execute("SELECT sae_id, sum(n_active) FROM features GROUP BY sae_id").fetchall()
        )
        runs = con.execute("SELECT count(*) FROM eval_runs").fetchone()[0]
        dash = results.feature_dashboard(con, "a", 3)
        with pytest.raises(UserError, match="out of range.*0 … 7"):
            results.feature_dashboard(con, "a", 8)
        with pytest.raises(UserError, match="no SAE"):
            results.feature_dashboard(con, "zzz", 0)
    assert counts == {"a": 56, "b": 32} and runs == 5
    assert dash["stats"]["n_active"] == 7


def test_values_with_quotes_are_stored_verbatim(tmp_path):
    db = tmp_path / "r.duckdb"
    evil = "x'); DROP TABLE metrics; --"
    results.write_eval_run(db, record(evil), run(evil, "core", {evil: 1.0}))
    rows = results.metrics_table(db)
    assert rows[0]["metric"] == evil and rows[0]["sae_id"] == evil


def test_failed_write_leaves_nothing_behind(tmp_path):
    db = tmp_path / "r.duckdb"
    results.write_eval_run(db, record("a"), run("a", "core", {"l0": 3.0}))
    bad = pa.table({"no_such_column": [1]})
    with pytest.raises(duckdb.Error):
        results.write_eval_run(db, record("a"), run("a", "features", {"n": 1.0}, {"features": bad}))
    rows = results.metrics_table(db)
    assert [(r["eval"], r["value"]) for r in rows] == [("core", 3.0)]


def test_second_writer_gets_busy_error(tmp_path, monkeypatch):
    monkeypatch.setattr(results.schema, "BUSY_WAIT_S", 0.3)
    db = tmp_path / "r.duckdb"
    results.write_eval_run(db, record("a"), run("a", "core", {"l0": 3.0}))
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
            results.write_eval_run(db, record("a"), run("a", "core", {"l0": 9.0}))
    finally:
        holder.kill()
        holder.wait()
    assert results.metrics_table(db)[0]["value"] == 3.0  # nothing changed, nothing corrupted


def test_newer_schema_and_foreign_files_are_refused(tmp_path):
    db = tmp_path / "r.duckdb"
    with results.connect(db) as con:
        con.execute("UPDATE schema_info SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(UserError, match="schema version 99, newer"):
        results.list_saes(db)
    junk = tmp_path / "junk.duckdb"
    junk.write_text("this is not a database")
    with pytest.raises(UserError):
        results.list_saes(junk)
    with pytest.raises(UserError, match="no results database"):
        results.list_saes(tmp_path / "missing.duckdb")


def test_unwritable_database_location_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot create the folder of results database"):
        with results.connect(blocker / "sub" / "results.duckdb"):
            pass
    assert blocker.read_text() == "not a folder"


def test_a_version_1_file_is_migrated_with_its_rows_kept(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    for statement in results.MIGRATIONS[0]:
        con.execute(statement)
    con.execute("INSERT INTO schema_info VALUES ('schema_version', '1')")
    con.execute("INSERT INTO metrics VALUES ('s1', 'core', 'l0', 3.5, 'r')")
    con.close()
    with pytest.raises(UserError, match="older schema"):
        with results.connect(path, read_only=True):
            pass
    with results.connect(path) as con:
        assert con.execute("SELECT value FROM metrics").fetchall() == [(3.5,)]
        assert con.execute("SELECT count(*) FROM scores").fetchone() == (0,)
        version = con.execute("SELECT value FROM schema_info").fetchone()[0]
    assert int(version) == results.SCHEMA_VERSION == len(results.MIGRATIONS)


def test_a_writer_waits_for_a_reader_that_lets_go(tmp_path):
    """A reader (the app, a notebook, a script polling progress) holds the file for a moment;
    a pipeline's write waits for it instead of failing."""
    db = tmp_path / "r.duckdb"
    results.write_eval_run(db, record("a"), run("a", "core", {"l0": 3.0}))
    hold = (
        f"import duckdb, time; c = duckdb.connect({str(db)!r}, read_only=True); "
        "print('held', flush=True); time.sleep(1.5); c.close(); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        results.write_eval_run(db, record("a"), run("a", "core", {"l0": 9.0}))
    finally:
        holder.kill()
        holder.wait()
    assert results.metrics_table(db)[0]["value"] == 9.0
