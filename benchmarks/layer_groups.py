"""Layer groups (Group-SAE) on real activations: similarity, groups, per-layer quality, speed-up.

On a store holding the residual stream of every layer (harvest it with `saelab harvest --hooks
blocks.0.hook_resid_post ... blocks.29.hook_resid_post`):

1. the mean angular similarity of every pair of layers, and the contiguous groups (complete
   linkage) with their AMAD for each G;
2. one TopK SAE per layer (the baseline), `--tokens` training tokens each;
3. for each G: one SAE per group, two budgets. `paper`: each group SAE gets the token budget of
   one per-layer SAE (rows drawn from all its layers; the accounting behind the paper's
   speed-up, L/G SAEs' worth of compute); `equal`: each group SAE gets `--tokens` rows of
   every one of its layers (the same rows, hence about the same SAE compute, as the baseline);
4. each SAE evaluated per layer on that layer's held-out split: FVU and L0 (the core eval's
   definitions), and for `--loss-layers` the spliced CE increase (the loss eval's `delta_loss`).

Wall-clock: the training calls (loader included), summed over SAEs; the grouping is timed
apart. Single-threaded torch (`--threads`) on a shared machine: read ratios, not absolutes.

    python -m benchmarks.layer_groups --acts runs/all-layers.zarr [--groups 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info  # noqa: E402
from saelab.activations.loader import ActivationLoader  # noqa: E402
from saelab.activations.store import ActivationStore  # noqa: E402
from saelab.evaluation.core.reconstruction import reconstruction_stats  # noqa: E402
from saelab.sae import make_config  # noqa: E402
from saelab.sae.config import TrainConfig  # noqa: E402
from saelab.sae.layer_groups import (  # noqa: E402
    amad,
    angular_similarity_matrix,
    contiguous_groups,
    layer_index,
    read_layer_sample,
)
from saelab.sae.run import TrainRunConfig, run_training  # noqa: E402


def layer_hooks(store: ActivationStore, point: str) -> list[str]:
    hooks = [h for h in store.hooks if h.startswith("blocks.") and h.endswith("." + point)]
    return sorted(hooks, key=lambda h: layer_index(h)[0])


MASSIVE = 10.0
"""A token whose norm exceeds this multiple of its layer's median norm is a massive activation
(SmolLM2's middle layers have a few tokens at ~150x the median that hold most of the
variance of a small test split); `fvu_typical` leaves them out."""


def per_layer_quality(sae, acts: str, hook: str) -> dict[str, float]:
    """FVU and L0 on the hook's held-out split, all tokens and without massive activations."""
    loader = ActivationLoader(acts, hook, batch_size=10**9, split="test", drop_last=False)
    x = torch.cat(list(loader))
    norms = x.norm(dim=1)
    typical = x[norms <= MASSIVE * norms.median()]
    with torch.no_grad():
        m = reconstruction_stats(sae, x.split(4096)).metrics()
        t = reconstruction_stats(sae, typical.split(4096)).metrics()
    return {
        "fvu": m["fvu"],
        "fvu_typical": t["fvu"],
        "l0": m["l0"],
        "massive": len(x) - len(typical),
    }


def delta_loss(model, acts: str, sae, hook: str, sequences: int) -> float:
    import numpy as np

    from saelab.activations.loader import TEST_FRACTION, split_chunks
    from saelab.evaluation.loss.splice import loss_stats

    store = ActivationStore(acts)
    chunk = split_chunks(store.committed_chunks(), "test", TEST_FRACTION)[0]
    toks = torch.from_numpy(np.asarray(store.read_tokens(chunk))[:sequences]).long()
    mask = torch.from_numpy(store.token_mask(chunk)[:sequences])
    with torch.no_grad():
        return loss_stats(model.bridge, hook, lambda x: sae(x), toks, mask).metrics()["delta_loss"]


def train(args, saes, **where) -> tuple[dict, float]:
    cfg = TrainRunConfig(
        acts=args.acts, saes=saes, tokens=where.pop("tokens"), batch_size=args.batch_size,
        seed=0, train=TrainConfig(tokens=1, progress=False, log_every=10**9), **where,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = run_training(cfg)
    return result.saes, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--acts", required=True)
    p.add_argument("--point", default="hook_resid_post", help="hook point of every layer")
    p.add_argument("--groups", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--equal-groups", type=int, nargs="*", default=[3],
                   help="G values also trained at equal tokens per layer")  # fmt: skip
    p.add_argument("--d-sae", type=int, default=1152)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--tokens", type=int, default=32768, help="training tokens per layer")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--similarity-tokens", type=int, default=8192)
    p.add_argument("--loss-layers", type=int, nargs="*", default=[0, 5, 10, 15, 20, 25, 29])
    p.add_argument("--loss-sequences", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/layer-groups-cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    store = ActivationStore(args.acts)
    hooks = layer_hooks(store, args.point)
    sae_cfg = make_config("topk", d_sae=args.d_sae, k=args.k, seed=0)

    t0 = time.perf_counter()
    sample = read_layer_sample(args.acts, hooks, args.similarity_tokens)
    sim = angular_similarity_matrix(sample)
    grouping_s = time.perf_counter() - t0
    dist = 1 - sim
    groupings = {}
    for g in sorted(set(args.groups) | set(args.equal_groups)):
        idx = contiguous_groups(dist, g)
        groupings[g] = {"layers": idx, "amad": amad(dist, idx)}
        print(f"G={g}: {[f'{i[0]}-{i[-1]}' for i in idx]} AMAD {groupings[g]['amad']:.4f}")
    norms = sample.norm(dim=-1).mean(1).tolist()

    model = None
    if args.loss_layers:
        from saelab.activations.models import load_model

        model = load_model(store.attrs["model"])
    loss_hooks = [hooks[i] for i in args.loss_layers if i < len(hooks)]

    train(args, [sae_cfg], hook=hooks[0], tokens=args.batch_size)  # warm-up, not timed

    # 1. the baseline: one SAE per layer
    baseline = {"seconds": 0.0, "layers": {}}
    for hook in hooks:
        saes, sec = train(args, [sae_cfg], hook=hook, tokens=args.tokens)
        sae = next(iter(saes.values()))
        q = per_layer_quality(sae, args.acts, hook)
        if hook in loss_hooks:
            q["delta_loss"] = delta_loss(model, args.acts, sae, hook, args.loss_sequences)
        baseline["layers"][hook] = {**q, "seconds": sec}
        baseline["seconds"] += sec
        print(f"per-layer {hook}: {q} {sec:.1f}s", flush=True)

    for key in ("fvu", "fvu_typical"):
        baseline[f"mean_{key}"] = sum(q[key] for q in baseline["layers"].values()) / len(hooks)

    # 2. group SAEs at both budgets
    runs = {}
    budgets = [(g, "paper") for g in args.groups] + [(g, "equal") for g in args.equal_groups]
    for g, budget in budgets:
        layers = groupings[g]["layers"]
        run = {"groups": [], "layers": {}, "seconds": 0.0}
        for idx in layers:
            group = [hooks[i] for i in idx]
            tokens = args.tokens * (len(group) if budget == "equal" else 1)
            if len(group) == 1:
                saes, sec = train(args, [sae_cfg], hook=group[0], tokens=tokens)
            else:
                saes, sec = train(
                    args, [sae_cfg], hooks=group, layer_groups=1, group_tokens=1, tokens=tokens
                )  # one group: nothing to measure (group_tokens=1 reads one chunk per layer)
            sae = next(iter(saes.values()))
            run["groups"].append({"hooks": group, "tokens": tokens, "seconds": sec})
            run["seconds"] += sec
            for hook in group:
                q = per_layer_quality(sae, args.acts, hook)
                if hook in loss_hooks:
                    q["delta_loss"] = delta_loss(model, args.acts, sae, hook, args.loss_sequences)
                run["layers"][hook] = q
        run["speedup"] = baseline["seconds"] / run["seconds"]
        for key in ("fvu", "fvu_typical"):
            diff = [run["layers"][h][key] - baseline["layers"][h][key] for h in hooks]
            run[f"mean_{key}_increase"] = sum(diff) / len(diff)
            run[f"max_{key}_increase"] = max(diff)
            run[f"mean_{key}"] = sum(run["layers"][h][key] for h in hooks) / len(hooks)
        runs[f"G{g}-{budget}"] = run
        print(
            f"G={g} {budget}: {run['seconds']:.1f}s vs {baseline['seconds']:.1f}s per-layer "
            f"(x{run['speedup']:.2f}); typical-token FVU {run['mean_fvu_typical']:.4f} mean "
            f"(+{run['mean_fvu_typical_increase']:.4f}, max +{run['max_fvu_typical_increase']:.4f})",
            flush=True,
        )

    result = {
        "benchmark": "layer_groups",
        "machine": machine_info(),
        "config": {
            "acts": args.acts,
            "model": store.attrs.get("model"),
            "hooks": hooks,
            "store_tokens": store.committed_sequences() * store.seq_len,
            "arch": "topk",
            "d_sae": args.d_sae,
            "k": args.k,
            "tokens_per_layer": args.tokens,
            "batch_size": args.batch_size,
            "similarity_tokens": int(sample.shape[1]),
            "loss_layers": loss_hooks,
            "loss_sequences": args.loss_sequences,
            "threads": args.threads,
            "budgets": {
                "paper": "each group SAE trains on `tokens_per_layer` rows in all, drawn from "
                "its layers (the budget of one per-layer SAE)",
                "equal": "each group SAE trains on `tokens_per_layer` rows of each of its layers",
            },
        },
        "results": {
            "similarity": sim.tolist(),
            "adjacent_similarity": [float(sim[i, i + 1]) for i in range(len(hooks) - 1)],
            "mean_norm": norms,
            "grouping_seconds": grouping_s,
            "groupings": {str(g): v for g, v in groupings.items()},
            "per_layer": baseline,
            "groups": runs,
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
