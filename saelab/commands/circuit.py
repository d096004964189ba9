"""`saelab circuit`: find and evaluate a sparse feature circuit (see circuits/run.py)."""

from __future__ import annotations

import argparse
import math

from saelab.commands.flags import add_fields, given

HELP = "find a sparse feature circuit and evaluate it"
ON_INTERRUPT = (
    "a circuit is written only when it is complete, so nothing of this one is stored; a rerun "
    "finds it again (and replaces any stored copy)"
)


def configure(p: argparse.ArgumentParser) -> None:
    from saelab.circuits.attribution import BASELINES, METHODS
    from saelab.circuits.edges import EDGE_METHODS
    from saelab.circuits.evaluate import ABLATIONS, ERROR_POLICIES
    from saelab.circuits.run import CircuitConfig
    from saelab.circuits.splice import SELECTIONS
    from saelab.circuits.tasks import BUILTIN_TASKS

    flags = add_fields(
        p, CircuitConfig, required=("sae",),
        names={"n_prompts": "--prompts", "per_position": "--summed", "error_policy": "--errors"},
        choices={"method": METHODS, "baseline": BASELINES, "ablation": ABLATIONS,
                 "error_policy": ERROR_POLICIES, "edge_method": EDGE_METHODS,
                 "selection": SELECTIONS},
        helps={"sae": "SAE folders (one per hook) or a sweep folder of them",
               "task": f"{'|'.join(BUILTIN_TASKS)} or a JSONL file (clean, patch, correct, wrong)",
               "per_position": "sum nodes over positions (default: one node per position)",
               "html": "write the graph here (default: circuit.html beside --db)"},
    )  # fmt: skip
    p.add_argument("--show", type=int, default=15, help="nodes and edges to print")
    p.set_defaults(flags=flags)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from saelab.base.errors import UserError
    from saelab.circuits.run import CircuitConfig, run_circuit

    if args.show < 0:
        raise UserError(f"--show must be >= 0 (nodes and edges to print), got {args.show}")
    values = given(args, args.flags)
    if values.get("html") is None and values.get("db"):
        values["html"] = str(Path(values["db"]).with_name("circuit.html"))
    cfg = CircuitConfig(**values)
    result = run_circuit(cfg)
    print(report(result, args.show))
    if cfg.html:
        print(f"saelab circuit: graph written to {cfg.html}")
    if result.circuit_id:
        print(f"saelab circuit: circuit {result.circuit_id} written to {cfg.db}")
    return 0


def report(result, show: int = 15) -> str:
    from saelab.circuits.evaluate import pearson

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
        f"({c.ablation} ablation, error nodes: {c.error_policy}, selection "
        f"{result.config.selection}; m(M) {c.m_full:.3f}, m(empty) {c.m_empty:.3f})"
    )
    lines.append("  n nodes  faithfulness  completeness")
    for p in c.points:
        size = f"all {p.n_nodes}" if p.everything else str(p.n_nodes)
        lines.append(f"  {size:>7s}  {p.faithfulness:12.3f}  {p.completeness:12.3f}")
    if result.node_checks:
        att = [n.attributed for n in result.node_checks]
        ex = [n.exact for n in result.node_checks]
        lines.append(
            f"nodes re-scored by exact patching: {len(ex)}; {result.config.method} against exact: "
            f"correlation {pearson(att, ex):.3f}, sum of |effect| {sum(map(abs, att)):.3f} vs "
            f"{sum(map(abs, ex)):.3f}"
        )
    if result.edge_checks:
        corr = result.edge_correlation
        counts = [c.switched for c in result.edge_checks if c.switched is not None]
        switched = (
            f" (latents re-selection would switch on: {sum(counts) / len(counts):.2f} per edge "
            "and prompt)"
            if counts
            else ""
        )
        lines.append(
            f"edges checked: {len(result.edge_checks)}, correlation of attributed with measured "
            f"direct effects {corr:.3f}{switched}"
            if not math.isnan(corr)
            else f"edges checked: {len(result.edge_checks)}, correlation undefined"
        )
    size, best = result.best_faithfulness(50)
    every = (
        f"faithfulness with every node kept {result.faithfulness_all:.3f}"
        if not math.isnan(result.faithfulness_all)
        else "faithfulness with every node kept: none (error nodes removed)"
    )
    lines.append(f"{every}; best circuit of at most 50 nodes: {best:.3f} at {size} nodes")
    return "\n".join(lines)
