"""The results store's schema: creation, the one ordered list of migrations, and opening a file.

Every table of the results file is created and migrated here and nowhere else. A migration is
appended, never edited: MIGRATIONS[i] takes a file from schema version i to i + 1, in place, so
rows keep their ids. A file with a newer version than this code knows is refused.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from saelab.base.errors import UserError

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

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
    [  # issue 14: steering runs (one row per strength and method) and their generated samples
        """CREATE TABLE steering_runs (
            run_id VARCHAR PRIMARY KEY, sweep_id VARCHAR, sae_id VARCHAR, features INTEGER[],
            method VARCHAR, mode VARCHAR, strength DOUBLE, unit VARCHAR, unit_values DOUBLE[],
            positions VARCHAR, hook VARCHAR, model VARCHAR, model_sha256 VARCHAR,
            kl DOUBLE, feature_act DOUBLE, concept DOUBLE, concept_kind VARCHAR,
            perplexity DOUBLE, target_kl DOUBLE, prompts_json VARCHAR, neutral_json VARCHAR,
            sampling_json VARCHAR, config_json VARCHAR, config_hash VARCHAR,
            saelab_version VARCHAR, created_at TIMESTAMP)""",
        """CREATE TABLE steering_samples (
            run_id VARCHAR, sample INTEGER, prompt VARCHAR, seed BIGINT, clean_text VARCHAR,
            steered_text VARCHAR, steered_tokens INTEGER[], feature_act DOUBLE,
            perplexity DOUBLE, concept DOUBLE, PRIMARY KEY (run_id, sample))""",
    ],
    [  # issue 13: sparse feature circuits (nodes, edges, faithfulness/completeness curves)
        """CREATE TABLE circuits (
            circuit_id VARCHAR PRIMARY KEY, task VARCHAR, task_source VARCHAR,
            prompts_hash VARCHAR, n_prompts INTEGER, model VARCHAR, model_sha256 VARCHAR,
            sae_ids VARCHAR[], hooks VARCHAR[], method VARCHAR, baseline VARCHAR,
            steps INTEGER, per_position BOOLEAN, node_threshold DOUBLE, edge_threshold DOUBLE,
            ablation VARCHAR, error_policy VARCHAR, m_clean DOUBLE, m_patch DOUBLE,
            m_empty DOUBLE, clean_accuracy DOUBLE, faithfulness DOUBLE, completeness DOUBLE,
            n_nodes INTEGER, n_edges INTEGER, edge_correlation DOUBLE, config_json VARCHAR,
            config_hash VARCHAR, seconds DOUBLE, saelab_version VARCHAR, created_at TIMESTAMP)""",
        """CREATE TABLE circuit_nodes (
            circuit_id VARCHAR, node INTEGER, hook VARCHAR, submodule VARCHAR, layer INTEGER,
            pos INTEGER, feature INTEGER, is_error BOOLEAN, sae_id VARCHAR, effect DOUBLE,
            activation DOUBLE, kept BOOLEAN, PRIMARY KEY (circuit_id, node))""",
        """CREATE TABLE circuit_edges (
            circuit_id VARCHAR, up_node INTEGER, down_node INTEGER, effect DOUBLE,
            measured DOUBLE, PRIMARY KEY (circuit_id, up_node, down_node))""",
        """CREATE TABLE circuit_curves (
            circuit_id VARCHAR, kind VARCHAR, n_nodes INTEGER, value DOUBLE, metric DOUBLE,
            PRIMARY KEY (circuit_id, kind, n_nodes))""",
    ],
    [  # issue 10: why an auto-interp run stopped (an endpoint failure, an interruption)
        "ALTER TABLE autointerp_runs ADD COLUMN IF NOT EXISTS message VARCHAR",
    ],
    [  # issue 23: per-latent values of any eval (metrics its catalogue declares per latent)
        """CREATE TABLE latent_metrics (
            sae_id VARCHAR, eval VARCHAR, metric VARCHAR, feature INTEGER, value DOUBLE,
            run_id VARCHAR, PRIMARY KEY (sae_id, eval, metric, feature))""",
    ],
    [  # issue 24: circuits that agree with patching (selection policy, exact checks)
        "ALTER TABLE circuits ADD COLUMN IF NOT EXISTS selection VARCHAR",
        "ALTER TABLE circuits ADD COLUMN IF NOT EXISTS edge_method VARCHAR",
        "ALTER TABLE circuits ADD COLUMN IF NOT EXISTS exact_nodes INTEGER",
        "ALTER TABLE circuits ADD COLUMN IF NOT EXISTS faithfulness_all DOUBLE",
        "ALTER TABLE circuit_nodes ADD COLUMN IF NOT EXISTS attributed DOUBLE",
        "ALTER TABLE circuit_edges ADD COLUMN IF NOT EXISTS switched DOUBLE",
        "ALTER TABLE circuit_curves ADD COLUMN IF NOT EXISTS everything BOOLEAN",
    ],
    [  # issue 26: every metric's spread (a 95% interval over seeds and splits, where measured)
        "ALTER TABLE metrics ADD COLUMN IF NOT EXISTS ci_low DOUBLE",
        "ALTER TABLE metrics ADD COLUMN IF NOT EXISTS ci_high DOUBLE",
    ],
    [  # issue 26: SHIFT
        """CREATE TABLE shift_runs (
            run_id VARCHAR PRIMARY KEY, model VARCHAR, model_sha256 VARCHAR, sae_ids VARCHAR[],
            hooks VARCHAR[], probe_hook VARCHAR, professions VARCHAR[], data_source VARCHAR,
            data_hash VARCHAR, judge VARCHAR, n_candidates INTEGER, n_ablated INTEGER,
            n_train INTEGER, n_test INTEGER, train_accuracy DOUBLE, interval VARCHAR,
            config_json VARCHAR, config_hash VARCHAR, seconds DOUBLE, saelab_version VARCHAR,
            created_at TIMESTAMP)""",
        """CREATE TABLE shift_accuracies (
            run_id VARCHAR, method VARCHAR, label VARCHAR, accuracy DOUBLE, ci_low DOUBLE,
            ci_high DOUBLE, n_ablated INTEGER, PRIMARY KEY (run_id, method, label))""",
        """CREATE TABLE shift_features (
            run_id VARCHAR, kind VARCHAR, rank INTEGER, hook VARCHAR, sae_id VARCHAR,
            feature INTEGER, effect DOUBLE, spurious BOOLEAN, judge VARCHAR, corr_gender DOUBLE,
            corr_profession DOUBLE, description VARCHAR, answer VARCHAR,
            PRIMARY KEY (run_id, kind, hook, feature))""",
    ],
    [  # issue 27: attribution graphs
        """CREATE TABLE graph_runs (
            graph_id VARCHAR PRIMARY KEY, model VARCHAR, model_sha256 VARCHAR, prompt VARCHAR,
            tokens INTEGER[], token_strs VARCHAR[], targets INTEGER[], target_strs VARCHAR[],
            target_probs DOUBLE[], sae_ids VARCHAR[], hooks VARCHAR[], dictionary VARCHAR,
            node_budget INTEGER, edge_budget INTEGER, n_nodes_total INTEGER, n_nodes INTEGER,
            n_edges INTEGER, replacement_score DOUBLE, completeness_score DOUBLE,
            replacement_score_pruned DOUBLE, completeness_score_pruned DOUBLE,
            config_json VARCHAR, config_hash VARCHAR, seconds DOUBLE, saelab_version VARCHAR,
            created_at TIMESTAMP)""",
        """CREATE TABLE graph_nodes (
            graph_id VARCHAR, node VARCHAR, kind VARCHAR, layer INTEGER, pos INTEGER,
            feature INTEGER, sae_id VARCHAR, hook VARCHAR, activation DOUBLE, influence DOUBLE,
            label VARCHAR, PRIMARY KEY (graph_id, node))""",
        """CREATE TABLE graph_edges (
            graph_id VARCHAR, source VARCHAR, target VARCHAR, weight DOUBLE,
            PRIMARY KEY (graph_id, source, target))""",
    ],
    [  # issue 27: attention SAEs' latents attributed to heads
        """CREATE TABLE feature_heads (
            sae_id VARCHAR, feature INTEGER, head INTEGER, norm_share DOUBLE, dfa_share DOUBLE,
            n_examples INTEGER, PRIMARY KEY (sae_id, feature, head))""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


def _duckdb():
    import duckdb

    return duckdb


BUSY_WAIT_S = 10.0
"""How long an open waits for another process to let go of the file before saying "busy".
Readers (the app, a notebook) hold it for a moment; a pipeline writes in short transactions."""


class BusyError(UserError):
    """Another process held the results file for longer than the wait."""


def open_database(path: str, read_only: bool, wait_s: float | None = None) -> Any:
    """A DuckDB connection to `path`, retrying while another process holds the file's lock
    (DuckDB lets one process write or many read, not both); one-line errors otherwise."""
    duckdb = _duckdb()
    deadline = time.monotonic() + (BUSY_WAIT_S if wait_s is None else wait_s)
    delay = 0.05
    while True:
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise UserError(
                    f"cannot open results database {path!r}: {str(err).splitlines()[0]}"
                ) from None
            if time.monotonic() >= deadline:
                raise BusyError(
                    f"results database {path!r} is busy: another process is writing to it; "
                    "retry when it has finished (or close the app's writer)"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        except duckdb.Error as err:
            raise UserError(
                f"{path!r} is not a DuckDB results database: {str(err).splitlines()[0]}"
            ) from None


def schema_version(con: DuckDBPyConnection) -> int:
    """The file's schema version (0: not a saelab results file, or a new empty one)."""
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_info'"
    ).fetchone()[0]
    if not exists:
        return 0
    row = con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


class OlderSchemaError(UserError):
    """The file predates the current schema; opening it once for writing migrates it in place."""


def check_schema(con: DuckDBPyConnection, path: str, migrate: bool) -> int:
    """Refuse a foreign or newer file; migrate an older one (when `migrate`) or refuse it."""
    version = schema_version(con)
    if version == 0:
        tables = [
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        ]
        if tables:
            raise UserError(
                f"{path!r} is a DuckDB database but not a saelab results file (it holds "
                f"{', '.join(sorted(tables)[:4])}); give another file"
            )
    if version > SCHEMA_VERSION:
        raise UserError(
            f"results database {path!r} has schema version {version}, newer than this saelab "
            f"understands ({SCHEMA_VERSION}); upgrade saelab"
        )
    if version == SCHEMA_VERSION:
        return version
    if not migrate:
        if version == 0:
            raise UserError(f"{path!r} is an empty DuckDB file, not a saelab results database")
        raise OlderSchemaError(
            f"results database {path!r} has an older schema ({version}, current "
            f"{SCHEMA_VERSION}); open it once for writing to migrate it in place (rows keep "
            "their ids)"
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
    except BaseException:
        import duckdb

        with contextlib.suppress(duckdb.Error):  # an interruption after COMMIT: nothing to undo
            con.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION
