"""The results store: one DuckDB file holding every SAE, eval run, metric and feature.

The schema is created and migrated here and nowhere else; every other module reads and
writes through these functions. Every query is parameterised. Writers hold the file only for
the short transaction that replaces their rows, so readers (the app) can open it read-only in
between; a second writer gets a clear "busy" error.

Ownership of rows: an eval run of kind E on SAE S replaces exactly the rows of (S, E) —
`metrics` rows with eval = E, and for the `features` eval the per-feature tables — and nothing
else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saelab.errors import UserError

SCHEMA_VERSION = 2

# Ordered migrations: MIGRATIONS[i] takes the schema from version i to i + 1. Later issues
# (explanations, scores, circuits, steering) append their tables as new entries.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE schema_info (key VARCHAR PRIMARY KEY, value VARCHAR)""",
        """CREATE TABLE saes (
            sae_id VARCHAR PRIMARY KEY,      -- hash of config + weights
            name VARCHAR, path VARCHAR, architecture VARCHAR,
            d_in INTEGER, d_sae INTEGER, hook VARCHAR, model VARCHAR, model_sha256 VARCHAR,
            cfg_json VARCHAR, cfg_hash VARCHAR, weights_sha256 VARCHAR,
            registered_at TIMESTAMP)""",
        """CREATE TABLE eval_runs (
            run_id VARCHAR PRIMARY KEY, sae_id VARCHAR, eval VARCHAR,
            config_json VARCHAR, config_hash VARCHAR, acts_url VARCHAR, n_tokens BIGINT,
            seconds DOUBLE, finished_at TIMESTAMP, saelab_version VARCHAR)""",
        """CREATE TABLE metrics (
            sae_id VARCHAR, eval VARCHAR, metric VARCHAR, value DOUBLE, run_id VARCHAR,
            PRIMARY KEY (sae_id, eval, metric))""",
        """CREATE TABLE features (
            sae_id VARCHAR, feature INTEGER, n_tokens BIGINT, n_active BIGINT,
            density DOUBLE, log10_density DOUBLE, max_act DOUBLE, mean_act DOUBLE,
            dead BOOLEAN, dense BOOLEAN, too_few_examples BOOLEAN, run_id VARCHAR,
            PRIMARY KEY (sae_id, feature))""",
        """CREATE TABLE feature_examples (
            sae_id VARCHAR, feature INTEGER, kind VARCHAR, band INTEGER, rank INTEGER,
            seq BIGINT, pos INTEGER, window_start INTEGER, activation DOUBLE,
            tokens INTEGER[], acts FLOAT[], run_id VARCHAR)""",
        """CREATE TABLE feature_histograms (
            sae_id VARCHAR, feature INTEGER, kind VARCHAR,
            bin_edges DOUBLE[], counts BIGINT[], run_id VARCHAR,
            PRIMARY KEY (sae_id, feature, kind))""",
        """CREATE TABLE feature_logits (
            sae_id VARCHAR, feature INTEGER, side VARCHAR, rank INTEGER,
            token_id INTEGER, value DOUBLE, run_id VARCHAR)""",
        """CREATE TABLE vocab (
            model_sha256 VARCHAR, token_id INTEGER, token VARCHAR,
            PRIMARY KEY (model_sha256, token_id))""",
    ],
    [  # 2: auto-interpretation (explanations, scores with intervals, the LLM response cache)
        """CREATE TABLE explanations (
            sae_id VARCHAR, feature INTEGER, explainer VARCHAR, status VARCHAR,
            explanation VARCHAR, n_examples INTEGER, provenance_json VARCHAR,
            config_hash VARCHAR, run_id VARCHAR, created_at TIMESTAMP,
            PRIMARY KEY (sae_id, feature, explainer))""",
        """CREATE TABLE scores (
            sae_id VARCHAR, feature INTEGER, explainer VARCHAR, scorer VARCHAR, status VARCHAR,
            value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, n_windows INTEGER, n_valid INTEGER,
            n_failures INTEGER, n_positive INTEGER, n_negative INTEGER, provenance_json VARCHAR,
            config_hash VARCHAR, run_id VARCHAR, created_at TIMESTAMP,
            PRIMARY KEY (sae_id, feature, explainer, scorer))""",
        """CREATE TABLE autointerp_runs (
            run_id VARCHAR PRIMARY KEY, sae_id VARCHAR, config_json VARCHAR, config_hash VARCHAR,
            status VARCHAR, started_at TIMESTAMP, updated_at TIMESTAMP, latents_done INTEGER,
            requests BIGINT, cache_hits BIGINT, retries BIGINT, unparsable BIGINT,
            prompt_tokens BIGINT, completion_tokens BIGINT, saelab_version VARCHAR)""",
        """CREATE TABLE llm_cache (
            key VARCHAR PRIMARY KEY, sae_id VARCHAR, feature INTEGER, model VARCHAR,
            request_json VARCHAR, response_json VARCHAR, created_at TIMESTAMP)""",
    ],
]
INTERP_TABLES = ("explanations", "scores")
FEATURE_TABLES = ("features", "feature_examples", "feature_histograms", "feature_logits")


def _duckdb():
    import duckdb

    return duckdb


@contextlib.contextmanager
def connect(path: str | Path, read_only: bool = False) -> Iterator[Any]:
    """A connection with the schema at the current version (created or migrated if writable)."""
    duckdb = _duckdb()
    path = str(path)
    if read_only and not Path(path).exists():
        raise UserError(f"no results database at {path!r}; run `saelab eval` first")
    if not read_only:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"cannot create the folder of results database {path!r}: {err.strerror or err}; "
                "choose a writable --db"
            ) from None
    try:
        con = duckdb.connect(path, read_only=read_only)
    except duckdb.IOException as err:
        if "lock" in str(err).lower():
            raise UserError(
                f"results database {path!r} is busy: another process holds it for writing; "
                "wait for it to finish (or close the app's writer) and retry"
            ) from None
        raise UserError(
            f"cannot open results database {path!r}: {str(err).splitlines()[0]}"
        ) from None
    except duckdb.Error as err:
        raise UserError(
            f"{path!r} is not a DuckDB results database: {str(err).splitlines()[0]}"
        ) from None
    try:
        _ensure_schema(con, path, read_only)
        yield con
    finally:
        con.close()


def _schema_version(con) -> int:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_info'"
    ).fetchone()[0]
    if not exists:
        return 0
    row = con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def _ensure_schema(con, path: str, read_only: bool) -> None:
    version = _schema_version(con)
    if version > SCHEMA_VERSION:
        raise UserError(
            f"results database {path!r} has schema version {version}, newer than this saelab "
            f"understands ({SCHEMA_VERSION}); upgrade saelab"
        )
    if version == SCHEMA_VERSION:
        return
    if read_only:
        raise UserError(
            f"results database {path!r} has an older schema ({version}); open it once for writing to migrate"
        )
    con.execute("BEGIN TRANSACTION")
    try:
        for step in MIGRATIONS[version:]:
            for statement in step:
                con.execute(statement)
        con.execute(
            "INSERT OR REPLACE INTO schema_info VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
        )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


# -- writing ---------------------------------------------------------------------------------


@dataclass
class SAERecord:
    """What the store remembers about one SAE."""

    sae_id: str
    name: str
    path: str
    architecture: str
    d_in: int
    d_sae: int
    hook: str
    model: str
    model_sha256: str
    cfg: dict
    weights_sha256: str


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def register_sae(con, record: SAERecord) -> None:
    """Insert or refresh an SAE row (same id = same config and weights)."""
    con.execute(
        "INSERT OR REPLACE INTO saes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
        [
            record.sae_id,
            record.name,
            record.path,
            record.architecture,
            record.d_in,
            record.d_sae,
            record.hook,
            record.model,
            record.model_sha256,
            json.dumps(record.cfg, default=str),
            config_hash(record.cfg),
            record.weights_sha256,
        ],
    )


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
    """Replace the (SAE, eval) rows with this run's, in one transaction; returns the run id."""
    from saelab import __version__

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

    if table not in FEATURE_TABLES and table != "vocab":
        raise ValueError(f"not a bulk-insert table: {table}")
    if table != "vocab":
        rows = rows.append_column("run_id", pa.array([run_id] * rows.num_rows, pa.string()))
    con.register("_incoming", rows)
    try:
        columns = ", ".join(rows.column_names)
        verb = "INSERT OR IGNORE" if table == "vocab" else "INSERT"
        con.execute(f"{verb} INTO {table} ({columns}) SELECT {columns} FROM _incoming")
    finally:
        con.unregister("_incoming")


def write_vocab(path: str | Path, model_sha256: str, tokens: list[str]) -> None:
    """Token strings for a model (skipped when already present)."""
    import pyarrow as pa

    with connect(path) as con:
        have = con.execute(
            "SELECT count(*) FROM vocab WHERE model_sha256 = ?", [model_sha256]
        ).fetchone()[0]
        if have == len(tokens):
            return
        table = pa.table(
            {
                "model_sha256": pa.array([model_sha256] * len(tokens), pa.string()),
                "token_id": pa.array(range(len(tokens)), pa.int32()),
                "token": pa.array(tokens, pa.string()),
            }
        )
        con.execute("BEGIN TRANSACTION")
        _insert_arrow(con, "vocab", table, "")
        con.execute("COMMIT")


# -- reading ---------------------------------------------------------------------------------


def list_saes(path: str | Path) -> list[dict]:
    with connect(path, read_only=True) as con:
        return _dicts(con.execute("SELECT * FROM saes ORDER BY name"))


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
        return _dicts(con.execute(query + " ORDER BY s.name, m.eval, m.metric", params))


def feature_dashboard(con, sae_id: str, feature: int) -> dict:
    """Everything the app shows for one feature (one connection, five indexed queries)."""
    stats = _dicts(
        con.execute("SELECT * FROM features WHERE sae_id = ? AND feature = ?", [sae_id, feature])
    )
    if not stats:
        d_sae = con.execute("SELECT d_sae FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
        if d_sae is None:
            raise UserError(f"no SAE {sae_id!r} in the results database")
        raise UserError(
            f"feature {feature} is out of range for SAE {sae_id!r} (0 … {d_sae[0] - 1})"
        )
    return {
        "stats": stats[0],
        "examples": _dicts(
            con.execute(
                "SELECT kind, band, rank, seq, pos, window_start, activation, tokens, acts FROM feature_examples "
                "WHERE sae_id = ? AND feature = ? ORDER BY kind, band, rank",
                [sae_id, feature],
            )
        ),
        "histograms": _dicts(
            con.execute(
                "SELECT kind, bin_edges, counts FROM feature_histograms WHERE sae_id = ? AND feature = ?",
                [sae_id, feature],
            )
        ),
        "logits": _dicts(
            con.execute(
                "SELECT side, rank, token_id, value FROM feature_logits WHERE sae_id = ? AND feature = ? "
                "ORDER BY side, rank",
                [sae_id, feature],
            )
        ),
    }


def token_strings(con, model_sha256: str, token_ids: list[int]) -> dict[int, str]:
    rows = con.execute(
        "SELECT token_id, token FROM vocab WHERE model_sha256 = ? AND token_id IN (SELECT unnest(?))",
        [model_sha256, list(token_ids)],
    ).fetchall()
    return dict(rows)


def _dicts(cursor) -> list[dict]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


# -- auto-interpretation rows ------------------------------------------------------------------


def find_sae(con, sae: str) -> dict:
    """An SAE row by id, id prefix or name; a one-line error listing the known ones otherwise."""
    rows = _dicts(
        con.execute(
            "SELECT * FROM saes WHERE sae_id = ? OR name = ? OR sae_id LIKE ? ORDER BY name",
            [sae, sae, sae.replace("%", "") + "%"],
        )
    )
    if len(rows) == 1:
        return rows[0]
    exact = [r for r in rows if sae in (r["sae_id"], r["name"])]
    if len(exact) == 1:
        return exact[0]
    known = con.execute("SELECT name, sae_id FROM saes ORDER BY name").fetchall()
    listing = ", ".join(f"{n} ({i})" for n, i in known) or "none: run `saelab eval` first"
    what = "matches several SAEs" if rows else "is not in the results database"
    raise UserError(f"SAE {sae!r} {what}; known SAEs: {listing}")


def feature_examples(con, sae_id: str, features: list[int]) -> list[dict]:
    """Every stored example window of these latents, with each latent's statistics."""
    return _dicts(
        con.execute(
            "SELECT e.feature, e.kind, e.band, e.rank, e.seq, e.window_start, e.activation, e.tokens, "
            "e.acts, e.run_id "
            "FROM feature_examples e WHERE e.sae_id = ? AND e.feature IN (SELECT unnest(?)) "
            "ORDER BY e.feature, e.kind, e.band, e.rank",
            [sae_id, features],
        )
    )


def feature_stats(con, sae_id: str, features: list[int]) -> dict[int, dict]:
    rows = _dicts(
        con.execute(
            "SELECT * FROM features WHERE sae_id = ? AND feature IN (SELECT unnest(?))",
            [sae_id, features],
        )
    )
    return {r["feature"]: r for r in rows}


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
    """The run's row (counters as they stand now)."""


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
_RUN_COLUMNS = [
    "run_id", "sae_id", "config_json", "config_hash", "status", "latents_done", "requests",
    "cache_hits", "retries", "unparsable", "prompt_tokens", "completion_tokens", "saelab_version",
]  # fmt: skip


def write_interp_batch(path: str | Path, batch: InterpBatch) -> None:
    """Replace these latents' explanation and score rows, add cache entries, update the run."""
    with connect(path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            for table in INTERP_TABLES:
                rows = batch.explanations if table == "explanations" else batch.scores
                cols = _COLUMNS[table]
                keys = {(r["sae_id"], r["feature"]) for r in rows}
                con.executemany(
                    f"DELETE FROM {table} WHERE sae_id = ? AND feature = ?",
                    [list(k) for k in keys],
                )  # table names are constants
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
        return _dicts(con.execute(query + " ORDER BY s.feature, s.explainer, s.scorer", params))
