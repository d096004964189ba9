"""Rows owned by circuit runs: `circuits`, `circuit_nodes`, `circuit_edges`, `circuit_curves`.

A circuit run writes all its rows (and registers its SAEs) in one transaction, so a failure
leaves nothing behind. Its id is derived from what decides it (config, prompts, SAEs, model), so
running the same circuit again replaces it rather than storing a second copy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from saelab.resultstore.rows import (
    CircuitCurveRow,
    CircuitEdgeRow,
    CircuitNodeRow,
    CircuitRow,
    SAERow,
)
from saelab.resultstore.saes import register_sae
from saelab.resultstore.store import ResultsStore, insert

CIRCUIT_ROWS = (CircuitRow, CircuitNodeRow, CircuitEdgeRow, CircuitCurveRow)
CIRCUIT_TABLES = tuple(cls.TABLE for cls in CIRCUIT_ROWS)


def circuit_id(config_hash: str, prompts_hash: str, sae_ids: list[str], model_sha256: str) -> str:
    """The id of a circuit run: the same config, prompts, SAEs and model give the same id."""
    key = "|".join([config_hash, prompts_hash, *sae_ids, model_sha256])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class CircuitRecord:
    """One circuit run: its summary row, nodes, edges and curves, ready to write (every row
    carries the summary's circuit id)."""

    circuit: CircuitRow
    nodes: list[CircuitNodeRow] = field(default_factory=list)
    edges: list[CircuitEdgeRow] = field(default_factory=list)
    curves: list[CircuitCurveRow] = field(default_factory=list)


def write_circuit(store: ResultsStore, record: CircuitRecord, saes: list[SAERow]) -> str:
    """Store one circuit run with every row, replacing an earlier run with the same id, in one
    transaction; returns its id."""
    cid = record.circuit.circuit_id
    rows = [*record.nodes, *record.edges, *record.curves]
    if any(r.circuit_id != cid for r in rows):
        raise ValueError("every node, edge and curve row must carry the circuit's id")
    with store.transaction() as con:
        for sae in saes:
            register_sae(con, sae, store)
        for cls in CIRCUIT_ROWS:  # table names are constants
            con.execute(f"DELETE FROM {cls.TABLE} WHERE circuit_id = ?", [cid])
        insert(con, [record.circuit])
        insert(con, record.nodes)
        insert(con, record.edges)
        insert(con, record.curves)
    return cid


def list_circuits(store: ResultsStore) -> list[CircuitRow]:
    return store.select(CircuitRow, order="created_at")


def circuit_nodes(store: ResultsStore, circuit_id: str) -> list[CircuitNodeRow]:
    return store.select(CircuitNodeRow, "circuit_id = ?", [circuit_id], order="node")


def circuit_edges(store: ResultsStore, circuit_id: str) -> list[CircuitEdgeRow]:
    return store.select(CircuitEdgeRow, "circuit_id = ?", [circuit_id], order="up_node, down_node")


def circuit_curves(store: ResultsStore, circuit_id: str) -> list[CircuitCurveRow]:
    return store.select(CircuitCurveRow, "circuit_id = ?", [circuit_id], order="kind, n_nodes")


def feature_notes(
    store: ResultsStore, sae_id: str, features: list[int], model_sha256: str
) -> dict[int, dict]:
    """Top logit tokens and an explanation per latent, where the store has them."""
    notes: dict[int, dict] = {f: {} for f in features}
    if not features:
        return notes
    rows = store.query(
        "SELECT l.feature, v.token FROM feature_logits l LEFT JOIN vocab v "
        "ON v.model_sha256 = ? AND v.token_id = l.token_id "
        "WHERE l.sae_id = ? AND l.side = 'top' AND l.rank < 5 AND l.feature IN (SELECT unnest(?)) "
        "ORDER BY l.feature, l.rank",
        [model_sha256, sae_id, list(features)],
    )
    for r in rows:
        notes[r["feature"]].setdefault("top_tokens", []).append(r["token"])
    rows = store.query(
        "SELECT feature, explanation FROM explanations WHERE sae_id = ? AND explanation IS NOT "
        "NULL AND explanation <> '' AND feature IN (SELECT unnest(?)) ORDER BY feature, explainer",
        [sae_id, list(features)],
    )
    for r in rows:
        notes[r["feature"]].setdefault("explanation", r["explanation"])
    return notes
