"""The results store: one DuckDB file holding every SAE, eval run, metric, feature, explanation,
score, steering run and circuit. Importable without torch (the app reads it on every page).

A command opens the file once as a `ResultsStore` (`store.py`) and passes it around; the
functions here take it and do all of saelab's SQL, parameterised, reading and writing the typed
rows of `rows.py` (one dataclass per table). The schema and its one ordered list of migrations
live in `schema.py`. Reads and writes are grouped by what owns the rows: `saes` (the SAE
registry, vocab), `evals`, `features` (dashboards), `autointerp`, `steering`, `circuits`; plus
`overview` (every SAE with its metrics) and `search`.
"""

from saelab.resultstore.autointerp import (
    INTERP_TABLES,
    ExplainedLatent,
    InterpBatch,
    autointerp_runs,
    cached_responses,
    explanation_texts,
    explanations,
    finished_features,
    interp_scores,
    score_summary,
    scorer_names,
    scores,
    stored_explanation,
    write_interp_batch,
)
from saelab.resultstore.circuits import (
    CIRCUIT_TABLES,
    CircuitRecord,
    circuit_curves,
    circuit_edges,
    circuit_id,
    circuit_nodes,
    feature_notes,
    list_circuits,
    write_circuit,
)
from saelab.resultstore.evals import (
    FEATURE_TABLES,
    EvalRun,
    eval_runs,
    latent_metrics,
    metrics_long,
    write_eval_run,
)
from saelab.resultstore.features import (
    FeatureDashboard,
    default_feature,
    density_histogram,
    feature_dashboard,
    feature_examples,
    feature_histograms,
    feature_logits,
    feature_stats,
    feature_stats_exist,
    random_feature,
)
from saelab.resultstore.graphs import (
    GRAPH_TABLES,
    NODE_KINDS,
    graph_edges,
    graph_id,
    graph_nodes,
    graph_runs,
    write_graph,
)
from saelab.resultstore.heads import feature_heads, write_feature_heads
from saelab.resultstore.overview import PREFERRED_EVALS, sae_overview
from saelab.resultstore.rows import (
    ROWS,
    TABLES,
    AutointerpRunRow,
    CircuitCurveRow,
    CircuitEdgeRow,
    CircuitNodeRow,
    CircuitRow,
    EvalRunRow,
    ExplanationRow,
    FeatureExampleRow,
    FeatureHeadRow,
    FeatureHistogramRow,
    FeatureLogitRow,
    FeatureRow,
    GraphEdgeRow,
    GraphNodeRow,
    GraphRunRow,
    LatentMetricRow,
    LLMCacheRow,
    MetricRow,
    Row,
    SAERow,
    ScoreRow,
    ShiftAccuracyRow,
    ShiftFeatureRow,
    ShiftRunRow,
    SteeringRunRow,
    SteeringSampleRow,
    VocabRow,
)
from saelab.resultstore.saes import (
    config_hash,
    file_sha256,
    find_sae,
    list_saes,
    record_for_folder,
    sae_by_id,
    token_strings,
    verified_folder,
    write_vocab,
)
from saelab.resultstore.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    BusyError,
    OlderSchemaError,
    schema_version,
)
from saelab.resultstore.search import (
    search_explanations,
    search_ranges,
    search_token,
    token_ids_for,
)
from saelab.resultstore.shift import (
    SHIFT_TABLES,
    shift_accuracies,
    shift_features,
    shift_run_id,
    shift_runs,
    write_shift,
)
from saelab.resultstore.steering import (
    steering_runs,
    steering_samples,
    write_steering_runs,
)
from saelab.resultstore.store import ResultsStore

__all__ = [
    "AutointerpRunRow", "BusyError", "CIRCUIT_TABLES", "CircuitCurveRow", "CircuitEdgeRow",
    "CircuitNodeRow", "CircuitRecord", "CircuitRow", "EvalRun", "EvalRunRow", "ExplainedLatent",
    "ExplanationRow", "FEATURE_TABLES", "FeatureDashboard", "FeatureExampleRow",
    "FeatureHistogramRow", "FeatureLogitRow", "FeatureRow", "INTERP_TABLES", "InterpBatch",
    "LLMCacheRow", "LatentMetricRow", "MIGRATIONS", "MetricRow", "OlderSchemaError",
    "PREFERRED_EVALS", "ROWS", "ResultsStore", "Row", "SAERow", "SCHEMA_VERSION", "ScoreRow",
    "SteeringRunRow", "SteeringSampleRow", "TABLES", "VocabRow", "autointerp_runs",
    "cached_responses", "circuit_curves", "circuit_edges", "circuit_id", "circuit_nodes",
    "config_hash", "default_feature", "density_histogram", "eval_runs", "explanation_texts", "explanations",
    "feature_dashboard", "feature_examples", "feature_histograms", "feature_logits",
    "feature_notes", "feature_stats", "feature_stats_exist", "file_sha256", "find_sae",
    "finished_features", "interp_scores", "latent_metrics", "list_circuits", "list_saes",
    "metrics_long", "random_feature", "record_for_folder", "sae_by_id", "sae_overview",
    "schema_version", "score_summary", "scorer_names", "scores", "search_explanations",
    "search_ranges", "search_token", "steering_runs", "steering_samples",
    "stored_explanation",
    "SHIFT_TABLES", "ShiftAccuracyRow", "ShiftFeatureRow", "ShiftRunRow", "shift_accuracies",
    "shift_features", "shift_run_id", "shift_runs", "write_shift",
    "GRAPH_TABLES", "GraphEdgeRow", "GraphNodeRow", "GraphRunRow", "NODE_KINDS", "graph_edges",
    "graph_id", "graph_nodes", "graph_runs", "write_graph",
    "FeatureHeadRow", "feature_heads", "write_feature_heads",
    "token_ids_for", "token_strings", "verified_folder", "write_circuit", "write_eval_run",
    "write_interp_batch", "write_steering_runs", "write_vocab",
]  # fmt: skip
