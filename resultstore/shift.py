"""Rows owned by SHIFT runs: `shift_runs`, `shift_accuracies`, `shift_features`.

A run writes all its rows (and registers its SAEs) in one transaction. Its id is derived from
what decides it (config, texts, SAEs, model), so running the same experiment again replaces it.
"""

from __future__ import annotations

import hashlib

from saelab.resultstore.rows import SAERow, ShiftAccuracyRow, ShiftFeatureRow, ShiftRunRow
from saelab.resultstore.saes import register_sae
from saelab.resultstore.store import ResultsStore, insert

METHOD_LABELS = {
    "original": "original (biased probe)",
    "shift": "SHIFT",
    "shift_retrain": "SHIFT + retrain",
    "random": "random latents ablated",
    "neurons": "neurons (same selection)",
    "oracle": "oracle (balanced probe)",
}
"""The classifiers a SHIFT run scores (`shift_accuracies.method`), in the paper's table order."""

SHIFT_ROWS = (ShiftRunRow, ShiftAccuracyRow, ShiftFeatureRow)
SHIFT_TABLES = tuple(cls.TABLE for cls in SHIFT_ROWS)


def shift_run_id(config_hash: str, data_hash: str, sae_ids: list[str], model_sha256: str) -> str:
    """The same config, texts, SAEs and model give the same id."""
    key = "|".join(["shift", config_hash, data_hash, *sae_ids, model_sha256])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def write_shift(
    store: ResultsStore,
    run: ShiftRunRow,
    accuracies: list[ShiftAccuracyRow],
    features: list[ShiftFeatureRow],
    saes: list[SAERow],
) -> str:
    """Store one SHIFT run with every row, replacing an earlier run with its id; returns it."""
    rid = run.run_id
    if any(r.run_id != rid for r in [*accuracies, *features]):
        raise ValueError("every accuracy and feature row must carry the run's id")
    with store.transaction() as con:
        for sae in saes:
            register_sae(con, sae, store)
        for cls in SHIFT_ROWS:  # table names are constants
            con.execute(f"DELETE FROM {cls.TABLE} WHERE run_id = ?", [rid])
        insert(con, [run])
        insert(con, accuracies)
        insert(con, features)
    return rid


def shift_runs(store: ResultsStore) -> list[ShiftRunRow]:
    """Every SHIFT run, newest first."""
    return store.select(ShiftRunRow, order="created_at DESC")


def shift_accuracies(store: ResultsStore, run_id: str) -> list[ShiftAccuracyRow]:
    return store.select(ShiftAccuracyRow, "run_id = ?", [run_id], order="method, label")


def shift_features(
    store: ResultsStore, run_id: str, kind: str | None = None, spurious_only: bool = False
) -> list[ShiftFeatureRow]:
    """A run's candidates (of one kind: latent or neuron), by kind and rank."""
    where, params = ["run_id = ?"], [run_id]
    if kind is not None:
        where.append("kind = ?")
        params.append(kind)
    if spurious_only:
        where.append("spurious")
    return store.select(ShiftFeatureRow, " AND ".join(where), params, order="kind, rank")
