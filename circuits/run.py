"""`run_circuit`: find and evaluate a sparse feature circuit end to end (the CLI's engine).

load model + SAEs → task → clean accuracy → node effects (AtP or IG) for every node → the top
ones re-scored by exact patching → nodes above the threshold → edges between them (IG or AtP,
under the frozen selection) → faithfulness/completeness curves (ending with every node kept)
→ measured edges → store rows and the HTML graph. Every check that can fail on bad input runs
before anything is written; the store write is one transaction. `docs/circuits.md` states the
method's choices.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from saelab import resultstore as results
from saelab.base import __version__
from saelab.base.config import check_device, check_fields
from saelab.base.errors import UserError
from saelab.base.fs import check_output_file
from saelab.circuits.attribution import (
    BASELINES,
    METHODS,
    LogitDiff,
    attribute,
    check_finite,
    metric_values,
    patch_sides,
    store_means,
)
from saelab.circuits.edges import EDGE_METHODS, Edge, edge_effects, ig_edge_effects
from saelab.circuits.evaluate import (
    ABLATIONS,
    ERROR_POLICIES,
    Curves,
    EdgeCheck,
    curves,
    default_sizes,
    make_ablation,
    measure_edges,
    pearson,
    rankable,
)
from saelab.circuits.exact import exact_node_effects
from saelab.circuits.nodes import Node, NodeKey, aggregate
from saelab.circuits.splice import SELECTIONS, SplicedModel, hook_order, load_spliced
from saelab.circuits.tasks import TASK_VERSION, TaskBatch, load_task


@dataclass
class CircuitConfig:
    """What circuit to find, how, and where to write it."""

    sae: list[str]
    """SAE folders (one per hook) or sweep folders of them."""
    task: str = "sva"
    """Built-in task (sva, sva-rc, sva-within-rc, sva-pp, ioi) or a JSONL file (clean, patch,
    correct, wrong)."""
    n_prompts: int = 32
    """Prompts to use (built-in tasks generate this many; files are cut to it)."""
    seed: int = 0
    """Seed of the built-in task's word choices and of resample ablation."""
    method: str = "atp"
    """Node attribution that ranks every node: atp (attribution patching) or ig (integrated
    gradients, every node of a hook moved together, as the SFC paper does)."""
    exact_nodes: int = 64
    """The top nodes of that ranking re-scored by exact patching (one forward each), whose
    effects then decide the circuit (0: keep the attributed effects)."""
    edge_method: str = "ig"
    """Edge attribution: ig (exact direct change of the downstream node times its gradient
    integrated along its own patch) or atp (one linearisation at the clean run)."""
    ig_edges: int = 32
    """With edge method ig: how many candidate edges (the largest by |AtP|) are scored by
    integrated gradients (each one forward-backward of `steps` prompt copies); the rest are
    left out of the graph."""
    steps: int = 10
    """Integrated-gradients steps (node method ig, edge method ig)."""
    selection: str = "frozen"
    """How downstream SAEs encode a patched or ablated input, in edges and evaluation alike:
    frozen (the clean active set) or reselect (the SAE's own selection run again)."""
    baseline: str | None = None
    """What nodes are patched to for attribution: patch (the task's patch prompts), zero or
    mean; None: patch when the task has patch prompts, else mean."""
    per_position: bool = True
    """Nodes per position (False: summed over positions)."""
    node_threshold: float = 0.1
    """Keep nodes whose |mean effect| reaches this (metric units)."""
    edge_threshold: float = 0.01
    """Keep edges whose |mean effect| reaches this."""
    ablation: str = "task-mean"
    """How nodes outside a circuit are ablated in evaluation: task-mean (each node's mean over
    the task's patch prompts at its position, the SFC paper's choice), mean (the activation
    store's mean, one per hook), zero, or resample."""
    error_policy: str = "ablate"
    """Error nodes in evaluation: ablate (unless kept), keep (always) or remove (always ablated)."""
    acts: str | None = None
    """Activation store for the store-mean ablation or baseline (means of every spliced hook)."""
    curve_sizes: list[int] | None = None
    """Circuit sizes of the curves (None: 0, 1, 2, 5, 10, 20, 50, … up to all nodes)."""
    check_edges: int = 32
    """Top edges whose effect is measured by direct-path patching (0 skips)."""
    edge_batch: int = 64
    """Downstream nodes per batched vector-Jacobian product (edge method atp)."""
    db: str | None = None
    """DuckDB results file to write the circuit into (None: nothing written)."""
    html: str | None = None
    """Where to write the self-contained HTML graph (None: nothing written)."""
    model: str = "smollm2-135m"
    """Model spec (must be the model the SAEs were trained on)."""
    device: str = "cpu"
    """Torch device."""
    progress: bool = True
    """Show progress bars (nodes, edges, curves, edge checks)."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if not self.sae:
            raise UserError("give at least one SAE folder")
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}: choose {', '.join(METHODS)}")
        if self.baseline is not None and self.baseline not in BASELINES:
            raise UserError(f"unknown baseline {self.baseline!r}: choose {', '.join(BASELINES)}")
        if self.ablation not in ABLATIONS:
            raise UserError(f"unknown ablation {self.ablation!r}: choose {', '.join(ABLATIONS)}")
        if self.error_policy not in ERROR_POLICIES:
            raise UserError(
                f"unknown error-node policy {self.error_policy!r}: choose "
                f"{', '.join(ERROR_POLICIES)}"
            )
        for name, v in (("node", self.node_threshold), ("edge", self.edge_threshold)):
            if not (v >= 0 and math.isfinite(v)):
                raise UserError(f"the {name} threshold must be a finite number >= 0, got {v}")
        if self.steps < 1 or self.n_prompts < 1:
            raise UserError("steps and the number of prompts must be at least 1")
        if "ig" not in (self.method, self.edge_method) and self.steps != CircuitConfig.steps:
            raise UserError(
                f"steps={self.steps} applies to integrated gradients only: use method or "
                "edge_method ig, or drop steps (attribution patching takes one gradient)"
            )
        if self.edge_method not in EDGE_METHODS:
            raise UserError(
                f"unknown edge method {self.edge_method!r}: choose {', '.join(EDGE_METHODS)}"
            )
        if self.selection not in SELECTIONS:
            raise UserError(f"unknown selection {self.selection!r}: choose {', '.join(SELECTIONS)}")
        if self.ig_edges < 1:
            raise UserError(f"`ig_edges` must be at least 1, got {self.ig_edges}")
        if self.exact_nodes < 0:
            raise UserError(f"`exact_nodes` must be >= 0, got {self.exact_nodes}")
        if self.curve_sizes is not None and (not self.curve_sizes or min(self.curve_sizes) < 0):
            raise UserError(
                f"`curve_sizes` must be circuit sizes >= 0, got {self.curve_sizes}; "
                "leave it unset for 0, 1, 2, 5, 10, ... all nodes"
            )
        if self.check_edges < 0 or self.edge_batch < 1:
            raise UserError("`check_edges` must be >= 0 and `edge_batch` at least 1")
        if self.html is not None:
            check_output_file(self.html, "the circuit graph", "circuit.html")
        check_device(self.device)
        if self.acts is None and "mean" in (self.ablation, self.baseline):
            raise UserError(
                "mean ablation needs the activation store (its per-hook means): give `acts`, or "
                "use zero or resample ablation"
            )


@dataclass
class NodeCheck:
    """A node re-scored by exact patching, beside its attributed effect."""

    key: NodeKey
    attributed: float
    """Mean effect by the ranking method (atp or ig)."""
    exact: float
    """Mean effect of patching the node alone."""


@dataclass
class CircuitResult:
    config: CircuitConfig
    task: str
    n_prompts: int
    clean_accuracy: float
    m_clean: float
    m_patch: float | None
    nodes: list[Node]
    """Every node with a non-zero effect, largest |effect| first."""
    kept: list[Node]
    edges: list[Edge]
    curves: Curves
    faithfulness: float
    """At the kept circuit."""
    completeness: float
    node_checks: list[NodeCheck] = field(default_factory=list)
    edge_checks: list[EdgeCheck] = field(default_factory=list)
    edge_correlation: float = math.nan
    circuit_id: str | None = None
    seconds: float = 0.0

    @property
    def faithfulness_all(self) -> float:
        """Faithfulness with every node of the graph kept (1 when the splice is exact)."""
        return next((p.faithfulness for p in self.curves.points if p.everything), math.nan)

    def best_faithfulness(self, max_nodes: int = 50) -> tuple[int, float]:
        """(size, faithfulness) of the most faithful curve point of at most `max_nodes`."""
        small = [p for p in self.curves.points if p.n_nodes <= max_nodes and not p.everything]
        best = max(small, key=lambda p: p.faithfulness, default=None)
        return (0, math.nan) if best is None else (best.n_nodes, best.faithfulness)


def run_circuit(cfg: CircuitConfig, model=None, log=print) -> CircuitResult:
    """Find, evaluate and (optionally) store a circuit; see the module docstring."""
    cfg.validate()
    start = time.perf_counter()
    # opened (created, checked, migrated) before any compute: a wrong file fails at once
    store = results.ResultsStore(cfg.db, mode="write") if cfg.db else None
    if model is None:
        from saelab.activations.models import load_model

        model = load_model(cfg.model, device=cfg.device)
    from saelab.activations.corpus import bos_token_id

    spliced = load_spliced(model, cfg.sae, device=cfg.device, selection=cfg.selection)
    task = load_task(
        cfg.task, model.tokenizer, bos_token_id(model.tokenizer), cfg.n_prompts, cfg.seed
    )
    baseline = cfg.baseline or ("patch" if task.patch is not None else "mean")
    stats = None
    if "mean" in (baseline, cfg.ablation):
        if cfg.acts is None:  # only the baseline's fallback gets here (validate saw the rest)
            raise UserError(
                f"task {task.name} has no patch prompts, so nodes are patched to their means, "
                "which need the activation store: give `acts`, or baseline zero"
            )
        stats = store_means(spliced, cfg.acts)
    metric = LogitDiff(task.correct, task.wrong)
    clean_values = metric_values(spliced, task.clean, metric)
    check_finite(clean_values, "clean prompts")
    patch_values = None
    if task.patch is not None:
        patch_values = metric_values(spliced, task.patch, metric)
        check_finite(patch_values, "patch prompts")
    accuracy = float((clean_values > 0).float().mean())
    log(
        f"task {task.name}: {len(task)} prompts, clean accuracy {accuracy:.2f}, "
        f"mean logit diff {float(clean_values.mean()):.3f}"
    )

    bar = _bar(cfg, len(spliced.hooks), "nodes")
    sides = patch_sides(spliced, task.patch, baseline, stats)
    effects, _ = attribute(spliced, task.clean, metric, sides, cfg.method, cfg.steps, progress=bar)
    bar.close()
    nodes = aggregate(effects, cfg.per_position)
    for n in nodes:
        if not math.isfinite(n.effect):
            raise UserError("a node effect is NaN or infinite; check the SAEs and the model")
    _, states, _ = spliced.run_spliced(task.clean)
    node_checks = _exact_nodes(cfg, spliced, task, metric, states, sides, nodes)
    kept = [n for n in nodes if abs(n.effect) >= cfg.node_threshold and n.effect != 0]
    rescored = {c.key for c in node_checks}
    beyond = [n for n in rankable(kept, cfg.error_policy) if n.key not in rescored]
    if cfg.exact_nodes and beyond:
        log(
            f"{len(beyond)} kept node(s) lie beyond the {cfg.exact_nodes} re-scored exactly and "
            f"keep their {cfg.method} effects; raise `exact_nodes` to score them exactly"
        )
    if not kept:
        largest = max((abs(n.effect) for n in nodes), default=0.0)
        raise UserError(
            f"no node reaches the node threshold {cfg.node_threshold:g} (largest |effect| "
            f"{largest:.3g}); lower `node_threshold`"
        )
    # ablations and patch states are runs of their own prompts: made before freezing
    abl = make_ablation(cfg.ablation, spliced, task.clean, stats, cfg.seed, task.patch)
    with spliced.frozen_at(states):
        edges = _edges(cfg, spliced, task, metric, sides, kept, states, log)
        # the kept nodes are the top n_kept of the ranking (sorted by |effect|): one more size
        n_kept = len(rankable(kept, cfg.error_policy))
        ranked = len(rankable(nodes, cfg.error_policy))
        sizes = sorted(set(cfg.curve_sizes or default_sizes(ranked)) | {n_kept})
        bar = _bar(cfg, len(sizes) + 1, "curves")
        curve = curves(
            spliced, task.clean, metric, nodes, abl, cfg.error_policy, sizes, bar, cfg.per_position
        )
        point = next(p for p in curve.points if p.n_nodes == n_kept)
        bar.close()
        checks: list[EdgeCheck] = []
        corr = math.nan
        if cfg.check_edges and edges:
            top = sorted(edges, key=lambda e: -abs(e.effect))[: cfg.check_edges]
            bar = _bar(cfg, len(top), "edge checks")
            checks = measure_edges(spliced, task.clean, metric, states, sides, top, bar)
            bar.close()
            corr = pearson([c.edge.effect for c in checks], [c.measured for c in checks])
    result = CircuitResult(
        config=cfg,
        task=task.name,
        n_prompts=len(task),
        clean_accuracy=accuracy,
        m_clean=float(clean_values.mean()),
        m_patch=None if patch_values is None else float(patch_values.mean()),
        nodes=nodes,
        kept=kept,
        edges=edges,
        curves=curve,
        faithfulness=point.faithfulness,
        completeness=point.completeness,
        node_checks=node_checks,
        edge_checks=checks,
        edge_correlation=corr,
    )
    result.seconds = time.perf_counter() - start
    records = _records(spliced, model)
    if cfg.html:
        from saelab.circuits.graph import write_html

        write_html(result, spliced, cfg.html, records, store, model.tokenizer)
    if store is not None:
        result.circuit_id = _store(store, cfg, result, spliced, task, baseline, model, records)
    return result


def _exact_nodes(cfg, spliced, task, metric, states, sides, nodes: list[Node]) -> list[NodeCheck]:
    """Re-score the top `exact_nodes` of the ranking by exact patching; re-sort `nodes`."""
    top = rankable(nodes, cfg.error_policy)[: cfg.exact_nodes]
    if not top:
        return []
    bar = _bar(cfg, len(top), "exact nodes")
    exact = exact_node_effects(
        spliced, task.clean, metric, states, sides, [n.key for n in top], progress=bar
    ).mean(1)
    bar.close()
    check_finite(exact, "patching single nodes")
    checks = []
    for n, v in zip(top, exact.tolist()):
        checks.append(NodeCheck(n.key, n.effect, v))
        n.effect = v
    nodes.sort(key=lambda n: (-abs(n.effect), hook_order(n.key.hook), n.key.feature, n.key.pos))
    return checks


def _bar(cfg: CircuitConfig, total, what: str):
    return tqdm(total=total, desc=f"circuit {what}", disable=not cfg.progress, leave=False)


def _edges(
    cfg, spliced: SplicedModel, task: TaskBatch, metric, sides, kept, clean, log=print
) -> list[Edge]:
    """AtP edges between every pair of kept nodes (cheap: batched per downstream hook); with
    edge method ig, the top `ig_edges` of them by |AtP| re-scored by IG edges (one
    forward-backward of `steps` prompt copies per edge), the rest left out."""
    logits, states, _ = spliced.run_spliced(task.clean, grads=True)
    values = metric(logits, {})
    outs = [states[h].out for h in spliced.hooks]
    grads = dict(zip(spliced.hooks, torch.autograd.grad(values.sum(), outs, allow_unused=True)))
    grads = {h: torch.zeros_like(states[h].out) if g is None else g for h, g in grads.items()}
    bar = _bar(cfg, len(kept), "edges")
    edges = edge_effects(
        spliced, task.clean, states, grads, sides, kept, batch=cfg.edge_batch, progress=bar
    )
    bar.close()
    if cfg.edge_method == "ig":
        edges.sort(key=lambda e: -abs(e.effect))
        if len(edges) > cfg.ig_edges:
            log(
                f"{len(edges)} candidate edges: the top {cfg.ig_edges} by |AtP| are scored by "
                "integrated gradients, the rest left out (raise `ig_edges` to score more)"
            )
        only = {(e.up, e.down) for e in edges[: cfg.ig_edges]}
        bar = _bar(cfg, len(kept), "IG edges")
        edges = ig_edge_effects(
            spliced, task.clean, metric, clean, sides, kept, cfg.steps, progress=bar, only=only
        )
        bar.close()
    return [e for e in edges if abs(e.effect) >= cfg.edge_threshold]


def _prompts_hash(task: TaskBatch) -> str:
    payload = json.dumps([asdict(e) for e in task.examples], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _records(spliced: SplicedModel, model) -> dict:
    """The store's SAE record per hook (ids as `saelab eval` computes them)."""
    from saelab.sae.checkpoint import read_cfg

    return {
        hook: _record(Path(folder), spliced.saes[hook], read_cfg(folder), hook, model)
        for hook, folder in spliced.folders.items()
    }


def _store(store, cfg, result: CircuitResult, spliced, task, baseline, model, records) -> str:
    config = {k: v for k, v in asdict(cfg).items() if k not in ("progress", "db", "html")}
    sae_ids = [records[h].sae_id for h in spliced.hooks]
    prompts_hash = _prompts_hash(task)
    cid = results.circuit_id(
        results.config_hash(config), prompts_hash, sae_ids, model.weights_sha256
    )
    index = {n.key: i for i, n in enumerate(result.nodes)}
    kept = {n.key for n in result.kept}
    attributed = {c.key: c.attributed for c in result.node_checks}
    nodes = []
    for i, n in enumerate(result.nodes):
        if n.key not in kept and i >= 2000:
            continue  # the ranked tail beyond 2000 nodes is not stored
        layer, _ = hook_order(n.key.hook)
        nodes.append(results.CircuitNodeRow(
            circuit_id=cid, node=i, hook=n.key.hook,
            submodule=n.key.hook.split(".")[-1].removeprefix("hook_"), layer=layer,
            pos=n.key.pos, feature=n.key.feature, is_error=n.key.is_error,
            sae_id=records[n.key.hook].sae_id, effect=n.effect, activation=n.activation,
            kept=n.key in kept, attributed=attributed.get(n.key),
        ))  # fmt: skip
    checks = {(c.edge.up, c.edge.down): c for c in result.edge_checks}
    edges = []
    for e in result.edges:
        check = checks.get((e.up, e.down))
        edges.append(results.CircuitEdgeRow(
            cid, index[e.up], index[e.down], e.effect, check and check.measured,
            check and check.switched,
        ))  # fmt: skip
    curves_rows = []
    everything = {p.n_nodes for p in result.curves.points if p.everything}
    for p in result.curves.points:
        if p.n_nodes in everything and not p.everything:
            continue  # every node listed and ranked: the every-node point stands for it
        curves_rows.append(results.CircuitCurveRow(
            cid, "faithfulness", p.n_nodes, p.faithfulness, p.m_circuit, p.everything
        ))  # fmt: skip
        curves_rows.append(results.CircuitCurveRow(
            cid, "completeness", p.n_nodes, p.completeness, p.m_complement, p.everything
        ))  # fmt: skip
    circuit = results.CircuitRow(
        circuit_id=cid, task=task.name,
        task_source=cfg.task if cfg.task.endswith(".jsonl") else f"builtin v{TASK_VERSION}",
        prompts_hash=prompts_hash, n_prompts=len(task), model=model.name,
        model_sha256=model.weights_sha256, sae_ids=sae_ids, hooks=list(spliced.hooks),
        method=cfg.method, baseline=baseline, steps=cfg.steps, per_position=cfg.per_position,
        node_threshold=cfg.node_threshold, edge_threshold=cfg.edge_threshold,
        ablation=cfg.ablation, error_policy=cfg.error_policy, m_clean=result.m_clean,
        m_patch=result.m_patch, m_empty=result.curves.m_empty,
        clean_accuracy=result.clean_accuracy, faithfulness=_finite(result.faithfulness),
        completeness=_finite(result.completeness), n_nodes=len(result.kept),
        n_edges=len(result.edges), edge_correlation=_finite(result.edge_correlation),
        config_json=json.dumps(config, default=str), config_hash=results.config_hash(config),
        seconds=result.seconds, saelab_version=__version__, selection=cfg.selection,
        edge_method=cfg.edge_method, exact_nodes=cfg.exact_nodes,
        faithfulness_all=_finite(result.faithfulness_all),
    )  # fmt: skip
    record = results.CircuitRecord(circuit, nodes, edges, curves_rows)
    return results.write_circuit(store, record, list(records.values()))


def _finite(v: float) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _record(folder: Path, sae, cfg_json: dict, hook: str, model) -> results.SAERow:
    from saelab.sae.checkpoint import WEIGHTS_FILE

    return results.record_for_folder(
        folder, WEIGHTS_FILE, cfg_json, architecture=sae.architecture, d_in=sae.d_in,
        d_sae=sae.d_sae, hook=hook, model=cfg_json.get("model_name") or model.name,
        model_sha256=model.weights_sha256,
    )  # fmt: skip
