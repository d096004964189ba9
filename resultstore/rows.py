"""One dataclass per table of the results file: the typed contract between the pipeline that
writes rows and the app, notebooks and commands that read them.

Fields are the table's columns, in its order (tests/evals/test_results_store.py holds every
class against the schema the migrations build). Producers build these rows and hand them to the
store's writers; readers get them back from its queries, so no code outside the results store
writes SQL or guesses a column. JSON columns stay text (`*_json`), with a parsed view.
Timestamps the database sets (`AUTO_NOW`) are None on rows about to be written.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass
class Row:
    """Base of the row classes: the table's name, its key and the columns the database fills."""

    TABLE: ClassVar[str] = ""
    KEY: ClassVar[tuple[str, ...]] = ()
    """The primary key (empty: none); an upsert replaces the row with the same key."""
    AUTO_NOW: ClassVar[tuple[str, ...]] = ()
    """Timestamp columns set to now() when written as None."""

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def values(self) -> list[Any]:
        return [getattr(self, c) for c in self.columns()]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


Timestamp = datetime.datetime


# -- SAEs, evals, features (schema 1) ----------------------------------------------------------


@dataclass
class SchemaInfoRow(Row):
    TABLE: ClassVar[str] = "schema_info"
    KEY: ClassVar[tuple[str, ...]] = ("key",)

    key: str
    value: str | None


@dataclass
class SAERow(Row):
    """One SAE: its identity (the hash of its weights and cfg.json), where it lives, what it reads."""

    TABLE: ClassVar[str] = "saes"
    KEY: ClassVar[tuple[str, ...]] = ("sae_id",)
    AUTO_NOW: ClassVar[tuple[str, ...]] = ("registered_at",)

    sae_id: str
    name: str
    path: str
    """Absolute path of its checkpoint folder when registered."""
    architecture: str
    d_in: int
    d_sae: int
    hook: str
    model: str | None
    model_sha256: str | None
    """The weights of the model it was trained on."""
    cfg_json: str
    cfg_hash: str
    weights_sha256: str
    """SHA-256 of its weight file when registered (checked by every reader through this row)."""
    registered_at: Timestamp | None = None

    @property
    def cfg(self) -> dict:
        return _json(self.cfg_json) or {}


@dataclass
class EvalRunRow(Row):
    TABLE: ClassVar[str] = "eval_runs"
    KEY: ClassVar[tuple[str, ...]] = ("run_id",)
    AUTO_NOW: ClassVar[tuple[str, ...]] = ("finished_at",)

    run_id: str
    sae_id: str
    eval: str
    config_json: str
    """The eval's settings and conventions."""
    config_hash: str
    acts_url: str
    n_tokens: int
    seconds: float
    finished_at: Timestamp | None = None
    saelab_version: str | None = None


@dataclass
class MetricRow(Row):
    TABLE: ClassVar[str] = "metrics"
    KEY: ClassVar[tuple[str, ...]] = ("sae_id", "eval", "metric")

    sae_id: str
    eval: str
    metric: str
    value: float
    run_id: str | None = None
    ci_low: float | None = None
    """Lower end of the metric's 95% confidence interval (None where the eval gives none)."""
    ci_high: float | None = None
    """Upper end of that interval."""


@dataclass
class FeatureRow(Row):
    """One latent's statistics (the features eval)."""

    TABLE: ClassVar[str] = "features"
    KEY: ClassVar[tuple[str, ...]] = ("sae_id", "feature")

    sae_id: str
    feature: int
    n_tokens: int
    n_active: int
    density: float
    log10_density: float
    max_act: float
    mean_act: float
    dead: bool
    dense: bool
    too_few_examples: bool
    run_id: str | None = None


@dataclass
class FeatureExampleRow(Row):
    """One example window of a latent: token ids and the latent's activation on each."""

    TABLE: ClassVar[str] = "feature_examples"

    sae_id: str
    feature: int
    kind: str
    """top, quantile, random or nonactivating."""
    band: int
    rank: int
    seq: int
    pos: int
    window_start: int
    activation: float
    tokens: list[int]
    acts: list[float]
    run_id: str | None = None


@dataclass
class FeatureHistogramRow(Row):
    TABLE: ClassVar[str] = "feature_histograms"
    KEY: ClassVar[tuple[str, ...]] = ("sae_id", "feature", "kind")

    sae_id: str
    feature: int
    kind: str
    """activation (non-zero activations) or logit (the logit effects)."""
    bin_edges: list[float]
    counts: list[int]
    run_id: str | None = None


@dataclass
class FeatureLogitRow(Row):
    TABLE: ClassVar[str] = "feature_logits"

    sae_id: str
    feature: int
    side: str
    """top (promoted) or bottom (suppressed)."""
    rank: int
    token_id: int
    value: float
    run_id: str | None = None


@dataclass
class VocabRow(Row):
    TABLE: ClassVar[str] = "vocab"
    KEY: ClassVar[tuple[str, ...]] = ("model_sha256", "token_id")

    model_sha256: str
    token_id: int
    token: str


# -- auto-interpretation (schema 2, 5) ---------------------------------------------------------


@dataclass
class ExplanationRow(Row):
    TABLE: ClassVar[str] = "explanations"
    KEY: ClassVar[tuple[str, ...]] = ("sae_id", "feature", "explainer")
    AUTO_NOW: ClassVar[tuple[str, ...]] = ("created_at",)

    sae_id: str
    feature: int
    explainer: str
    status: str
    """ok, unparsable or insufficient_examples."""
    explanation: str | None
    n_examples: int | None
    provenance_json: str | None
    config_hash: str | None
    run_id: str | None
    created_at: Timestamp | None = None

    @property
    def provenance(self) -> dict | None:
        return _json(self.provenance_json)


@dataclass
class ScoreRow(Row):
    TABLE: ClassVar[str] = "scores"
    KEY: ClassVar[tuple[str, ...]] = ("sae_id", "feature", "explainer", "scorer")
    AUTO_NOW: ClassVar[tuple[str, ...]] = ("created_at",)

    sae_id: str
    feature: int
    explainer: str
    scorer: str
    status: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n_windows: int | None
    n_valid: int | None
    n_failures: int | None
    n_positive: int | None
    n_negative: int | None
    provenance_json: str | None
    config_hash: str | None
    run_id: str | None
    created_at: Timestamp | None = None

    @property
    def provenance(self) -> dict | None:
        return _json(self.provenance_json)


@dataclass
class AutointerpRunRow(Row):
    TABLE: ClassVar[str] = "autointerp_runs"
    KEY: ClassVar[tuple[str, ...]] = ("run_id",)
    AUTO_NOW: ClassVar[tuple[str, ...]] = ("started_at", "updated_at")
    KEEP_ON_UPDATE: ClassVar[tuple[str, ...]] = (
        "run_id", "sae_id", "config_json", "config_hash", "started_at",
    )  # fmt: skip
    """Columns an update of a running run leaves as first written."""

    run_id: str
    sae_id: str
    config_json: str
    config_hash: str
    status: str
    """running, finished, failed or interrupted."""
    started_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    latents_done: int = 0
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    unparsable: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    saelab_version: str | None = None
    message: str | None = None
    """Why the run stopped, when it did not finish."""


@dataclass
class LLMCacheRow(Row):
    TABLE: ClassVar[str] = "llm_cache"
    KEY: ClassVar[tuple[str, ...]] = ("key",)
    AUTO_NOW: ClassVar[tuple[str, ...]] = ("created_at",)

    key: str
    sae_id: str
    feature: int
    model: str
    request_json: str
    response_json: str
    created_at: Timestamp | None = None


# -- steering (issue 14) -----------------------------------------------------------------------


@dataclass
class SteeringRunRow(Row):
    """One steering run: a method at one strength, with its metrics and full provenance."""

    TABLE: ClassVar[str] = "steering_runs"
    KEY: ClassVar[tuple[str, ...]] = ("run_id",)
    AUTO_NOW: ClassVar[tuple[str, ...]] = ("created_at",)

    run_id: str
    sweep_id: str
    sae_id: str
    features: list[int]
    method: str
    """none (unsteered), sae or diffmean."""
    mode: str | None
    strength: float | None
    unit: str | None
    unit_values: list[float]
    positions: str
    hook: str
    model: str
    model_sha256: str
    kl: float
    feature_act: float
    concept: float
    concept_kind: str
    perplexity: float
    target_kl: float | None
    prompts_json: str
    neutral_json: str
    sampling_json: str
    config_json: str
    config_hash: str
    saelab_version: str
    created_at: Timestamp | None = None

    @property
    def config(self) -> dict:
        return _json(self.config_json) or {}


@dataclass
class SteeringSampleRow(Row):
    TABLE: ClassVar[str] = "steering_samples"
    KEY: ClassVar[tuple[str, ...]] = ("run_id", "sample")

    run_id: str
    sample: int
    prompt: str
    seed: int
    clean_text: str
    steered_text: str
    steered_tokens: list[int]
    feature_act: float
    perplexity: float
    concept: float


# -- circuits (issue 13) -----------------------------------------------------------------------


@dataclass
class CircuitRow(Row):
    """One circuit run: task, SAEs, method, thresholds and its headline numbers."""

    TABLE: ClassVar[str] = "circuits"
    KEY: ClassVar[tuple[str, ...]] = ("circuit_id",)
    AUTO_NOW: ClassVar[tuple[str, ...]] = ("created_at",)

    circuit_id: str
    task: str
    task_source: str
    prompts_hash: str
    n_prompts: int
    model: str
    model_sha256: str
    sae_ids: list[str]
    hooks: list[str]
    method: str
    baseline: str
    steps: int
    per_position: bool
    node_threshold: float
    edge_threshold: float
    ablation: str
    error_policy: str
    m_clean: float
    m_patch: float | None
    m_empty: float | None
    clean_accuracy: float
    faithfulness: float | None
    completeness: float | None
    n_nodes: int
    n_edges: int
    edge_correlation: float | None
    config_json: str
    config_hash: str
    seconds: float
    saelab_version: str
    created_at: Timestamp | None = None
    selection: str | None = None
    """How downstream SAEs encoded patched inputs: frozen (clean active set) or reselect."""
    edge_method: str | None = None
    """ig or atp."""
    exact_nodes: int | None = None
    """Top nodes re-scored by exact patching."""
    faithfulness_all: float | None = None
    """Faithfulness with every node of the graph kept (1 when the splice is exact)."""

    @property
    def config(self) -> dict:
        return _json(self.config_json) or {}


@dataclass
class CircuitNodeRow(Row):
    """A node: one latent (or the SAE error, feature −1) at one hook and position (−1: summed)."""

    TABLE: ClassVar[str] = "circuit_nodes"
    KEY: ClassVar[tuple[str, ...]] = ("circuit_id", "node")

    circuit_id: str
    node: int
    """Its rank by |effect| in the circuit (0: largest)."""
    hook: str
    submodule: str
    """resid_post, attn_out or mlp_out."""
    layer: int
    pos: int
    feature: int
    is_error: bool
    sae_id: str
    effect: float
    activation: float
    kept: bool
    """In the circuit (|effect| at least the node threshold), or only stored for the record."""
    attributed: float | None = None
    """The ranking method's effect where `effect` is the exact one (re-scored nodes)."""


@dataclass
class CircuitEdgeRow(Row):
    TABLE: ClassVar[str] = "circuit_edges"
    KEY: ClassVar[tuple[str, ...]] = ("circuit_id", "up_node", "down_node")

    circuit_id: str
    up_node: int
    down_node: int
    effect: float
    """Attributed direct effect."""
    measured: float | None
    """Measured by direct-path patching (the top edges only)."""
    switched: float | None = None
    """Latents per prompt re-selection would turn on at the downstream node (checked edges)."""


@dataclass
class CircuitCurveRow(Row):
    TABLE: ClassVar[str] = "circuit_curves"
    KEY: ClassVar[tuple[str, ...]] = ("circuit_id", "kind", "n_nodes")

    circuit_id: str
    kind: str
    """faithfulness or completeness."""
    n_nodes: int
    value: float | None
    metric: float | None
    """The metric of the circuit (faithfulness) or of its complement (completeness)."""
    everything: bool = False
    """The point keeping every node of the graph (n_nodes: the graph's size)."""


# -- per-latent eval results (schema 6) --------------------------------------------------------


@dataclass
class LatentMetricRow(Row):
    """One per-latent value of an eval (a metric its catalogue declares `per_latent`)."""

    TABLE: ClassVar[str] = "latent_metrics"
    KEY: ClassVar[tuple[str, ...]] = ("sae_id", "eval", "metric", "feature")

    sae_id: str
    eval: str
    metric: str
    feature: int
    value: float
    run_id: str | None = None


# -- SHIFT (issue 26) --------------------------------------------------------------------------


@dataclass
class ShiftRunRow(Row):
    """One SHIFT experiment: its SAEs, probe, data, judge and settings."""

    TABLE: ClassVar[str] = "shift_runs"
    KEY: ClassVar[tuple[str, ...]] = ("run_id",)
    AUTO_NOW: ClassVar[tuple[str, ...]] = ("created_at",)

    run_id: str
    model: str
    model_sha256: str
    sae_ids: list[str]
    hooks: list[str]
    probe_hook: str
    professions: list[str]
    data_source: str
    data_hash: str
    judge: str
    """What judged the latents: llm, correlation, or llm+correlation."""
    n_candidates: int
    n_ablated: int
    n_train: int
    n_test: int
    train_accuracy: float
    interval: str
    """How the accuracies' 95% intervals were made."""
    config_json: str
    config_hash: str
    seconds: float
    saelab_version: str
    created_at: Timestamp | None = None

    @property
    def config(self) -> dict:
        return _json(self.config_json) or {}


@dataclass
class ShiftAccuracyRow(Row):
    """A classifier's accuracy on the balanced test split, against one label."""

    TABLE: ClassVar[str] = "shift_accuracies"
    KEY: ClassVar[tuple[str, ...]] = ("run_id", "method", "label")

    run_id: str
    method: str
    """original, shift, shift_retrain, random, neurons or oracle."""
    label: str
    """profession or gender."""
    accuracy: float
    ci_low: float
    ci_high: float
    n_ablated: int


@dataclass
class ShiftFeatureRow(Row):
    """A candidate the classifier relies on (a latent, or a neuron of the baseline) and its
    verdict."""

    TABLE: ClassVar[str] = "shift_features"
    KEY: ClassVar[tuple[str, ...]] = ("run_id", "kind", "hook", "feature")

    run_id: str
    kind: str
    """latent or neuron."""
    rank: int
    """By attributed effect within its kind (0: largest)."""
    hook: str
    sae_id: str | None
    feature: int
    effect: float
    spurious: bool
    """Judged about the spurious attribute, so ablated."""
    judge: str
    corr_gender: float
    corr_profession: float
    description: str | None
    """Its stored explanation, else the tokens it fires most on in the held-out texts (what the
    LLM judge read); none for neurons."""
    answer: str | None
    """What it answered."""


# -- attribution graphs and attention heads (issue 27) ---------------------------------------


@dataclass
class GraphRunRow(Row):
    """One attribution graph: its prompt, targets, dictionaries, budgets and scores."""

    TABLE: ClassVar[str] = "graph_runs"
    KEY: ClassVar[tuple[str, ...]] = ("graph_id",)
    AUTO_NOW: ClassVar[tuple[str, ...]] = ("created_at",)

    graph_id: str
    model: str
    model_sha256: str
    prompt: str
    tokens: list[int]
    """The prompt's token ids (BOS included when the model prepends one)."""
    token_strs: list[str]
    targets: list[int]
    """The output token ids whose logits the graph explains."""
    target_strs: list[str]
    target_probs: list[float]
    sae_ids: list[str]
    hooks: list[str]
    """Each dictionary's input hook, in the order of `sae_ids`."""
    dictionary: str
    """What replaced the MLPs: transcoders, cross-layer transcoder, ..."""
    node_budget: int
    edge_budget: int
    n_nodes_total: int
    """Nodes of the unpruned graph."""
    n_nodes: int
    n_edges: int
    replacement_score: float
    """circuit-tracer's replacement score of the unpruned graph (1: no error reaches the
    targets)."""
    completeness_score: float
    replacement_score_pruned: float
    completeness_score_pruned: float
    config_json: str
    config_hash: str
    seconds: float
    saelab_version: str
    created_at: Timestamp | None = None

    @property
    def config(self) -> dict:
        return _json(self.config_json) or {}


@dataclass
class GraphNodeRow(Row):
    """A node kept in a pruned graph."""

    TABLE: ClassVar[str] = "graph_nodes"
    KEY: ClassVar[tuple[str, ...]] = ("graph_id", "node")

    graph_id: str
    node: str
    """Unique within the graph, e.g. `L3.f1234@5`, `err.L3@5`, `emb@5`, `logit.1234`."""
    kind: str
    """latent, error, embedding or logit."""
    layer: int
    """The dictionary's layer; -1 for embeddings, n_layers for logits."""
    pos: int
    """Token position (the last position for logits)."""
    feature: int | None
    """The latent's index (latents), or the token id (embeddings, logits)."""
    sae_id: str | None
    hook: str | None
    activation: float | None
    """The latent's activation (latents), the error's norm (errors), the target's probability
    (logits)."""
    influence: float
    """Its total influence on the targets (the pruning score)."""
    label: str | None
    """The token at an embedding or logit; else None."""


@dataclass
class GraphEdgeRow(Row):
    """A direct linear effect of one node on another in the frozen replacement model."""

    TABLE: ClassVar[str] = "graph_edges"
    KEY: ClassVar[tuple[str, ...]] = ("graph_id", "source", "target")

    graph_id: str
    source: str
    target: str
    weight: float


@dataclass
class FeatureHeadRow(Row):
    """How much of an attention SAE's latent comes from one head."""

    TABLE: ClassVar[str] = "feature_heads"
    KEY: ClassVar[tuple[str, ...]] = ("sae_id", "feature", "head")

    sae_id: str
    feature: int
    head: int
    norm_share: float
    """The head's share of the latent's decoder norm (squared norms over heads sum to 1)."""
    dfa_share: float | None
    """The head's mean share of the latent's direct feature attribution (the linear encoder
    contributions of each head's z) over its top examples; None without examples."""
    n_examples: int


ROWS: tuple[type[Row], ...] = (
    SchemaInfoRow, SAERow, EvalRunRow, MetricRow, FeatureRow, FeatureExampleRow,
    FeatureHistogramRow, FeatureLogitRow, VocabRow, ExplanationRow, ScoreRow, AutointerpRunRow,
    LLMCacheRow, SteeringRunRow, SteeringSampleRow, CircuitRow, CircuitNodeRow, CircuitEdgeRow,
    CircuitCurveRow, LatentMetricRow, ShiftRunRow, ShiftAccuracyRow, ShiftFeatureRow, GraphRunRow,
    GraphNodeRow, GraphEdgeRow, FeatureHeadRow,
)  # fmt: skip
"""Every table's row class."""
TABLES: dict[str, type[Row]] = {cls.TABLE: cls for cls in ROWS}
