"""Rows owned by steering: `steering_runs` (one per method and strength, with its metrics and
full provenance) and `steering_samples` (the generated texts, with seeds)."""

from __future__ import annotations

from saelab.resultstore.rows import SteeringRunRow, SteeringSampleRow
from saelab.resultstore.store import ResultsStore, insert


def write_steering_runs(
    store: ResultsStore, runs: list[SteeringRunRow], samples: list[SteeringSampleRow]
) -> None:
    """Insert runs and their samples in one transaction (all or nothing)."""
    with store.transaction() as con:
        insert(con, runs)
        insert(con, samples)


def steering_runs(
    store: ResultsStore, sae_id: str | None = None, sweep_id: str | None = None
) -> list[SteeringRunRow]:
    """Stored runs, oldest first."""
    where, params = ["1 = 1"], []
    if sae_id:
        where.append("sae_id = ?")
        params.append(sae_id)
    if sweep_id:
        where.append("sweep_id = ?")
        params.append(sweep_id)
    return store.select(
        SteeringRunRow, " AND ".join(where), params, order="created_at, method, strength"
    )


def steering_samples(store: ResultsStore, run_id: str) -> list[SteeringSampleRow]:
    return store.select(SteeringSampleRow, "run_id = ?", [run_id], order="sample")


def steerable_latent(store: ResultsStore, sae_id: str) -> int | None:
    """A latent worth steering by default: live (it fired in the features eval, so its strength
    unit is defined), not dense and with enough examples; explained ones first, then the
    highest max activation. None when the SAE has no feature statistics."""
    rows = store.query(
        "SELECT f.feature, EXISTS (SELECT 1 FROM explanations e WHERE e.sae_id = f.sae_id "
        "AND e.feature = f.feature AND e.status = 'ok' AND e.explanation IS NOT NULL) AS explained "
        "FROM features f WHERE f.sae_id = ? AND NOT f.dead AND f.max_act > 0 "
        "ORDER BY NOT f.dense AND NOT coalesce(f.too_few_examples, false) DESC, explained DESC, "
        "f.max_act DESC, f.feature LIMIT 1",
        [sae_id],
    )
    return int(rows[0]["feature"]) if rows else None
