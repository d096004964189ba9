"""`saelab circuit`: find and evaluate a sparse feature circuit (see circuits/run.py)."""

from __future__ import annotations

import argparse
import math


def register(sub: argparse._SubParsersAction) -> None:
    from circuits.attribution import BASELINES, METHODS
    from circuits.evaluate import ABLATIONS, ERROR_POLICIES
    from circuits.tasks import BUILTIN_TASKS

    p = sub.add_parser("circuit", help="find a sparse feature circuit and evaluate it")
    p.add_argument(
        "--sae",
        nargs="+",
        required=True,
        metavar="DIR",
        help="SAE folders (one per hook) or a sweep folder of them",
    )
    p.add_argument(
        "--task",
        default="sva",
        metavar="TASK",
        help=f"{'|'.join(BUILTIN_TASKS)} or a JSONL file (clean, patch, correct, wrong)",
    )
    p.add_argument("--prompts", type=int, default=32, help="number of prompts (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="atp", choices=METHODS)
    p.add_argument("--steps", type=int, default=10, help="integrated-gradients steps")
    p.add_argument(
        "--baseline",
        choices=BASELINES,
        help="attribution patch values (default: patch prompts, else mean)",
    )
    p.add_argument("--summed", action="store_true", help="sum nodes over positions")
    p.add_argument("--node-threshold", type=float, default=0.1)
    p.add_argument("--edge-threshold", type=float, default=0.01)
    p.add_argument("--ablation", default="mean", choices=ABLATIONS)
    p.add_argument(
        "--errors",
        default="ablate",
        choices=ERROR_POLICIES,
        help="error nodes in evaluation: ablated unless kept, always kept, removed",
    )
    p.add_argument("--acts", help="activation store (means for mean ablation)")
    p.add_argument(
        "--check-edges",
        type=int,
        default=32,
        help="top edges measured by direct-path patching (0 skips)",
    )
    p.add_argument(
        "--curve-sizes",
        type=int,
        nargs="+",
        metavar="N",
        help="circuit sizes of the curves (default 0 1 2 5 10 20 50 ... all)",
    )
    p.add_argument("--db", help="DuckDB results file to write the circuit into")
    p.add_argument("--html", help="write the graph here (default: circuit.html beside --db)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--show", type=int, default=15, help="nodes and edges to print")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from circuits.run import CircuitConfig, run_circuit
    from saelab_base.errors import UserError

    html = args.html
    if html is None and args.db:
        html = str(Path(args.db).with_name("circuit.html"))
    cfg = CircuitConfig(
        sae=list(args.sae),
        task=args.task,
        n_prompts=args.prompts,
        seed=args.seed,
        method=args.method,
        steps=args.steps,
        baseline=args.baseline,
        per_position=not args.summed,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        ablation=args.ablation,
        error_policy=args.errors,
        acts=args.acts,
        check_edges=args.check_edges,
        db=args.db,
        html=html,
        model=args.model,
        device=args.device,
        progress=not args.no_progress,
    )
    try:
        result = run_circuit(cfg)
    except UserError as err:
        raise UserError(_with_flags(str(err))) from None
    print(report(result, args.show))
    if html:
        print(f"saelab circuit: graph written to {html}")
    if result.circuit_id:
        print(f"saelab circuit: circuit {result.circuit_id} written to {args.db}")
    return 0


def _with_flags(msg: str) -> str:
    """The library speaks of settings; the command line names its flags."""
    return msg.replace("give acts,", "pass --acts,").replace(
        "lower the threshold", "lower --node-threshold"
    )


def report(result, show: int = 15) -> str:
    lines = [
        f"task {result.task}: {result.n_prompts} prompts, clean accuracy "
        f"{result.clean_accuracy:.2f}, m(clean) {result.m_clean:.3f}"
        + ("" if result.m_patch is None else f", m(patch) {result.m_patch:.3f}"),
        f"nodes kept: {len(result.kept)} of {len(result.nodes)} "
        f"(|effect| >= {result.config.node_threshold:g})",
    ]
    for n in result.kept[:show]:
        lines.append(f"  {n.key.label():32s} effect {n.effect:+.4f}  act {n.activation:.3g}")
    lines.append(f"edges kept: {len(result.edges)} (|effect| >= {result.config.edge_threshold:g})")
    for e in sorted(result.edges, key=lambda e: -abs(e.effect))[:show]:
        lines.append(f"  {e.up.label():28s} -> {e.down.label():28s} {e.effect:+.4f}")
    c = result.curves
    lines.append(
        f"faithfulness {result.faithfulness:.3f}, completeness {result.completeness:.3f} "
        f"({c.ablation} ablation, error nodes: {c.error_policy}; m(M) {c.m_full:.3f}, "
        f"m(empty) {c.m_empty:.3f})"
    )
    lines.append("  n nodes  faithfulness  completeness")
    for p in c.points:
        lines.append(f"  {p.n_nodes:7d}  {p.faithfulness:12.3f}  {p.completeness:12.3f}")
    if result.edge_checks:
        corr = result.edge_correlation
        lines.append(
            f"edges checked: {len(result.edge_checks)}, correlation of attributed with measured "
            f"direct effects {corr:.3f}"
            if not math.isnan(corr)
            else "correlation undefined"
        )
    return "\n".join(lines)
