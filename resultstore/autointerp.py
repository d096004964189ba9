"""Rows owned by auto-interpretation: explanations, scores, runs and the LLM response cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resultstore.schema import connect, dicts

INTERP_TABLES = ("explanations", "scores")


def finished_features(con, sae_id: str, config_hash: str, n_rows: int) -> set[int]:
    """Latents whose explanation and score rows (n_rows of them) came from this configuration."""
    rows = con.execute(
        "SELECT feature FROM (SELECT sae_id, feature, config_hash FROM explanations UNION ALL "
        "SELECT sae_id, feature, config_hash FROM scores) WHERE sae_id = ? AND config_hash = ? "
        "GROUP BY feature HAVING count(*) = ?",
        [sae_id, config_hash, n_rows],
    ).fetchall()
    return {r[0] for r in rows}


def cached_responses(con, sae_id: str, features: list[int]) -> dict[str, str]:
    rows = con.execute(
        "SELECT key, response_json FROM llm_cache WHERE sae_id = ? AND feature IN (SELECT unnest(?))",
        [sae_id, features],
    ).fetchall()
    return dict(rows)


@dataclass
class InterpBatch:
    """Finished latents of one auto-interp run, written together in one transaction."""

    explanations: list[dict]
    scores: list[dict]
    cache: list[dict]
    run: dict
    """The run's row (counters as they stand now; `message` says why it stopped, if it did not
    finish)."""


_COLUMNS = {
    "explanations": [
        "sae_id", "feature", "explainer", "status", "explanation", "n_examples",
        "provenance_json", "config_hash", "run_id",
    ],
    "scores": [
        "sae_id", "feature", "explainer", "scorer", "status", "value", "ci_low", "ci_high",
        "n_windows", "n_valid", "n_failures", "n_positive", "n_negative", "provenance_json",
        "config_hash", "run_id",
    ],
}  # fmt: skip
_KEYS = {
    "explanations": ("sae_id", "feature", "explainer"),
    "scores": ("sae_id", "feature", "explainer", "scorer"),
}
_RUN_COLUMNS = [
    "run_id", "sae_id", "config_json", "config_hash", "status", "latents_done", "requests",
    "cache_hits", "retries", "unparsable", "prompt_tokens", "completion_tokens", "saelab_version",
    "message",
]  # fmt: skip


def write_interp_batch(path: str | Path, batch: InterpBatch) -> None:
    """Replace the explanation and score rows with these keys, add cache entries, update the run."""
    with connect(path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            for table in INTERP_TABLES:
                rows = batch.explanations if table == "explanations" else batch.scores
                cols = _COLUMNS[table]
                # Each row replaces only the row with its own key (its explainer, and for scores
                # its scorer): a scorer run later on its own never erases another's rows.
                key = _KEYS[table]
                keys = {tuple(r[c] for c in key) for r in rows}
                where = " AND ".join(f"{c} = ?" for c in key)
                if not keys:  # DuckDB refuses executemany with no parameters
                    continue
                con.executemany(
                    f"DELETE FROM {table} WHERE {where}", [list(k) for k in keys]
                )  # table and column names are constants
                if rows:
                    marks = ", ".join("?" * len(cols))
                    con.executemany(
                        f"INSERT INTO {table} ({', '.join(cols)}, created_at) VALUES ({marks}, now())",
                        [[r[c] for c in cols] for r in rows],
                    )
            if batch.cache:
                con.executemany(
                    "INSERT OR REPLACE INTO llm_cache VALUES (?, ?, ?, ?, ?, ?, now())",
                    [
                        [
                            c["key"],
                            c["sae_id"],
                            c["feature"],
                            c["model"],
                            c["request"],
                            c["response"],
                        ]
                        for c in batch.cache
                    ],
                )
            run = batch.run
            marks = ", ".join("?" * len(_RUN_COLUMNS))
            con.execute(
                f"INSERT INTO autointerp_runs ({', '.join(_RUN_COLUMNS)}, started_at, updated_at) "
                f"VALUES ({marks}, now(), now()) ON CONFLICT (run_id) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in _RUN_COLUMNS[4:])
                + ", updated_at = now()",
                [run[c] for c in _RUN_COLUMNS],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def interp_scores(path: str | Path, sae_id: str | None = None) -> list[dict]:
    """Score rows joined with their explanation (for reports and the app)."""
    with connect(path, read_only=True) as con:
        query = (
            "SELECT s.*, e.explanation, e.status AS explanation_status FROM scores s "
            "LEFT JOIN explanations e USING (sae_id, feature, explainer)"
        )
        params: list[Any] = []
        if sae_id:
            query += " WHERE s.sae_id = ?"
            params.append(sae_id)
        return dicts(con.execute(query + " ORDER BY s.feature, s.explainer, s.scorer", params))
