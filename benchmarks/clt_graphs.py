"""Attribution graphs with a cross-layer transcoder against per-layer transcoders at the same
layers: the replacement and completeness scores of the same prompts.

    python -m benchmarks.clt_graphs --clt CLT_DIR --per-layer TC_DIR... --others DIR \
        [--prompts P ...] [--label NAME]

`--others` holds per-layer transcoders (`layerNN` folders or a sweep folder) for every layer;
those of the CLT's layers are left out, so each configuration traces the same model with the
same dictionaries outside the CLT's range (without `--others` those layers are error nodes): (a) the CLT, (b) `--per-layer` (e.g. transcoders
trained on the CLT's store with the same width and k). Every graph uses `saelab graph`'s
defaults (budgets 200 nodes / 2000 edges; `--max-latents`, default 2048 as the command's). Prints and saves
`benchmarks/results/clt-graphs[-label].json`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "The opposite of hot is",
    "One, two, three, four,",
]


def other_folders(root: str, skip: set[int]) -> list[str]:
    """Per-layer transcoder folders under `root`, without those of the layers in `skip`."""
    from saelab.circuits.replacement import transcoder_layer
    from saelab.circuits.splice import sae_folders
    from saelab.sae.checkpoint import load_sae

    out = []
    for folder in sae_folders([root]):
        if transcoder_layer(load_sae(folder)) not in skip:
            out.append(str(folder))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clt", required=True)
    parser.add_argument("--per-layer", nargs="+", required=True)
    parser.add_argument("--others", help="omit: the other layers' MLPs are error nodes")
    parser.add_argument("--prompts", nargs="+", default=PROMPTS)
    parser.add_argument("--label", default="cpu")
    parser.add_argument("--max-latents", type=int, default=2048, help="0: every active latent")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from saelab.activations.models import load_model
    from saelab.circuits.graph_run import GraphConfig, run_graph
    from saelab.sae.checkpoint import load_sae

    model = load_model("smollm2-135m")
    layers = set(load_sae(args.clt).layers)
    others = other_folders(args.others, layers) if args.others else []
    configs = {"clt": [args.clt, *others], "per_layer": [*args.per_layer, *others]}
    rows = []
    for prompt in args.prompts:
        for name, folders in configs.items():
            t0 = time.perf_counter()
            res = run_graph(
                GraphConfig(transcoders=folders, prompt=prompt, max_latents=args.max_latents,
                            progress=False), model=model,
                log=lambda *_: None,
            )  # fmt: skip
            s = res.scores
            row = {
                "prompt": prompt, "config": name, "tokens": len(res.run.tokens),
                "active_latents": res.graph.n_active, "graph_latents": res.graph.n_latents,
                "replacement": s.replacement, "completeness": s.completeness,
                "replacement_pruned": s.replacement_pruned,
                "completeness_pruned": s.completeness_pruned,
                "error_norm_in_range": float(
                    res.replacement.errors[
                        torch.isin(res.replacement.nodes.error_layer, torch.tensor(sorted(layers)))
                    ].norm(dim=1).pow(2).sum().sqrt()
                ),
                "seconds": time.perf_counter() - t0,
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for name in configs:
        mine = [r for r in rows if r["config"] == name]
        summary[name] = {
            key: sum(r[key] for r in mine) / len(mine)
            for key in ("replacement", "completeness", "replacement_pruned",
                        "completeness_pruned", "error_norm_in_range")
        }  # fmt: skip
    print(json.dumps(summary, indent=1))
    out = Path(__file__).parent / "results" / f"clt-graphs-{args.label}.json"
    out.write_text(json.dumps({
        "clt": args.clt, "per_layer": args.per_layer, "others": args.others,
        "clt_layers": sorted(layers), "max_latents": args.max_latents, "rows": rows,
        "mean": summary,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
