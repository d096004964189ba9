"""Attribution graphs against the real model: does intervening on a graph node move the target
logit as the graph predicts?

    python -m benchmarks.graph_agreement --transcoders DIR... [--prompts P ...] [--nodes 60]

For each prompt: build the graph (every active latent's row), take the latents of largest
|total effect| on the top prediction, ablate each in the real model (nothing frozen: its
contribution a·W_dec subtracted at its layer's hook_mlp_out) and, separately, double it, and
compare the target logit's change with the graph's prediction (`circuits/graph_check.py`).
Prints and saves to `benchmarks/results/graph-agreement[-label].json`: Pearson correlation
(total and direct effect) and sign agreement, per prompt and pooled, with the graph's scores
and build time.

`--train-from STORE` first trains one small TopK transcoder per layer from an activation store
that holds `blocks.L.ln2.hook_normalized` and `blocks.L.hook_mlp_out` (a plain Adam loop over
the Transcoder's own training step; `saelab train --arch transcoder` does the same with the
full trainer) into the first `--transcoders` folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "The opposite of hot is",
    "One, two, three, four,",
    "The President of the United States lives in the White",
    "In the morning I drink a cup of",
]


def train_transcoders(store_url: str, folder: Path, d_sae: int, k: int, steps: int, layers=None):
    """One TopK transcoder per layer of the store, trained with Adam on its own step."""
    import numpy as np

    from saelab.activations.store import ActivationStore
    from saelab.sae.base import StepContext
    from saelab.sae.checkpoint import save_sae
    from saelab.sae.registry import build_sae, make_config

    store = ActivationStore(store_url)
    chunks = store.committed_chunks()
    found = sorted(int(h.split(".")[1]) for h in store.hooks if h.endswith("ln2.hook_normalized"))
    report = {}
    for layer in layers if layers is not None else found:
        xin, yin = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
        xs, ys = [], []
        for c in chunks:
            mask = torch.from_numpy(np.asarray(store.token_mask(c)))
            xs.append(store.read_acts(xin, c).float()[mask])
            ys.append(store.read_acts(yin, c).float()[mask])
        x, y = torch.cat(xs), torch.cat(ys)
        n_eval = len(x) // 10
        x_tr, y_tr, x_ev, y_ev = x[n_eval:], y[n_eval:], x[:n_eval], y[:n_eval]
        sx = float(x_tr.pow(2).sum(1).mean().rsqrt() * math.sqrt(x.shape[1]))
        sy = float(y_tr.pow(2).sum(1).mean().rsqrt() * math.sqrt(y.shape[1]))
        cfg = make_config(
            "transcoder", d_sae=d_sae, d_in=x.shape[1], d_out=y.shape[1], k=k, seed=layer,
            target_hook=yin, input_hook=xin,
        )  # fmt: skip
        tc = build_sae(cfg)
        g = torch.Generator().manual_seed(layer)
        with torch.no_grad():
            tc.b_dec.copy_((y_tr * sy).mean(0))
            probe = torch.randperm(len(x_tr), generator=g)[:2048]
            tc.init_encoder_scale_(x_tr[probe] * sx, y_tr[probe] * sy)
        opt = torch.optim.Adam(tc.parameters(), lr=8e-4)
        last_fired = torch.zeros(d_sae, dtype=torch.long)
        for step in range(steps):
            rows = torch.randint(len(x_tr), (512,), generator=g)
            dead = (step - last_fired) > 60
            out = tc.training_forward(
                x_tr[rows] * sx, StepContext(dead_mask=dead if step > 60 else None,
                                              target=y_tr[rows] * sy),
            )  # fmt: skip
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            with torch.no_grad():
                tc.W_dec.div_(tc.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8))
                fired = out.code.fire_counts() > 0
                last_fired[fired] = step
        tc.eval()
        with torch.no_grad():
            pred = tc(x_ev * sx) / sy
            fvu = float((y_ev - pred).pow(2).sum() / (y_ev - y_ev.mean(0)).pow(2).sum())
            fires = tc.encode_sparse(x_ev * sx).fire_counts()
        dead_frac = float((fires == 0).float().mean())
        save_sae(tc, folder / f"layer{layer:02d}", scale=sx, target_scale=sy,
                 meta={"hook_name": xin, "model_name": store.attrs.get("model", {}).get("name")
                       if isinstance(store.attrs.get("model"), dict) else None})  # fmt: skip
        report[layer] = {"fvu": fvu, "dead": dead_frac, "tokens": len(x_tr)}
        print(f"layer {layer}: FVU {fvu:.3f}, dead {dead_frac:.2%} ({len(x_tr)} tokens)")
    return report


def _name(factor: float, frozen: str) -> str:
    kind = {0.0: "ablate", 2.0: "double"}.get(factor, f"scale{factor:g}")
    return kind + ("" if frozen == "none" else f"-frozen-{frozen}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--transcoders", nargs="+", required=True)
    p.add_argument("--train-from", help="activation store to train the transcoders from first")
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--layers", help="train only these layers, e.g. 3-29 (default: every layer)")
    p.add_argument("--train-only", action="store_true", help="stop after training")
    p.add_argument("--prompts", nargs="+", default=PROMPTS)
    p.add_argument("--nodes", type=int, default=60, help="latents checked per prompt")
    p.add_argument("--label", default="")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    train_report = None
    if args.train_from:
        layers = None
        if args.layers:
            lo, _, hi = args.layers.partition("-")
            layers = range(int(lo), int(hi or lo) + 1)
        train_report = train_transcoders(
            args.train_from, Path(args.transcoders[0]), args.d_sae, args.k, args.steps, layers
        )
        if args.train_only:
            return

    from saelab.activations.models import load_model
    from saelab.circuits.graph_check import agreement
    from saelab.circuits.graph_run import GraphConfig, run_graph

    model = load_model("smollm2-135m")
    settings = [(f, frozen) for f in (0.0, 2.0, 0.9) for frozen in ("none", "attention")]
    rows, pooled = [], {s: ([], [], []) for s in settings}
    for prompt in args.prompts:
        cfg = GraphConfig(transcoders=args.transcoders, prompt=prompt, max_latents=0,
                          progress=False)  # fmt: skip
        res = run_graph(cfg, model=model)
        row = {
            "prompt": prompt, "tokens": len(res.run.tokens), "target": res.run.target_strs[0],
            "target_prob": res.run.target_probs[0], "seconds": res.seconds,
            "latents": res.graph.n_latents, "replacement": res.scores.replacement,
            "completeness": res.scores.completeness,
            "replacement_pruned": res.scores.replacement_pruned,
            "completeness_pruned": res.scores.completeness_pruned,
        }  # fmt: skip
        for factor, frozen in settings:
            agree = agreement(model, res.replacement, res.graph, args.nodes, factor,
                              freeze=frozen)  # fmt: skip
            name = _name(factor, frozen)
            row[name] = {
                "pearson": agree.pearson, "pearson_direct": agree.pearson_direct,
                "sign_agreement": agree.sign_agreement, "n": len(agree.checks),
                "checks": [vars(c) for c in agree.checks],
            }  # fmt: skip
            pooled[factor, frozen][0].extend(c.predicted for c in agree.checks)
            pooled[factor, frozen][1].extend(c.measured for c in agree.checks)
            pooled[factor, frozen][2].extend(c.layer for c in agree.checks)
            print(f"  {name}: pearson {agree.pearson:.3f} (direct only "
                  f"{agree.pearson_direct:.3f}), signs {agree.sign_agreement:.2f}")  # fmt: skip
        rows.append(row)
    from saelab.circuits.graph_check import _pearson

    summary = {}
    for (factor, frozen), (pred, real, layers) in pooled.items():
        x, y = torch.tensor(pred, dtype=torch.float64), torch.tensor(real, dtype=torch.float64)
        late = torch.tensor(layers) >= 15
        summary[_name(factor, frozen)] = {
            "n": len(pred), "pearson": _pearson(x, y),
            "sign_agreement": float(((x > 0) == (y > 0)).double().mean()),
            "pearson_layers_ge_15": _pearson(x[late], y[late]), "n_layers_ge_15": int(late.sum()),
        }  # fmt: skip
    print(json.dumps(summary, indent=1))
    out = (
        Path(__file__).parent
        / "results"
        / (f"graph-agreement{'-' + args.label if args.label else ''}.json")
    )
    out.write_text(json.dumps({"summary": summary, "prompts": rows, "training": train_report,
                               "torch_threads": torch.get_num_threads(),
                               "transcoders": args.transcoders}, indent=1))  # fmt: skip
    print(f"written to {out}")


if __name__ == "__main__":
    main()
