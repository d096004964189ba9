"""Rows owned by eval runs: `eval_runs`, `metrics` and, for the features eval, the per-feature
tables. An eval run of kind E on SAE S replaces exactly the rows of (S, E), in one transaction
(a failed write leaves nothing)."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resultstore.saes import SAERecord, config_hash, register_sae
from resultstore.schema import connect, dicts
from saelab_base import __version__
from saelab_base.errors import UserError

FEATURE_TABLES = ("features", "feature_examples", "feature_histograms", "feature_logits")


@dataclass
class EvalRun:
    """One evaluation of one SAE: its config and the rows it produced."""

    sae_id: str
    eval: str
    config: dict
    acts_url: str
    n_tokens: int
    seconds: float
    metrics: dict[str, float]
    tables: dict[str, Any] | None = None
    """Per-feature rows for the `features` eval: table name -> pyarrow.Table (columns in table order, no run_id)."""


def write_eval_run(path: str | Path, record: SAERecord, run: EvalRun) -> str:
    """Replace the (SAE, eval) rows with this run's, in one transaction; returns the run id.

    A run with a NaN or infinite metric is refused (`UserError`) before the file is opened: a
    broken input (a damaged store, a diverged SAE) must never replace good stored numbers."""
    bad = {k: v for k, v in run.metrics.items() if not math.isfinite(float(v))}
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in list(bad.items())[:4])
        raise UserError(
            f"the {run.eval} eval of SAE {record.name} gave non-finite metrics ({shown}); "
            f"nothing was written to {path}, its earlier rows are kept"
        )
    run_id = uuid.uuid4().hex[:16]
    with connect(path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            register_sae(con, record)
            _delete_eval_rows(con, run.sae_id, run.eval)
            con.execute(
                "INSERT INTO eval_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, now(), ?)",
                [
                    run_id,
                    run.sae_id,
                    run.eval,
                    json.dumps(run.config, default=str),
                    config_hash(run.config),
                    run.acts_url,
                    run.n_tokens,
                    run.seconds,
                    __version__,
                ],
            )
            if run.metrics:
                con.executemany(
                    "INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                    [
                        [run.sae_id, run.eval, name, float(value), run_id]
                        for name, value in run.metrics.items()
                    ],
                )
            for table, rows in (run.tables or {}).items():
                _insert_arrow(con, table, rows, run_id)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return run_id


def _delete_eval_rows(con, sae_id: str, eval_name: str) -> None:
    con.execute("DELETE FROM metrics WHERE sae_id = ? AND eval = ?", [sae_id, eval_name])
    con.execute("DELETE FROM eval_runs WHERE sae_id = ? AND eval = ?", [sae_id, eval_name])
    if eval_name == "features":
        for table in FEATURE_TABLES:
            con.execute(
                f"DELETE FROM {table} WHERE sae_id = ?", [sae_id]
            )  # table names are constants


def _insert_arrow(con, table: str, rows, run_id: str) -> None:
    import pyarrow as pa

    if table not in FEATURE_TABLES:
        raise ValueError(f"not a bulk-insert table: {table}")
    rows = rows.append_column("run_id", pa.array([run_id] * rows.num_rows, pa.string()))
    con.register("_incoming", rows)
    try:
        columns = ", ".join(rows.column_names)
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _incoming")
    finally:
        con.unregister("_incoming")


def metrics_table(path: str | Path, sae_ids: list[str] | None = None) -> list[dict]:
    """Long-form metrics joined with their SAE's name and architecture."""
    with connect(path, read_only=True) as con:
        query = (
            "SELECT s.sae_id, s.name, s.architecture, s.d_sae, m.eval, m.metric, m.value "
            "FROM metrics m JOIN saes s USING (sae_id)"
        )
        params: list[Any] = []
        if sae_ids:
            query += " WHERE s.sae_id IN (SELECT unnest(?))"
            params.append(sae_ids)
        return dicts(con.execute(query + " ORDER BY s.name, m.eval, m.metric", params))
