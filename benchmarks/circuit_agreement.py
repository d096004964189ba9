"""How far each attribution method is from exact patching, for nodes and edges, on one set of
spliced SAEs and one task (the reference: `saelab.circuits.exact` for nodes, the edge check's
direct-path measurement for edges).

    python -m benchmarks.circuit_agreement --sae L4 L6 L8 [--task sva] [--prompts 32]
        [--nodes 40] [--edge-nodes 12] [--name demo-2304]

Nodes: the top `--nodes` of the AtP ranking plus as many drawn at random from the rest of the
listed nodes, each scored by AtP, by integrated gradients with every node of a hook moved
together (the SFC paper's IG, 10 steps) and by integrated gradients moving the node alone
(10 steps), against exact single-node patching. Edges: every candidate edge among the top
`--edge-nodes` nodes by exact effect, scored by AtP and by saelab's IG edges (2, 5 and 10
steps), against the measured direct effect; once with the frozen selection (the default) in
both attribution and measurement, once with re-selection in both, and once the way saelab
worked before issue 24 (AtP against a re-selecting measurement). Writes
benchmarks/results/circuit-agreement-<name>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path


def _stats(approx: list[float], exact: list[float]) -> dict:
    import torch

    from saelab.circuits.evaluate import pearson

    a = torch.tensor(approx, dtype=torch.float64)
    e = torch.tensor(exact, dtype=torch.float64)
    err = (a - e).abs()
    rank = lambda t: t.argsort().argsort().double()  # noqa: E731
    return {
        "n": len(exact),
        "pearson": pearson(approx, exact),
        "spearman": pearson(rank(a).tolist(), rank(e).tolist()),
        "mean_abs_error": float(err.mean()),
        "max_abs_error": float(err.max()),
        "sign_agreement": float(((a > 0) == (e > 0)).double().mean()),
        "sum_abs_ratio": float(a.abs().sum() / e.abs().sum()) if e.abs().sum() > 0 else math.nan,
    }


def node_agreement(spliced, task, metric, sides, states, n_top: int, seed: int) -> dict:

    from saelab.circuits.attribution import attribute, path_gradient
    from saelab.circuits.exact import exact_node_effects, key_delta
    from saelab.circuits.nodes import aggregate

    out: dict = {"seconds": {}}
    scores = {}
    for method in ("atp", "ig"):
        start = time.perf_counter()
        effects, _ = attribute(spliced, task.clean, metric, sides, method, steps=10)
        scores[method] = {n.key: n.effect for n in aggregate(effects, per_position=True)}
        out["seconds"][method] = time.perf_counter() - start
    ranked = sorted(scores["atp"], key=lambda k: -abs(scores["atp"][k]))
    rest = ranked[n_top:]
    keys = ranked[:n_top] + random.Random(seed).sample(rest, min(n_top, len(rest)))
    start = time.perf_counter()
    exact = exact_node_effects(spliced, task.clean, metric, states, sides, keys).mean(1).tolist()
    out["seconds"]["exact"] = time.perf_counter() - start
    start = time.perf_counter()
    alone = []
    B = task.clean.shape[0]
    for key in keys:
        delta = key_delta(spliced, key, states, sides)
        grad = path_gradient(spliced, task.clean, metric, key.hook, delta, 10)
        alone.append(float((grad * delta).sum() / B))
    out["seconds"]["ig_alone"] = time.perf_counter() - start
    methods = {"atp": [scores["atp"][k] for k in keys], "ig_joint": [scores["ig"].get(k, 0.0) for k in keys],
               "ig_alone": alone}  # fmt: skip
    out["methods"] = {m: _stats(v, exact) for m, v in methods.items()}
    out["top"] = [
        {"node": k.label(), "exact": exact[i], **{m: v[i] for m, v in methods.items()}}
        for i, k in enumerate(keys[:n_top])
    ]
    out["nodes"] = [k.label() for k in keys]
    return out


def edge_agreement(spliced, task, metric, sides, kept) -> dict:
    from saelab.circuits.edges import edge_effects, ig_edge_effects
    from saelab.circuits.evaluate import measure_edges

    out: dict = {}
    for policy in ("frozen", "reselect"):
        spliced.selection = policy
        logits, gstates, _ = spliced.run_spliced(task.clean, grads=True)
        values = metric(logits, {})
        import torch

        outs = [gstates[h].out for h in spliced.hooks]
        grads = dict(zip(spliced.hooks, torch.autograd.grad(values.sum(), outs)))
        _, states, _ = spliced.run_spliced(task.clean)
        res: dict = {"seconds": {}}
        with spliced.frozen_at(states):
            start = time.perf_counter()
            atp = edge_effects(spliced, task.clean, gstates, grads, sides, kept)
            res["seconds"]["atp"] = time.perf_counter() - start
            igs = {}
            for steps in (2, 5, 10):
                start = time.perf_counter()
                igs[steps] = ig_edge_effects(
                    spliced, task.clean, metric, states, sides, kept, steps
                )
                res["seconds"][f"ig{steps}"] = time.perf_counter() - start
            start = time.perf_counter()
            checks = measure_edges(spliced, task.clean, metric, states, sides, igs[10])
            res["seconds"]["measured"] = time.perf_counter() - start
        measured = {(c.edge.up, c.edge.down): c.measured for c in checks}
        keys = list(measured)
        exact = [measured[k] for k in keys]
        atp_map = {(e.up, e.down): e.effect for e in atp}
        res["methods"] = {"atp": _stats([atp_map.get(k, 0.0) for k in keys], exact)}
        for steps, edges in igs.items():
            m = {(e.up, e.down): e.effect for e in edges}
            res["methods"][f"ig{steps}"] = _stats([m.get(k, 0.0) for k in keys], exact)
        res["switched_per_prompt"] = sum(c.switched for c in checks) / max(1, len(checks))
        res["edges"] = [
            {"up": k[0].label(), "down": k[1].label(), "measured": measured[k],
             "atp": atp_map.get(k, 0.0), "ig10": {(e.up, e.down): e.effect for e in igs[10]}.get(k),
             "switched": c.switched}
            for k, c in zip(keys, checks)
        ]  # fmt: skip
        out[policy] = res
        if policy == "reselect":  # before issue 24: AtP edges against a re-selecting measurement
            out["before_issue_24"] = {"atp_vs_reselect_measured": res["methods"]["atp"]}
    spliced.selection = "frozen"
    return out


def main(argv: list[str] | None = None) -> None:
    import torch

    from benchmarks.machine import machine_info
    from saelab.activations.corpus import bos_token_id
    from saelab.activations.models import load_model
    from saelab.circuits.attribution import LogitDiff, patch_sides
    from saelab.circuits.exact import exact_node_effects
    from saelab.circuits.nodes import Node
    from saelab.circuits.splice import load_spliced
    from saelab.circuits.tasks import load_task

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sae", nargs="+", required=True)
    p.add_argument("--task", default="sva")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--nodes", type=int, default=40)
    p.add_argument("--edge-nodes", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="demo")
    args = p.parse_args(argv)
    model = load_model("smollm2-135m")
    spliced = load_spliced(model, args.sae)
    task = load_task(
        args.task, model.tokenizer, bos_token_id(model.tokenizer), args.prompts, args.seed
    )
    metric = LogitDiff(task.correct, task.wrong)
    sides = patch_sides(spliced, task.patch, "patch")
    _, states, _ = spliced.run_spliced(task.clean)
    nodes = node_agreement(spliced, task, metric, sides, states, args.nodes, args.seed)
    # edges among the nodes that matter most by exact effect
    top = sorted(nodes["top"], key=lambda r: -abs(r["exact"]))[: args.edge_nodes]
    by_label = {}
    from saelab.circuits.attribution import attribute
    from saelab.circuits.nodes import aggregate

    effects, _ = attribute(spliced, task.clean, metric, sides, "atp")
    for n in aggregate(effects, per_position=True):
        by_label[n.key.label()] = n.key
    kept_keys = [by_label[r["node"]] for r in top]
    exact = exact_node_effects(spliced, task.clean, metric, states, sides, kept_keys).mean(1)
    kept = [Node(k, float(v), 0.0) for k, v in zip(kept_keys, exact)]
    edges = edge_agreement(spliced, task, metric, sides, kept)
    result = {
        "benchmark": "circuit_agreement",
        "command": "python -m benchmarks.circuit_agreement " + " ".join(argv or __import__("sys").argv[1:]),
        "machine": machine_info(),
        "config": {**vars(args), "d_sae": [s.d_sae for s in spliced.saes.values()],
                   "hooks": spliced.hooks, "torch_threads": torch.get_num_threads()},
        "nodes": nodes,
        "edges": edges,
    }  # fmt: skip
    path = Path(__file__).parent / "results" / f"circuit-agreement-{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"nodes": nodes["methods"], "edges": {p: r["methods"] for p, r in edges.items() if "methods" in r},
                      "before": edges["before_issue_24"]}, indent=1))  # fmt: skip
    print(f"written {path}")


if __name__ == "__main__":
    main()
