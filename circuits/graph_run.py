"""`run_graph`: the attribution graph of one prompt, end to end (`saelab graph`'s engine).

load the model and the transcoders → tokenise the prompt (BOS first) → the real forward and
the replacement model → targets (given tokens, or the top predictions) → adjacency → influence,
pruning, replacement and completeness scores of the unpruned and the pruned graph → store rows
(`graph_runs`, `graph_nodes`, `graph_edges`; one transaction). Every check that can fail on bad
input runs before any compute.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from saelab import resultstore as results
from saelab.base import __version__
from saelab.base.config import check_device
from saelab.base.errors import UserError
from saelab.base.fs import check_output_file
from saelab.circuits.graph_attribution import Graph, attribute
from saelab.circuits.graph_prune import Pruned, fold_latents, graph_scores, prune
from saelab.circuits.replacement import (
    ReplacementModel,
    attention_sae_layer,
    build_replacement,
    dictionary_layers,
)

DICTIONARY = "transcoders"


@dataclass
class GraphConfig:
    """Which prompt to trace, with which transcoders, how far to prune, where to store it."""

    transcoders: list[str]
    """Transcoder folders (blocks.L.ln2.hook_normalized → blocks.L.hook_mlp_out), or sweep
    folders of them; any subset of layers (a layer without one is an error node per position).
    A cross-layer transcoder's folder covers every layer of its range (its latents write to
    each later layer's MLP output); per-layer transcoders may fill in the other layers."""
    prompt: str
    """The text to trace (BOS is put first, as in a harvest)."""
    attention_saes: list[str] = field(default_factory=list)
    """Attention-output SAE folders (trained on blocks.L.attn.hook_z), or sweep folders of
    them: each replaces its layer's attention output by its latents and an error node per
    position (read through W_O); empty: attention is traced through, as frozen patterns."""
    db: str | None = None
    """Results file to store the graph in (None: not stored)."""
    targets: list[str] = field(default_factory=list)
    """Output tokens whose logits the graph explains, each one token (e.g. ' Paris'); empty:
    the model's top predictions (`top_targets` of them)."""
    top_targets: int = 1
    """With no targets given: explain this many of the top predictions."""
    demean: bool = True
    """Read each target as its logit minus the mean logit (circuit-tracer's convention)."""
    node_budget: int = 200
    """The pruned graph keeps at most this many latent and error nodes (embeddings and logits
    are always kept)."""
    edge_budget: int = 2000
    """The pruned graph keeps at most this many edges."""
    node_threshold: float = 0.8
    """Keep the nodes holding this fraction of the total influence (then the budget)."""
    edge_threshold: float = 0.98
    """Keep the edges holding this fraction of the total edge score (then the budget)."""
    max_latents: int = 2048
    """Compute incoming edges for at most this many latents, the most influential found so far
    (circuit-tracer's max_feature_nodes); 0: every active latent."""
    batch_size: int = 128
    """Targets per backward pass."""
    model: str = "smollm2-135m"
    """The model the transcoders were trained on."""
    device: str = "cpu"
    """cpu, cuda, cuda:N or mps."""
    html: str | None = None
    """Also write the graph as an HTML page here (needs `db`)."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self) -> None:
        if not self.transcoders:
            raise UserError("give at least one transcoder folder (`transcoders`)")
        if not self.prompt or not self.prompt.strip():
            raise UserError("the prompt is empty: give the text to trace (`prompt`)")
        for name in ("node_budget", "edge_budget", "max_latents"):
            if getattr(self, name) < 0:
                raise UserError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        for name in ("top_targets", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("node_threshold", "edge_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise UserError(f"`{name}` must be in (0, 1], got {getattr(self, name)}")
        if self.html and not self.db:
            raise UserError("the HTML export reads the stored graph: give `db` with `html`")
        if self.html:
            check_output_file(self.html, "the graph's HTML page", "graph.html")
        check_device(self.device)


@dataclass
class GraphScores:
    """circuit-tracer's two scores, of the unpruned and of the pruned graph."""

    replacement: float
    completeness: float
    replacement_pruned: float
    completeness_pruned: float


@dataclass
class GraphResult:
    """One prompt's graph: the adjacency, what pruning kept, the scores, and the stored rows."""

    config: GraphConfig
    graph: Graph
    pruned: Pruned
    scores: GraphScores
    run: results.GraphRunRow
    nodes: list[results.GraphNodeRow]
    edges: list[results.GraphEdgeRow]
    replacement: ReplacementModel
    seconds: float
    stored: bool = False

    @property
    def graph_id(self) -> str:
        return self.run.graph_id


def load_transcoders(model, paths: list[str], device: str) -> dict[int, tuple[object, Path]]:
    """Layer → (transcoder, folder); one-line errors for a non-transcoder, a wrong hook pair,
    another model's transcoder, or two for one layer."""
    from saelab.circuits.splice import sae_folders
    from saelab.sae.checkpoint import load_sae, read_cfg

    found: dict[int, tuple[object, Path]] = {}
    for folder in sae_folders(paths):
        block = read_cfg(folder).get("saelab") or {}
        sha = block.get("model_sha256") or (block.get("provenance") or {}).get("model_sha256")
        if sha and sha != model.weights_sha256:
            raise UserError(
                f"transcoder {folder} was trained on another model ({sha[:12]}…) than "
                f"{model.name} ({model.weights_sha256[:12]}…)"
            )
        tc = load_sae(folder, device=device)
        layers = dictionary_layers(tc)
        if tc.d_in != model.d_model or tc.d_out != model.d_model:
            raise UserError(
                f"transcoder {folder} maps width {tc.d_in} to {tc.d_out} but {model.name} has "
                f"d_model {model.d_model}: it was trained on another model"
            )
        for layer in layers:
            if layer in found:
                raise UserError(
                    f"two transcoders for layer {layer} ({found[layer][1]} and {folder}): give "
                    "one per layer"
                )
        for p in tc.parameters():
            p.requires_grad_(False)
        for layer in layers:
            found[layer] = (tc, Path(folder))
    return dict(sorted(found.items()))


def load_attention_saes(model, paths: list[str], device: str) -> dict[int, tuple[object, Path]]:
    """Layer → (attention SAE, folder); one-line errors for an SAE on another hook, another
    model's SAE, or two for one layer."""
    from saelab.circuits.splice import sae_folders
    from saelab.sae.checkpoint import load_sae, read_cfg

    found: dict[int, tuple[object, Path]] = {}
    for folder in sae_folders(paths):
        cfg = read_cfg(folder)
        block = cfg.get("saelab") or {}
        sha = block.get("model_sha256") or (block.get("provenance") or {}).get("model_sha256")
        if sha and sha != model.weights_sha256:
            raise UserError(
                f"attention SAE {folder} was trained on another model ({sha[:12]}…) than "
                f"{model.name} ({model.weights_sha256[:12]}…)"
            )
        layer = attention_sae_layer(cfg.get("hook_name") or block.get("hook_name"))
        if layer in found:
            raise UserError(
                f"two attention SAEs for layer {layer} ({found[layer][1]} and {folder}): give "
                "one per layer"
            )
        sae = load_sae(folder, device=device)
        if getattr(sae, "architecture", None) in ("transcoder", "clt"):
            raise UserError(f"{folder} is a transcoder: give it with `transcoders`")
        for p in sae.parameters():
            p.requires_grad_(False)
        found[layer] = (sae, Path(folder))
    return dict(sorted(found.items()))


def target_tokens(cfg: GraphConfig, tokenizer, logits: torch.Tensor | None) -> list[int]:
    """The target token ids: each of `cfg.targets` as one token, or the top predictions."""
    if not cfg.targets:
        return torch.topk(logits, cfg.top_targets).indices.tolist()
    out = []
    for text in cfg.targets:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise UserError(
                f"target {text!r} is {len(ids)} tokens ({ids}); give one token each "
                "(mind the leading space, e.g. ' Paris')"
            )
        out.append(int(ids[0]))
    if len(set(out)) != len(out):
        raise UserError(f"the targets repeat a token: {cfg.targets}")
    return out


def run_graph(cfg: GraphConfig, model=None, log=print) -> GraphResult:
    """Build, prune, score and (with `cfg.db`) store one prompt's attribution graph."""
    if not isinstance(cfg, GraphConfig):
        raise UserError(f"run_graph takes a GraphConfig, not {type(cfg).__name__}")
    cfg.validate()
    start = time.perf_counter()
    store = results.ResultsStore(cfg.db, mode="write") if cfg.db else None
    if model is None:
        from saelab.activations.models import load_model

        model = load_model(cfg.model, device=cfg.device)
    from saelab.activations.corpus import bos_token_id

    loaded = load_transcoders(model, cfg.transcoders, cfg.device)
    attn_loaded = load_attention_saes(model, cfg.attention_saes, cfg.device)
    bos = bos_token_id(model.tokenizer)
    tokens = [bos] + model.tokenizer.encode(cfg.prompt, add_special_tokens=False)
    given_targets = target_tokens(cfg, model.tokenizer, None) if cfg.targets else None
    rm = build_replacement(
        model, tokens, {k: v[0] for k, v in loaded.items()}, bos,
        attention_saes={k: v[0] for k, v in attn_loaded.items()},
    )  # fmt: skip
    last = rm.frozen.logits[-1]
    targets = given_targets or target_tokens(cfg, model.tokenizer, last)
    probs = torch.softmax(last.double(), -1)[targets].float()
    log(
        f"prompt: {len(tokens)} tokens; {len({id(v[0]) for v in loaded.values()})} transcoders (layers "
        f"{', '.join(map(str, loaded))}); {rm.nodes.n_latents} active latents"
        + (
            f" ({rm.n_attn_latents} of attention SAEs at layers {', '.join(map(str, attn_loaded))})"
            if attn_loaded
            else ""
        )
    )
    graph = attribute(
        rm, torch.tensor(targets), probs, cfg.demean, cfg.max_latents, cfg.batch_size, cfg.progress
    )
    pruned, scores = prune_and_score(graph, cfg)
    seconds = time.perf_counter() - start
    run, nodes, edges, saes = rows(
        cfg, model, rm, graph, pruned, scores, loaded, tokens, seconds, attn_loaded
    )
    result = GraphResult(cfg, graph, pruned, scores, run, nodes, edges, rm, seconds)
    if store is not None:
        results.write_graph(store, run, nodes, edges, saes)
        result.stored = True
    log(
        f"graph {run.graph_id}: {graph.size} nodes → {len(nodes)} kept, {len(edges)} edges; "
        f"replacement {scores.replacement:.3f} (pruned {scores.replacement_pruned:.3f}), "
        f"completeness {scores.completeness:.3f} (pruned {scores.completeness_pruned:.3f}); "
        f"{seconds:.1f} s"
    )
    return result


def prune_and_score(graph: Graph, cfg: GraphConfig) -> tuple[Pruned, GraphScores]:
    """Prune to the config's budgets and score the unpruned and the pruned graph."""
    a = graph.adjacency.double()
    weights = graph.logit_weights().double()
    kinds = graph.kinds()
    error = torch.tensor([k == "error" for k in kinds])
    embedding = torch.tensor([k == "embedding" for k in kinds])
    pruned = prune(
        a, weights, graph.n_latents, graph.n_errors, cfg.node_budget, cfg.edge_budget,
        cfg.node_threshold, cfg.edge_threshold,
    )  # fmt: skip
    full = graph_scores(a, weights, error, embedding)
    folded = fold_latents(
        a, pruned.node_mask[: graph.n_latents], latent_errors(graph), graph.n_latents
    )
    sub = graph_scores(folded, weights, error, embedding)
    return pruned, GraphScores(full[0], full[1], sub[0], sub[1])


def latent_errors(graph: Graph) -> torch.Tensor:
    """Each latent's error node (same layer and position; an attention latent's: its attention
    SAE's error node), as a node index."""
    nodes = graph.nodes
    first = int(nodes.error_pos.min()) if nodes.n_errors else 0
    per_layer = nodes.n_pos - first
    out = graph.n_latents + nodes.layer * per_layer + (nodes.pos - first)
    attn = nodes.is_attn()
    if attn.any():
        err_attn = nodes.is_attn_error()
        grid = int((~err_attn).sum())
        attn_layers = torch.unique(nodes.error_layer[err_attn])  # sorted, as the errors are
        k = torch.searchsorted(attn_layers, nodes.layer[attn])
        out[attn] = graph.n_latents + grid + k * per_layer + (nodes.pos[attn] - first)
    return out


def node_names(graph: Graph) -> list[str]:
    """`L3.f1234@5`, `err.L3@5`, `emb@5`, `logit.1234`, in adjacency order; an attention SAE's
    latents and error nodes: `A3.f12@5`, `attn_err.L3@5`."""
    n = graph.nodes
    names = [
        f"{'A' if a else 'L'}{ly}.f{f}@{p}"
        for ly, f, p, a in zip(
            n.layer.tolist(), n.feature.tolist(), n.pos.tolist(), n.is_attn().tolist()
        )
    ]
    names += [
        f"{'attn_err' if a else 'err'}.L{ly}@{p}"
        for ly, p, a in zip(
            n.error_layer.tolist(), n.error_pos.tolist(), n.is_attn_error().tolist()
        )
    ]
    names += [f"emb@{p}" for p in range(n.n_pos)]
    names += [f"logit.{t}" for t in graph.logit_tokens.tolist()]
    return names


def rows(cfg, model, rm, graph, pruned, scores, loaded, tokens, seconds, attn_loaded=None):
    """The store's rows: the run, the pruned graph's nodes and edges, the dictionaries."""
    from saelab.sae.checkpoint import WEIGHTS_FILE, read_cfg

    by_folder: dict[Path, results.SAERow] = {}
    for tc, folder in loaded.values():  # a CLT covers several layers: one record
        if folder not in by_folder:
            by_folder[folder] = results.record_for_folder(
                folder, WEIGHTS_FILE, read_cfg(folder), architecture=tc.architecture,
                d_in=tc.d_in, d_sae=tc.d_sae, hook=_input_hook(tc), model=model.name,
                model_sha256=model.weights_sha256,
            )  # fmt: skip
    layer_record = {layer: by_folder[folder] for layer, (_, folder) in loaded.items()}
    attn_record = {}
    for layer, (sae, folder) in (attn_loaded or {}).items():
        by_folder[folder] = attn_record[layer] = results.record_for_folder(
            folder, WEIGHTS_FILE, read_cfg(folder), architecture=sae.architecture,
            d_in=sae.d_in, d_sae=sae.d_sae, hook=f"blocks.{layer}.attn.hook_z", model=model.name,
            model_sha256=model.weights_sha256,
        )  # fmt: skip
    saes = {folder: by_folder[folder] for folder in by_folder}
    sae_ids = [r.sae_id for r in saes.values()]
    tok = model.tokenizer
    token_strs = [tok.decode([t]) for t in tokens]
    targets = graph.logit_tokens.tolist()
    target_strs = [tok.decode([t]) for t in targets]
    config = {k: v for k, v in asdict(cfg).items() if k not in ("progress", "db", "html")}
    chash = results.config_hash(config)
    gid = results.graph_id(chash, tokens, targets, sae_ids, model.weights_sha256)
    provenance = {
        **config,
        "model_name": model.name,
        "model_sha256": model.weights_sha256,
        "transcoder_ids": sae_ids,
        "transcoder_paths": [str(folder.resolve()) for folder in saes],
        "layers": list(loaded),
        "attention_sae_layers": list(attn_loaded or {}),
        "bos_nodes": "none (position 0 holds BOS: its MLP outputs are constants)",
        "logit_convention": "demeaned" if cfg.demean else "raw",
        "pruned_scores": "latents outside the pruned graph folded into their error nodes",
        "active_latents": graph.n_active,
        "graph_latents": graph.n_latents,
        "versions": {"saelab": __version__, "torch": torch.__version__},
    }
    names = node_names(graph)
    kinds = graph.kinds()
    n = graph.nodes
    is_attn, is_attn_err = n.is_attn(), n.is_attn_error()
    keep = pruned.node_mask
    influence = pruned.influence
    node_rows = []
    err_norm = rm.errors.norm(dim=1)
    last = len(tokens) - 1
    for i in keep.nonzero().squeeze(1).tolist():
        kind = kinds[i]
        layer, pos, feature, sae_id, hook, act, label = -1, 0, None, None, None, None, None
        if kind == "latent":
            layer, pos = int(n.layer[i]), int(n.pos[i])
            feature, act = int(n.feature[i]), float(n.activation[i])
            if is_attn[i]:
                sae_id, hook = attn_record[layer].sae_id, f"blocks.{layer}.attn.hook_z"
            else:
                sae_id, hook = layer_record[layer].sae_id, f"blocks.{layer}.ln2.hook_normalized"
        elif kind == "error":
            j = i - graph.n_latents
            layer, pos = int(n.error_layer[j]), int(n.error_pos[j])
            if is_attn_err[j]:
                sae_id, hook = attn_record[layer].sae_id, f"blocks.{layer}.attn.hook_z"
            else:
                sae_id = layer_record[layer].sae_id if layer in layer_record else None
                hook = f"blocks.{layer}.hook_mlp_out"
            act = float(err_norm[j])
        elif kind == "embedding":
            pos = i - graph.n_latents - graph.n_errors
            feature, label = tokens[pos], token_strs[pos]
        else:
            j = i - (graph.size - graph.n_logits)
            layer, pos, feature = model.n_layers, last, targets[j]
            act, label = float(graph.logit_probs[j]), target_strs[j]
        node_rows.append(results.GraphNodeRow(
            graph_id=gid, node=names[i], kind=kind, layer=layer, pos=pos, feature=feature,
            sae_id=sae_id, hook=hook, activation=act, influence=float(influence[i]), label=label,
        ))  # fmt: skip
    edge_rows = []
    a = graph.adjacency
    for t, s in pruned.edge_mask.nonzero().tolist():
        edge_rows.append(results.GraphEdgeRow(gid, names[s], names[t], float(a[t, s])))
    run = results.GraphRunRow(
        graph_id=gid, model=model.name, model_sha256=model.weights_sha256, prompt=cfg.prompt,
        tokens=list(tokens), token_strs=token_strs, targets=targets, target_strs=target_strs,
        target_probs=[float(p) for p in graph.logit_probs], sae_ids=sae_ids,
        hooks=[r.hook for r in saes.values()], dictionary=DICTIONARY,
        node_budget=cfg.node_budget, edge_budget=cfg.edge_budget, n_nodes_total=graph.size,
        n_nodes=len(node_rows), n_edges=len(edge_rows),
        replacement_score=scores.replacement, completeness_score=scores.completeness,
        replacement_score_pruned=scores.replacement_pruned,
        completeness_score_pruned=scores.completeness_pruned,
        config_json=json.dumps(provenance, default=str), config_hash=chash, seconds=seconds,
        saelab_version=__version__,
    )  # fmt: skip
    return run, node_rows, edge_rows, list(saes.values())


def _input_hook(tc) -> str:
    """The hook a dictionary reads (a CLT: its first layer's, as its cfg.json records)."""
    hooks = getattr(tc, "input_hooks", None)
    return hooks[0] if hooks else tc.input_hook
