"""The steering migration on an older file, and scorers owning only their own rows."""

from __future__ import annotations

import duckdb

from saelab import resultstore as results
from saelab.resultstore.schema import MIGRATIONS


def test_a_schema_2_file_gains_the_steering_tables_in_place(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    for step in MIGRATIONS[:2]:
        for statement in step:
            con.execute(statement)
    con.execute("INSERT INTO schema_info VALUES ('schema_version', '2')")
    con.execute("INSERT INTO saes (sae_id, name) VALUES ('abc', 'old')")
    con.close()
    with results.ResultsStore(path, "write").transaction() as con:
        version = con.execute("SELECT value FROM schema_info").fetchone()[0]
        assert int(version) == results.SCHEMA_VERSION
        assert con.execute("SELECT name FROM saes").fetchall() == [("old",)]
        assert con.execute("SELECT count(*) FROM steering_runs").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM steering_samples").fetchone()[0] == 0


def _batch(run_id: str, scorer: str, value: float) -> results.InterpBatch:
    explanation = results.ExplanationRow(
        sae_id="s", feature=1, explainer="llm", status="ok", explanation="cats", n_examples=8,
        provenance_json="{}", config_hash=run_id, run_id=run_id,
    )  # fmt: skip
    score = results.ScoreRow(
        sae_id="s", feature=1, explainer="llm", scorer=scorer, status="ok", value=value,
        ci_low=None, ci_high=None, n_windows=4, n_valid=4, n_failures=0, n_positive=2,
        n_negative=2, provenance_json="{}", config_hash=run_id, run_id=run_id,
    )  # fmt: skip
    run = results.AutointerpRunRow(
        run_id=run_id, sae_id="s", config_json="{}", config_hash=run_id, status="finished",
        latents_done=1, requests=1, prompt_tokens=1, completion_tokens=1, saelab_version="x",
    )  # fmt: skip
    return results.InterpBatch([explanation], [score], [], run)


def test_a_later_scorer_run_keeps_the_other_scorers_rows(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    results.write_interp_batch(store, _batch("run1", "detection", 0.8))
    results.write_interp_batch(store, _batch("run2", "intervention", 0.6))
    got = {r["scorer"]: r["value"] for r in results.interp_scores(store)}
    assert got == {"detection": 0.8, "intervention": 0.6}
    results.write_interp_batch(store, _batch("run3", "detection", 0.7))  # a rerun replaces its own
    got = {r["scorer"]: r["value"] for r in results.interp_scores(store)}
    assert got == {"detection": 0.7, "intervention": 0.6}


def test_a_running_run_keeps_its_start_and_updates_its_counters(tmp_path):
    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    first = _batch("run1", "detection", 0.8)
    first.run.status, first.run.requests = "running", 1
    results.write_interp_batch(store, first)
    (started,) = [r.started_at for r in results.autointerp_runs(store)]
    later = _batch("run1", "detection", 0.8)
    later.run.requests, later.run.config_json = 5, '{"changed": true}'
    results.write_interp_batch(store, later)
    (row,) = results.autointerp_runs(store)
    assert (row.status, row.requests, row.started_at) == ("finished", 5, started)
    assert row.config_json == "{}" and row.updated_at >= started
