"""The pipeline as Python functions (what `import saelab` offers; the CLI's counterpart).

Each takes the dataclass config the command line builds. Progress bars are tqdm's
notebook-aware ones (`tqdm.auto`); figures come back as plotly objects (see `saelab.results`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saelab.base.errors import UserError

if TYPE_CHECKING:
    from saelab.activations.harvest import HarvestConfig, HarvestResult
    from saelab.activations.loader import ActivationLoader
    from saelab.activations.models import LoadedModel
    from saelab.autointerp.config import ExplainConfig
    from saelab.autointerp.pipeline import ExplainSummary
    from saelab.circuits.graph_check import Agreement
    from saelab.circuits.graph_run import GraphConfig, GraphResult
    from saelab.circuits.run import CircuitConfig, CircuitResult
    from saelab.circuits.shift import ShiftConfig, ShiftResult
    from saelab.evaluation.runner import EvalConfig
    from saelab.results import Results
    from saelab.sae.base import SAE
    from saelab.sae.config import SAEConfig, TrainConfig


def expect_config(cfg: Any, cls: type, function: str) -> None:
    """A one-line error when a function is given something other than its config class."""
    if not isinstance(cfg, cls):
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise UserError(
            f"saelab.{function} takes {article} {cls.__name__}, got {type(cfg).__name__}; build "
            f"one with saelab.{cls.__name__}(...)"
        )


OFFLINE_EXPLAINERS = frozenset({"baseline", "examples"})
OFFLINE_SCORERS = frozenset({"embedding"})
"""Explainers and scorers that never ask the LLM (no endpoint or local server is needed)."""


_MODELS: dict[tuple[str, str], LoadedModel] = {}


def load_model(spec: str = "smollm2-135m", device: str = "cpu") -> LoadedModel:
    """The model by spec (embedded name, HF folder, .gguf file or hub name), loaded once per
    process: a re-run cell, or another notebook in the same kernel, gets the same object back.

    Sharing it is safe: every hook saelab attaches is a context manager that comes off.
    """
    if (spec, device) not in _MODELS:
        from saelab.activations.models import load_model as load

        _MODELS[spec, device] = load(spec, device=device)
    return _MODELS[spec, device]


def harvest(cfg: HarvestConfig, model: Any = None) -> HarvestResult:
    """Run the model over the corpus and write the activation store `cfg.out`."""
    from saelab.activations.harvest import HarvestConfig
    from saelab.activations.harvest import harvest as run

    expect_config(cfg, HarvestConfig, "harvest")
    return run(cfg, model=model)


def training_loader(
    acts: str, hook: str, tokens: int | None = None, batch_size: int = 4096, seed: int = 0
) -> ActivationLoader:
    """The store's train split (its held-out tail is for evaluation), with enough epochs for
    `tokens` (None: one pass)."""
    from saelab.sae.run import training_loader as loader

    return loader(acts, hook, tokens, batch_size, seed)


def train(
    saes: SAEConfig | Sequence[SAEConfig] | None,
    acts: str,
    hook: str | None = None,
    cfg: TrainConfig | None = None,
    out: str | Path | None = None,
    *,
    batch_size: int = 4096,
    seed: int = 0,
    resume: bool = False,
    e2e: Any = None,
    hooks: Sequence[str] | None = None,
    layer_groups: int | None = None,
    layers: str | Sequence[int] | None = None,
) -> dict[str, SAE]:
    """Train one SAE, or a sweep of them in one pass over the store `acts` at `hook`.

    `cfg.tokens` defaults to one pass over the store's train split. Returns the trained SAEs
    by name (input scaling folded in); with `out`, each is also saved as a checkpoint folder
    (a sweep: one subfolder per SAE) that `load_sae` and `evaluate` read. The same run as
    `run_training(TrainRunConfig(...))`, which `saelab train` calls. A gsae SAE trains on the
    live loader (the model runs on the store's sequences for its gradients).

    `e2e` (an `E2EConfig`, with `saes` None): fine-tune the trained SAE it names end to end on
    the store's token sequences instead (`saelab train --e2e kl --from FOLDER`); `hook`, if
    given, must be the SAE's.

    Layer groups: instead of `hook`, give `hooks` (one hook point of consecutive layers) and
    `layer_groups` G: the layers are split into G contiguous groups of similar layers and one
    SAE (or sweep) is trained per group on every layer's rows, saved to
    `out/layers-<first>-<last>/` and returned under that name.

    Transcoders (`make_config("transcoder", target_hook=...)`) read `hook` and reconstruct
    their `target_hook`. `layers` (e.g. "0-29" or [3, 8]): one transcoder per layer, all in
    one pass; `hook` and each `target_hook` are then templates with `{layer}`, and the
    transcoders are returned as `<name>-L<layer>`. A cross-layer transcoder
    (`make_config("clt", d_sae=..., k=...)`, both per layer) is one dictionary over all of
    `layers` (no `hook` needed: its templates default to the MLP's normalised input and output).
    """
    from saelab.sae.config import SAEConfig, TrainConfig
    from saelab.sae.run import TrainRunConfig, run_training

    cfg = cfg if cfg is not None else TrainConfig(tokens=0)
    if not isinstance(cfg, TrainConfig):
        raise UserError(f"`cfg` must be a TrainConfig, got {type(cfg).__name__}")
    if e2e is not None:
        if saes:
            raise UserError("an e2e run fine-tunes the SAE of `e2e.sae`; pass saes=None with it")
        run = TrainRunConfig(
            acts=acts, hook=hook, out=out, tokens=cfg.tokens or None, batch_size=batch_size,
            seed=seed, resume=resume, train=replace(cfg, tokens=1), e2e=e2e,
        )  # fmt: skip
        return run_training(run).saes
    if hook is None and hooks is None and layers is None:
        raise UserError("which activations? give `hook`, or `hooks` and `layer_groups`")
    if cfg.hook is not None and hooks is None and cfg.hook != hook:
        raise UserError(
            f"`cfg.hook` {cfg.hook!r} and `hook` {hook!r} disagree; the SAEs read `hook`: leave "
            "cfg.hook unset or make them the same"
        )
    configs = [saes] if isinstance(saes, SAEConfig) else saes
    if not isinstance(configs, (list, tuple)) or not all(isinstance(c, SAEConfig) for c in configs):
        raise UserError(
            f"`saes` must be an SAE config or a list of them (saelab.make_config('topk', "
            f"k=32, ...)), got {saes!r}"
        )
    run = TrainRunConfig(
        acts=acts, saes=list(configs), hook=hook, out=out, tokens=cfg.tokens or None,
        hooks=None if hooks is None else list(hooks), layer_groups=layer_groups,
        layers=layers if layers is None or isinstance(layers, str) else ",".join(map(str, layers)),
        batch_size=batch_size, seed=seed, resume=resume, train=replace(cfg, tokens=1),
    )  # fmt: skip
    return run_training(run).saes


def evaluate(cfg: EvalConfig, model: Any = None) -> dict[str, dict[str, dict[str, float]]]:
    """Evaluate every SAE under `cfg.sae` into the results file `cfg.db`;
    returns {sae name: {eval: metrics}}."""
    from saelab.evaluation.runner import EvalConfig
    from saelab.evaluation.runner import evaluate as run

    expect_config(cfg, EvalConfig, "evaluate")
    return run(cfg, model=model, log=lambda *_: None)


def explain(cfg: ExplainConfig) -> ExplainSummary:
    """Explain and score latents of one SAE into `cfg.db` (auto-interp).

    With only explainers and scorers that never ask an LLM (the baseline explainer and the
    embedding scorer) no endpoint is contacted and no local server is started.
    """
    from saelab.autointerp.config import ExplainConfig
    from saelab.autointerp.pipeline import explain_features

    expect_config(cfg, ExplainConfig, "explain")
    offline = set(cfg.explainers) <= OFFLINE_EXPLAINERS and set(cfg.scorers) <= OFFLINE_SCORERS
    if offline and not cfg.llm.base_url:
        # The pipeline wants an endpoint; none of the chosen steps will call it.
        llm = replace(cfg.llm, base_url="http://127.0.0.1:9/v1", model=cfg.llm.model or "none")
        cfg = replace(cfg, llm=llm)
    return explain_features(cfg)


def circuit(cfg: CircuitConfig, model: Any = None) -> CircuitResult:
    """Find and evaluate a sparse feature circuit (`saelab circuit`'s function)."""
    from saelab.circuits.run import CircuitConfig, run_circuit

    expect_config(cfg, CircuitConfig, "circuit")
    return run_circuit(cfg, model=model, log=lambda *_: None)


def shift(cfg: ShiftConfig, model: Any = None) -> ShiftResult:
    """SHIFT (`saelab shift`'s function): a profession probe trained where profession and gender
    agree, the SAE features it relies on judged (LLM or correlation with gender), the spurious
    ones zero-ablated, and accuracies with 95% intervals beside the paper's baselines."""
    from saelab.circuits.shift import ShiftConfig, run_shift

    expect_config(cfg, ShiftConfig, "shift")
    return run_shift(cfg, model=model, log=lambda *_: None)


def graph(cfg: GraphConfig, model: Any = None, log: Any = None) -> GraphResult:
    """The attribution graph of one prompt (`saelab graph`'s function): transcoders in place of
    the MLPs, attention patterns and norm scales frozen from the real pass, error nodes kept;
    direct effects between latents, errors, token embeddings and target logits, pruned by
    influence to the budgets, with circuit-tracer's replacement and completeness scores, stored
    in `cfg.db` and (with `cfg.html`) exported as an HTML page."""
    from saelab.circuits.graph_run import GraphConfig, run_graph

    expect_config(cfg, GraphConfig, "graph")
    if cfg.html and importlib.util.find_spec("saelab.app.attribution_graph") is None:
        raise UserError(
            "this saelab has no HTML export of graphs yet (saelab.app.attribution_graph): drop "
            "`html` and open the stored graph with `saelab app`"
        )
    result = run_graph(cfg, model=model, log=log or (lambda *_: None))
    if cfg.html:
        write_graph_html(cfg.db, result.graph_id, cfg.html)
    return result


def write_graph_html(db: str, graph_id: str, path: str) -> None:
    """Write a stored graph as an HTML page (the app's Graph page, offline)."""
    from saelab.app.attribution_graph import write_graph_html as write
    from saelab.resultstore import ResultsStore

    write(ResultsStore(db, mode="read"), graph_id, path)


def graph_figure(
    db: str | Path,
    graph_id: str | None = None,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    max_edges: int | None = None,
):
    """A stored attribution graph as a plotly figure (the app's Graph page drawing).

    Layers are rows (token embeddings at the bottom, the target logits on top), prompt tokens
    are columns, nodes are sized by their influence on the targets and edges coloured by sign
    (blue positive, red negative). `graph_id` None: the newest graph in `db`. The stored
    (pruned) graph is thinned further for the drawing as the page's sliders do: the latent and
    error nodes holding `node_threshold` of the |influence|, then the edges between them
    holding `edge_threshold` of the |weight| (at most `max_edges`). Tokens and explanations are
    escaped.
    """
    from saelab import resultstore as results
    from saelab.app.attribution_graph import Pruning, explained_latents, figure, layout, prune
    from saelab.resultstore import ResultsStore

    store = ResultsStore(str(db), mode="read")
    runs = results.graph_runs(store)
    if not runs:
        raise UserError(f"no attribution graph in {db}: store one with saelab.graph(cfg) first")
    run = runs[0] if graph_id is None else next((r for r in runs if r.graph_id == graph_id), None)
    if run is None:
        known = ", ".join(r.graph_id for r in runs[:5])
        raise UserError(f"no graph {graph_id!r} in {db}; stored graphs (newest first): {known}")
    nodes = results.graph_nodes(store, run.graph_id)
    edges = results.graph_edges(store, run.graph_id)
    explanations = {}
    for sae_id, features in explained_latents(nodes).items():
        texts = results.explanation_texts(store, sae_id, features)
        explanations.update({(sae_id, f): t for f, t in texts.items() if t})
    pruning = Pruning(node_threshold=node_threshold, edge_threshold=edge_threshold,
                      max_edges=max_edges)  # fmt: skip
    kept_nodes, kept_edges = prune(nodes, edges, pruning)
    target = ", ".join(repr(t) for t in run.target_strs)
    return figure(layout(run, kept_nodes, kept_edges, explanations), title=f"→ {target}")


def graph_agreement(
    result: GraphResult,
    model: Any = None,
    n_nodes: int = 60,
    factor: float = 0.0,
    freeze: str = "none",
    target: int = 0,
) -> Agreement:
    """Does the graph predict what intervening on its nodes does to the real model?

    For the `n_nodes` latents of largest |total effect| on target logit `target` (its index
    among `result`'s targets), the real model runs with that latent's contribution a·W_dec
    multiplied by `factor` at its MLP output (0: ablated, 2: doubled), nothing else changed
    (`freeze`: "none"; "attention" holds the clean attention patterns, "attention+norms" also
    the norm scales, "all" everything the graph freezes). The measured change of the (demeaned,
    as in the graph) target logit is set against the graph's prediction (the node's total
    effect through later latents). The returned `Agreement` has one `NodeCheck` per latent
    (`predicted`, `direct`, `measured`) and their Pearson correlation and sign agreement.
    """
    from saelab.circuits.graph_check import FREEZES, agreement
    from saelab.circuits.graph_run import GraphResult

    if not isinstance(result, GraphResult):
        raise UserError(
            f"saelab.graph_agreement takes the result of saelab.graph(...), got "
            f"{type(result).__name__}"
        )
    if freeze not in FREEZES:
        raise UserError(f"`freeze` must be one of {', '.join(FREEZES)}, got {freeze!r}")
    if not 0 <= target < result.graph.n_logits:
        raise UserError(
            f"`target` is the index of one of the graph's {result.graph.n_logits} target "
            f"logits, got {target}"
        )
    if n_nodes < 1:
        raise UserError(f"`n_nodes` must be >= 1, got {n_nodes}")
    if model is None:
        model = load_model(result.config.model, device=result.config.device)
    return agreement(model, result.replacement, result.graph, n_nodes, factor, target, freeze)


def circuit_graph(result: CircuitResult, model: Any = None):
    """The circuit's node/edge graph as a plotly figure (what `saelab circuit` writes as HTML).

    Columns are the spliced hooks in computation order, nodes sized by |effect| and coloured by
    its sign; hover text names each node and, when the circuit was stored in a results file,
    its latent's top logit tokens and explanation. `model` is the loaded model the circuit ran
    on (None: load `result.config.model`); the SAEs are read again from their folders.
    """
    from saelab.circuits.graph import figure
    from saelab.circuits.run import _records
    from saelab.circuits.splice import load_spliced
    from saelab.resultstore import ResultsStore

    cfg = result.config
    if model is None:
        from saelab.activations.models import load_model

        model = load_model(cfg.model, device=cfg.device)
    spliced = load_spliced(model, cfg.sae, device=cfg.device)
    store = None  # the hover notes come from the results file when it can be read
    if cfg.db and Path(cfg.db).is_file():
        with contextlib.suppress(UserError):
            store = ResultsStore(cfg.db, mode="read")
    return figure(result, spliced, _records(spliced, model), store, model.tokenizer)


def circuit_curves(result: CircuitResult):
    """Faithfulness and completeness against circuit size, as a plotly figure.

    Faithfulness: the metric with only the top-n nodes kept (the rest ablated), relative to the
    full model (1) and the empty circuit (0). Completeness: the same with the top-n nodes
    ablated instead (near 0 when the circuit holds everything that matters). Sizes are on a log
    axis, so the empty circuit (faithfulness 0, completeness 1 by definition) is left out. The
    dashed line marks the circuit the node threshold kept; the star, every node of the graph
    kept (the model itself: faithfulness 1).
    """
    import plotly.graph_objects as go

    from saelab.circuits.evaluate import rankable

    points = sorted(
        (p for p in result.curves.points if p.n_nodes > 0 and not p.everything),
        key=lambda p: p.n_nodes,
    )
    sizes = [p.n_nodes for p in points]
    fig = go.Figure()
    for name in ("faithfulness", "completeness"):
        values = [getattr(p, name) for p in points]
        fig.add_trace(go.Scatter(x=sizes, y=values, mode="lines+markers", name=name))
    for p in result.curves.points:
        if p.everything:  # the whole graph kept: the model itself, faithfulness 1
            fig.add_trace(go.Scatter(
                x=[p.n_nodes], y=[p.faithfulness], mode="markers+text", name="every node kept",
                marker={"symbol": "star", "size": 14}, text=[f"every node ({p.n_nodes:,})"],
                textposition="bottom left",
            ))  # fmt: skip
    kept = len(rankable(result.kept, result.curves.error_policy))
    fig.add_vline(x=math.log10(max(kept, 1)), line_dash="dash", annotation_text="kept circuit")
    fig.update_layout(
        title=f"{result.task}: {result.curves.ablation} ablation, errors {result.curves.error_policy}",
        xaxis={"title": "nodes in the circuit (largest |effect| first)", "type": "log"},
        yaxis={"title": "fraction of the full model's logit difference"},
    )
    return fig


def load_sae(path: str | Path, device: str = "cpu") -> SAE:
    """An SAE from a checkpoint folder (saelab's own or SAELens layout), in eval mode."""
    from saelab.base.config import check_device
    from saelab.sae.checkpoint import load_sae as load

    if not isinstance(path, (str, Path)):
        raise UserError(f"give the SAE folder as a path, got {path!r}")
    if not isinstance(device, str):
        raise UserError(f"`device` is a torch device name such as 'cpu' or 'cuda', got {device!r}")
    check_device(device, "`device`")
    return load(path, device=device)


def open_results(db: str | Path) -> Results:
    """The results file as pandas frames, plotly figures and feature dashboards."""
    from saelab.results import Results

    return Results(db)
