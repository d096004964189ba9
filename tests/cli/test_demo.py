"""`saelab demo` end to end on tiny settings (slow: run with `make test-all` or `-m slow`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import resultstore as results


@pytest.mark.slow
def test_demo_runs_every_step_and_fills_the_results_file(tmp_path):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--tokens", "16384", "--d-sae", "256", "--k", "8"]
    done = subprocess.run(
        [sys.executable, "-m", "saelab.cli", *argv, "--explain", "2"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 5/5" in done.stdout and "saelab demo: done" in done.stdout
    db = out / "results.duckdb"
    (sae,) = results.list_saes(db)
    metrics = {(m["eval"], m["metric"]) for m in results.metrics_table(db)}
    assert ("core", "fvu") in metrics and ("loss", "ce_loss_score") in metrics
    scores = results.interp_scores(db, sae["sae_id"])
    assert len({r["feature"] for r in scores}) == 2
    assert {r["explainer"] for r in scores} == {"llm", "baseline"}
