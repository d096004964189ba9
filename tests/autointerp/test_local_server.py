"""The offline default: `saelab explain` with no endpoint serves the embedded model through
`transformers serve` on 127.0.0.1 and drives the whole pipeline over HTTP (tiny settings)."""

from __future__ import annotations

import json
import shutil

import resultstore as results
from saelab.cli import main


def test_explain_through_the_local_server(interp_db, tmp_path, capsys):
    path, sae_id = interp_db
    db = str(tmp_path / "results.duckdb")
    shutil.copy(path, db)
    with results.connect(db, read_only=True) as con:
        ready = [
            f
            for (f,) in con.execute(
                "SELECT feature FROM features WHERE sae_id = ? AND n_active >= 40 ORDER BY feature",
                [sae_id],
            ).fetchall()
        ]
    argv = ["explain", "--db", db, "--sae", sae_id, "--features", str(ready[0]), "--no-progress"]
    argv += ["--explain-top", "4", "--score-windows", "4", "--simulation-windows", "1"]
    assert main(argv + ["--scorers", "detection", "simulation", "--concurrency", "2"]) == 0
    out = capsys.readouterr().out
    assert "1 latents explained and scored" in out
    (expl,) = [r for r in results.interp_scores(db) if r["explainer"] == "llm"][:1]
    provenance = json.loads(expl["provenance_json"])
    assert provenance["explainer"]["model"].endswith("smollm2-135m")
    assert provenance["scorer"]["prompt"].startswith(expl["scorer"])
    with results.connect(db, read_only=True) as con:
        (run,) = con.execute(
            "SELECT status, requests, completion_tokens FROM autointerp_runs"
        ).fetchall()
        statuses = con.execute("SELECT DISTINCT status FROM scores").fetchall()
    assert run[0] == "finished" and run[1] >= 4 and run[2] > 0
    # a 135M model often answers out of format: that is counted, never scored as right or wrong
    assert {s for (s,) in statuses} <= {"ok", "failed", "undefined", "explanation_failed"}
