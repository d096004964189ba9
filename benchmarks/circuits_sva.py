"""The SFC paper's subject-verb agreement result on the embedded model: for each SVA variant
(simple, within-RC, across-RC, across-PP), a circuit found on one set of prompts and evaluated
on held-out prompts (another seed), over SAE features and over neurons (the model's own basis
at the same hooks, the paper's baseline).

    python -m benchmarks.circuits_sva --sae L4 L6 L8 [--prompts 32] [--name demo-2304]

Nodes are ranked by AtP on the found-on prompts and the top 64 re-scored by exact patching
(`saelab circuit`'s defaults); the curves use the task-mean ablation of the held-out prompts,
the frozen selection and error nodes as nodes. Writes benchmarks/results/circuits-sva-<name>.json
and prints the markdown table docs/circuits.md holds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TASKS = {
    "sva": "simple",
    "sva-within-rc": "within RC",
    "sva-rc": "across RC",
    "sva-pp": "across PP",
}
SIZES = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500]


def ranked_nodes(spliced, task, exact_nodes: int = 64):
    from saelab.circuits.attribution import LogitDiff, attribute, patch_sides
    from saelab.circuits.exact import exact_node_effects
    from saelab.circuits.nodes import aggregate

    metric = LogitDiff(task.correct, task.wrong)
    sides = patch_sides(spliced, task.patch, "patch")
    effects, _ = attribute(spliced, task.clean, metric, sides, "atp")
    nodes = aggregate(effects, per_position=True)
    _, states, _ = spliced.run_spliced(task.clean)
    top = nodes[:exact_nodes]
    exact = exact_node_effects(spliced, task.clean, metric, states, sides, [n.key for n in top])
    for n, v in zip(top, exact.mean(1).tolist()):
        n.effect = v
    nodes.sort(key=lambda n: -abs(n.effect))
    return nodes


def held_out_curves(spliced, task, nodes):
    from saelab.circuits.attribution import LogitDiff
    from saelab.circuits.evaluate import curves, make_ablation

    metric = LogitDiff(task.correct, task.wrong)
    abl = make_ablation("task-mean", spliced, task.clean, patch=task.patch)
    _, states, _ = spliced.run_spliced(task.clean)
    sizes = [s for s in SIZES if s <= len(nodes)]
    with spliced.frozen_at(states):
        return curves(spliced, task.clean, metric, nodes, abl, "ablate", sizes)


def main(argv: list[str] | None = None) -> None:
    import torch

    from benchmarks.machine import machine_info
    from saelab.activations.corpus import bos_token_id
    from saelab.activations.models import load_model
    from saelab.circuits.neurons import neuron_spliced
    from saelab.circuits.splice import load_spliced
    from saelab.circuits.tasks import load_task

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sae", nargs="+", required=True)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--name", default="demo")
    args = p.parse_args(argv)
    model = load_model("smollm2-135m")
    dictionaries = {"features": load_spliced(model, args.sae)}
    dictionaries["neurons"] = neuron_spliced(model, dictionaries["features"].hooks)
    bos = bos_token_id(model.tokenizer)
    rows = []
    for name, label in TASKS.items():
        found = load_task(name, model.tokenizer, bos, args.prompts, seed=0)
        held = load_task(name, model.tokenizer, bos, args.prompts, seed=1)
        for kind, spliced in dictionaries.items():
            start = time.perf_counter()
            nodes = ranked_nodes(spliced, found)
            c = held_out_curves(spliced, held, nodes)
            rows.append({
                "task": name, "variant": label, "dictionary": kind, "n_listed": len(nodes),
                "m_full": c.m_full, "m_empty": c.m_empty, "seconds": time.perf_counter() - start,
                "points": [{"n": pt.n_nodes, "everything": pt.everything, "faithfulness": pt.faithfulness,
                            "completeness": pt.completeness} for pt in c.points],
            })  # fmt: skip
            print(f"{label:10s} {kind:8s} " + " ".join(
                f"{'all' if pt.everything else pt.n_nodes}:{pt.faithfulness:.2f}/{pt.completeness:.2f}"
                for pt in c.points), flush=True)  # fmt: skip
    result = {
        "benchmark": "circuits_sva",
        "command": "python -m benchmarks.circuits_sva " + " ".join(argv or __import__("sys").argv[1:]),
        "machine": machine_info(),
        "config": {**vars(args), "hooks": dictionaries["features"].hooks, "sizes": SIZES,
                   "ablation": "task-mean (held-out patch prompts)", "selection": "frozen",
                   "errors": "ablate", "found_on_seed": 0, "held_out_seed": 1,
                   "torch_threads": torch.get_num_threads()},
        "rows": rows,
    }  # fmt: skip
    path = Path(__file__).parent / "results" / f"circuits-sva-{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"written {path}")


def table(rows: list[dict]) -> str:
    sizes = [s for s in (5, 10, 20, 50, 100, 500)]
    head = "| variant | dictionary | " + " | ".join(f"F/C @ {s}" for s in sizes) + " | F all |"
    lines = [head, "|" + " --- |" * (len(sizes) + 3)]
    for r in rows:
        pts = {pt["n"]: pt for pt in r["points"] if not pt["everything"]}
        every = next(pt for pt in r["points"] if pt["everything"])
        cells = [
            f"{pts[s]['faithfulness']:.2f} / {pts[s]['completeness']:.2f}" if s in pts else "—"
            for s in sizes
        ]
        lines.append(
            f"| {r['variant']} | {r['dictionary']} | "
            + " | ".join(cells)
            + f" | {every['faithfulness']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
