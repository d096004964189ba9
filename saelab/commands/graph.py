"""`saelab graph`: the attribution graph of one prompt, traced with transcoders (see
circuits/graph_run.py), stored in the results file and optionally exported as HTML."""

from __future__ import annotations

import argparse

from saelab.commands.flags import add_fields, given

HELP = "trace one prompt's attribution graph through transcoders"
ON_INTERRUPT = (
    "a graph is written only when it is complete, so nothing of this one is stored; a rerun "
    "builds it again (and replaces any stored copy)"
)


def configure(p: argparse.ArgumentParser) -> None:
    from saelab.circuits.graph_run import GraphConfig

    flags = add_fields(
        p, GraphConfig, skip=("targets",), required=("transcoders", "prompt"),
        helps={"transcoders": "transcoder folders (one per layer, any subset of layers) or a "
                              "sweep folder of them",
               "db": "the DuckDB results file that receives the graph"},
    )  # fmt: skip
    p.add_argument(
        "--target", dest="target_tokens", action="extend", nargs="+", metavar="TOKEN",
        help="an output token whose logit the graph explains, e.g. ' Paris' (repeatable; "
        "default: the top prediction)",
    )  # fmt: skip
    p.add_argument("--show", type=int, default=10, help="nodes and edges to print")
    p.set_defaults(flags=flags)


def run(args: argparse.Namespace) -> int:
    from saelab.api import graph
    from saelab.base.errors import UserError
    from saelab.circuits.graph_run import GraphConfig

    if args.show < 0:
        raise UserError(f"--show must be >= 0 (nodes and edges to print), got {args.show}")
    values = given(args, args.flags)
    if args.target_tokens:
        values["targets"] = list(args.target_tokens)
    cfg = GraphConfig(**values)
    result = graph(cfg, log=print)
    print(report(result, args.show))
    if result.stored:
        print(f"saelab graph: graph {result.graph_id} written to {cfg.db}")
    if cfg.html:
        print(f"saelab graph: HTML written to {cfg.html}")
    return 0


def report(result, show: int = 10) -> str:
    """The targets, the scores, and the most influential nodes and heaviest edges."""
    run, s = result.run, result.scores
    targets = ", ".join(
        f"{t!r} (p={p:.3f})" for t, p in zip(run.target_strs, run.target_probs, strict=True)
    )
    lines = [
        f"prompt {run.prompt!r}: {len(run.tokens)} tokens; targets {targets}",
        f"nodes: {run.n_nodes_total} in the graph, {run.n_nodes} kept; edges kept: {run.n_edges}",
        f"replacement score {s.replacement:.3f} (pruned {s.replacement_pruned:.3f}), "
        f"completeness {s.completeness:.3f} (pruned {s.completeness_pruned:.3f})",
    ]
    inner = [n for n in result.nodes if n.kind in ("latent", "error")]
    for n in sorted(inner, key=lambda n: -n.influence)[:show]:
        lines.append(f"  {n.node:20s} {n.kind:7s} influence {n.influence:.4f}")
    for e in sorted(result.edges, key=lambda e: -abs(e.weight))[:show]:
        lines.append(f"  {e.source:20s} -> {e.target:20s} {e.weight:+.4f}")
    return "\n".join(lines)
