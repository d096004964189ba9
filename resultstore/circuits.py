"""Rows owned by circuit runs: `circuits`, `circuit_nodes`, `circuit_edges`, `circuit_curves`.

A circuit run writes all its rows (and registers its SAEs) in one transaction, so a failure
leaves nothing behind. Rows are read back by circuit id.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from resultstore.saes import SAERecord, config_hash, register_sae
from resultstore.schema import connect, dicts
from saelab_base import __version__

CIRCUIT_TABLES = ("circuits", "circuit_nodes", "circuit_edges", "circuit_curves")


@dataclass
class CircuitRecord:
    """One circuit run: its summary, nodes, edges and curves, ready to write."""

    summary: dict
    """Columns of `circuits` (without circuit_id, config_hash, version, created_at)."""
    config: dict
    nodes: list[dict] = field(default_factory=list)
    """Columns of `circuit_nodes` (without circuit_id)."""
    edges: list[dict] = field(default_factory=list)
    """Columns of `circuit_edges` (without circuit_id)."""
    curves: list[dict] = field(default_factory=list)
    """Columns of `circuit_curves` (without circuit_id)."""


def write_circuit(path: str | Path, record: CircuitRecord, saes: list[SAERecord]) -> str:
    """Insert one circuit run with every row, in one transaction; returns its id."""
    circuit_id = uuid.uuid4().hex[:16]
    summary = {
        **record.summary,
        "circuit_id": circuit_id,
        "config_json": json.dumps(record.config, default=str),
        "config_hash": config_hash(record.config),
        "saelab_version": __version__,
    }
    with connect(path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            for sae in saes:
                register_sae(con, sae)
            cols = list(summary)
            con.execute(
                f"INSERT INTO circuits ({', '.join(cols)}, created_at) "
                f"VALUES ({', '.join('?' * len(cols))}, now())",
                [summary[c] for c in cols],
            )
            _insert_many(con, "circuit_nodes", circuit_id, record.nodes)
            _insert_many(con, "circuit_edges", circuit_id, record.edges)
            _insert_many(con, "circuit_curves", circuit_id, record.curves)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return circuit_id


def _insert_many(con, table: str, circuit_id: str, rows: list[dict]) -> None:
    if table not in CIRCUIT_TABLES:
        raise ValueError(f"not a circuit table: {table}")
    if not rows:
        return
    cols = ["circuit_id", *rows[0]]
    con.executemany(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        [[circuit_id, *r.values()] for r in rows],
    )


def list_circuits(path: str | Path) -> list[dict]:
    with connect(path, read_only=True) as con:
        return dicts(con.execute("SELECT * FROM circuits ORDER BY created_at"))


def circuit_rows(path: str | Path, circuit_id: str) -> dict[str, list[dict]]:
    """Every row of one circuit, by table."""
    out = {}
    with connect(path, read_only=True) as con:
        for table in CIRCUIT_TABLES:
            out[table] = dicts(
                con.execute(f"SELECT * FROM {table} WHERE circuit_id = ?", [circuit_id])
            )
    return out


def feature_notes(con, sae_id: str, features: list[int], model_sha256: str) -> dict[int, dict]:
    """Top logit tokens and an explanation per latent, where the store has them."""
    notes: dict[int, dict] = {f: {} for f in features}
    if not features:
        return notes
    rows = con.execute(
        "SELECT l.feature, v.token FROM feature_logits l LEFT JOIN vocab v "
        "ON v.model_sha256 = ? AND v.token_id = l.token_id "
        "WHERE l.sae_id = ? AND l.side = 'top' AND l.rank < 5 AND l.feature IN (SELECT unnest(?)) "
        "ORDER BY l.feature, l.rank",
        [model_sha256, sae_id, features],
    ).fetchall()
    for feature, token in rows:
        notes[feature].setdefault("top_tokens", []).append(token)
    rows = con.execute(
        "SELECT feature, explanation FROM explanations WHERE sae_id = ? AND explanation IS NOT NULL AND explanation <> '' "
        "AND feature IN (SELECT unnest(?)) ORDER BY feature, explainer",
        [sae_id, features],
    ).fetchall()
    for feature, text in rows:
        notes[feature].setdefault("explanation", text)
    return notes
