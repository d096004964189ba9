"""Rows owned by eval runs: `eval_runs`, `metrics`, `latent_metrics`, and the per-feature dashboard
tables an eval may fill (the features eval). An eval run of kind E on SAE S replaces exactly the
rows of (S, E), in one transaction (a failed write leaves nothing)."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saelab.base import __version__
from saelab.base.errors import UserError
from saelab.resultstore.rows import (
    EvalRunRow,
    FeatureExampleRow,
    FeatureHistogramRow,
    FeatureLogitRow,
    FeatureRow,
    LatentMetricRow,
    MetricRow,
    SAERow,
)
from saelab.resultstore.saes import config_hash, register_sae
from saelab.resultstore.store import ResultsStore, insert, insert_arrow

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

FEATURE_ROWS = {cls.TABLE: cls for cls in (FeatureRow, FeatureExampleRow, FeatureHistogramRow, FeatureLogitRow)}  # fmt: skip
"""The per-feature dashboard tables an eval run may fill (bulk rows as pyarrow tables)."""
FEATURE_TABLES = tuple(FEATURE_ROWS)


@dataclass
class EvalRun:
    """One evaluation of one SAE: its config and the rows it produced."""

    sae_id: str
    eval: str
    config: dict
    """The eval's settings and conventions (stored as `eval_runs.config_json`)."""
    acts_url: str
    n_tokens: int
    seconds: float
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Metric -> (low, high) of its 95% confidence interval, where the eval measured one."""
    latent_metrics: dict[str, Any] = field(default_factory=dict)
    """Per-latent metric -> `[d_sae]` values; NaN entries (not measured) are not stored."""
    tables: dict[str, Any] | None = None
    """Per-feature rows: table name (one of `FEATURE_TABLES`) -> pyarrow.Table with the row
    class's columns but `run_id`."""


def write_eval_run(store: ResultsStore, sae: SAERow, run: EvalRun) -> str:
    """Replace the (SAE, eval) rows with this run's, in one transaction; returns the run id.

    A run with a NaN or infinite metric is refused (`UserError`) before the file is opened: a
    broken input (a damaged store, a diverged SAE) must never replace good stored numbers."""
    bad = {k: v for k, v in run.metrics.items() if not math.isfinite(float(v))}
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in list(bad.items())[:4])
        raise UserError(
            f"the {run.eval} eval of SAE {sae.name} gave non-finite metrics ({shown}); "
            f"nothing was written to {store.path}, its earlier rows are kept"
        )
    unknown = set(run.tables or {}) - set(FEATURE_ROWS)
    if unknown:
        raise ValueError(f"not a per-feature table: {', '.join(sorted(unknown))}")
    run_id = uuid.uuid4().hex[:16]
    metrics = [
        MetricRow(run.sae_id, run.eval, k, float(v), run_id, *_interval(run.intervals.get(k)))
        for k, v in run.metrics.items()
    ]
    latent = _latent_table(run)
    with store.transaction() as con:
        register_sae(con, sae, store)
        _delete_eval_rows(con, run.sae_id, run.eval, set(run.tables or {}))
        insert(con, [EvalRunRow(
            run_id, run.sae_id, run.eval, json.dumps(run.config, default=str),
            config_hash(run.config), run.acts_url, run.n_tokens, run.seconds,
            saelab_version=__version__,
        )])  # fmt: skip
        insert(con, metrics)
        if latent is not None:
            insert_arrow(con, LatentMetricRow, latent, run_id)
        for table, rows in (run.tables or {}).items():
            insert_arrow(con, FEATURE_ROWS[table], rows, run_id)
    return run_id


def _interval(bounds: tuple[float, float] | None) -> tuple[float | None, float | None]:
    if bounds is None:
        return None, None
    return float(bounds[0]), float(bounds[1])


def _latent_table(run: EvalRun):
    """The run's per-latent values as one pyarrow table (NaN entries left out), or None."""
    if not run.latent_metrics:
        return None
    import numpy as np
    import pyarrow as pa

    names, features, values = [], [], []
    for name, column in run.latent_metrics.items():
        column = np.asarray(column, dtype=np.float64)
        keep = np.flatnonzero(np.isfinite(column))
        names.append(np.full(len(keep), name, dtype=object))
        features.append(keep)
        values.append(column[keep])
    n = sum(len(f) for f in features)
    return pa.table({
        "sae_id": pa.array([run.sae_id] * n, pa.string()),
        "eval": pa.array([run.eval] * n, pa.string()),
        "metric": pa.array(np.concatenate(names).tolist(), pa.string()),
        "feature": pa.array(np.concatenate(features), pa.int32()),
        "value": pa.array(np.concatenate(values), pa.float64()),
    })  # fmt: skip


def _delete_eval_rows(
    con: DuckDBPyConnection, sae_id: str, eval_name: str, fills: set[str]
) -> None:
    """Every row an earlier run of (SAE, eval) wrote: by (SAE, eval) where a table has an
    `eval` column; in the per-feature tables this run fills, every row of the SAE (a latent has
    one set of dashboard rows); in the others, the rows of the earlier runs."""
    old = [r[0] for r in con.execute(
        "SELECT run_id FROM eval_runs WHERE sae_id = ? AND eval = ?", [sae_id, eval_name]
    ).fetchall()]  # fmt: skip
    for cls in (MetricRow, LatentMetricRow):
        con.execute(f"DELETE FROM {cls.TABLE} WHERE sae_id = ? AND eval = ?", [sae_id, eval_name])
    for table in FEATURE_TABLES:  # table names are constants
        if table in fills:
            con.execute(f"DELETE FROM {table} WHERE sae_id = ?", [sae_id])
        elif old:
            con.execute(
                f"DELETE FROM {table} WHERE sae_id = ? AND run_id IN (SELECT unnest(?))",
                [sae_id, old],
            )
    con.execute("DELETE FROM eval_runs WHERE sae_id = ? AND eval = ?", [sae_id, eval_name])


def eval_runs(store: ResultsStore, sae_id: str | None = None) -> list[EvalRunRow]:
    if sae_id is None:
        return store.select(EvalRunRow, order="sae_id, eval")
    return store.select(EvalRunRow, "sae_id = ?", [sae_id], order="eval")


def metrics_long(store: ResultsStore, sae_ids: list[str] | None = None) -> list[dict]:
    """Long-form metrics joined with their SAE's name, architecture and width, and the 95%
    interval (`ci_low`, `ci_high`; None where the eval measured none)."""
    query = (
        "SELECT s.sae_id, s.name, s.architecture, s.d_sae, m.eval, m.metric, m.value, "
        "m.ci_low, m.ci_high "
        "FROM metrics m JOIN saes s USING (sae_id)"
    )
    params: list[Any] = []
    if sae_ids is not None:
        query += " WHERE s.sae_id IN (SELECT unnest(?))"
        params.append(list(sae_ids))
    return store.query(query + " ORDER BY s.name, m.eval, m.metric", params)


def latent_metrics(store: ResultsStore, sae_id: str, feature: int) -> list[LatentMetricRow]:
    """Every per-latent value stored for one latent."""
    return store.select(
        LatentMetricRow, "sae_id = ? AND feature = ?", [sae_id, int(feature)], order="eval, metric"
    )
