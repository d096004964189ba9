"""The results store: one DuckDB file holding every SAE, eval run, metric, feature, explanation
and score. Importable without torch (the app reads it on every page).

The schema and its migrations live in `schema`; reads and writes are grouped by what owns the
rows: `saes` (the SAE registry and vocab), `evals` (eval runs, metrics, feature tables),
`features` (dashboard reads), `autointerp` (explanations, scores, runs, cache), `circuits`
(circuit runs, nodes, edges, curves). Every query is
parameterised. Writers hold the file only for the short transaction that replaces their rows, so
readers can open it read-only in between; an open waits `schema.BUSY_WAIT_S` for the lock,
then a second writer gets a one-line "busy" error.
"""

from resultstore.autointerp import (
    INTERP_TABLES,
    InterpBatch,
    cached_responses,
    finished_features,
    interp_scores,
    write_interp_batch,
)
from resultstore.circuits import (
    CIRCUIT_TABLES,
    CircuitRecord,
    circuit_rows,
    feature_notes,
    list_circuits,
    write_circuit,
)
from resultstore.evals import FEATURE_TABLES, EvalRun, metrics_table, write_eval_run
from resultstore.features import feature_dashboard, feature_examples, feature_stats
from resultstore.saes import (
    SAERecord,
    config_hash,
    find_sae,
    list_saes,
    record_for_folder,
    register_sae,
    token_strings,
    write_vocab,
)
from resultstore.schema import MIGRATIONS, SCHEMA_VERSION, connect, dicts
from resultstore.steering import steering_runs, steering_samples, write_steering_runs

__all__ = [
    "CIRCUIT_TABLES",
    "CircuitRecord",
    "circuit_rows",
    "feature_notes",
    "list_circuits",
    "write_circuit",
    "FEATURE_TABLES",
    "INTERP_TABLES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "EvalRun",
    "InterpBatch",
    "SAERecord",
    "cached_responses",
    "steering_runs",
    "steering_samples",
    "write_steering_runs",
    "config_hash",
    "connect",
    "dicts",
    "feature_dashboard",
    "feature_examples",
    "feature_stats",
    "find_sae",
    "finished_features",
    "interp_scores",
    "list_saes",
    "metrics_table",
    "record_for_folder",
    "register_sae",
    "token_strings",
    "write_eval_run",
    "write_interp_batch",
    "write_vocab",
]
