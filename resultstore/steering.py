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
