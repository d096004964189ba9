"""Rows owned by steering: `steering_runs` (one per method and strength, with its metrics and
full provenance) and `steering_samples` (the generated texts, with seeds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resultstore.schema import connect, dicts

RUN_COLUMNS = [
    "run_id", "sweep_id", "sae_id", "features", "method", "mode", "strength", "unit",
    "unit_values", "positions", "hook", "model", "model_sha256", "kl", "feature_act", "concept",
    "concept_kind", "perplexity", "target_kl", "prompts_json", "neutral_json", "sampling_json",
    "config_json", "config_hash", "saelab_version",
]  # fmt: skip
SAMPLE_COLUMNS = [
    "run_id", "sample", "prompt", "seed", "clean_text", "steered_text", "steered_tokens",
    "feature_act", "perplexity", "concept",
]  # fmt: skip


def write_steering_runs(path: str | Path, runs: list[dict], samples: list[dict]) -> None:
    """Insert runs and their samples in one transaction (all or nothing)."""
    with connect(path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            marks = ", ".join("?" * len(RUN_COLUMNS))
            con.executemany(
                f"INSERT INTO steering_runs ({', '.join(RUN_COLUMNS)}, created_at) "
                f"VALUES ({marks}, now())",
                [[r[c] for c in RUN_COLUMNS] for r in runs],
            )
            if samples:
                marks = ", ".join("?" * len(SAMPLE_COLUMNS))
                con.executemany(
                    f"INSERT INTO steering_samples ({', '.join(SAMPLE_COLUMNS)}) VALUES ({marks})",
                    [[s[c] for c in SAMPLE_COLUMNS] for s in samples],
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def steering_runs(
    path: str | Path, sae_id: str | None = None, sweep_id: str | None = None
) -> list[dict]:
    """Stored runs, oldest first (JSON columns decoded)."""
    query, params = "SELECT * FROM steering_runs WHERE 1 = 1", []
    params: list[Any]
    if sae_id:
        query += " AND sae_id = ?"
        params.append(sae_id)
    if sweep_id:
        query += " AND sweep_id = ?"
        params.append(sweep_id)
    with connect(path, read_only=True) as con:
        rows = dicts(con.execute(query + " ORDER BY created_at, method, strength", params))
    for row in rows:
        for key in ("prompts_json", "neutral_json", "sampling_json", "config_json"):
            row[key[:-5]] = json.loads(row[key]) if row[key] else None
    return rows


def steering_samples(path: str | Path, run_id: str) -> list[dict]:
    with connect(path, read_only=True) as con:
        return dicts(
            con.execute("SELECT * FROM steering_samples WHERE run_id = ? ORDER BY sample", [run_id])
        )
