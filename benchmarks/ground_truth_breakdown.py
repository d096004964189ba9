"""Where a batch-wide selection loses true directions on the ground-truth data: recovery by
feature-frequency quarter (most to least frequent), and for Matryoshka by band (the share of
each band's latents that match a true direction at cosine > 0.9).

    python benchmarks/ground_truth_breakdown.py [--steps 600]

Same data as `ground_truth.py` (d_in 64, 256 true directions, k_true 8, seed 0), 2x spare
latents; TopK, BatchTopK and Matryoshka with their defaults. Writes
benchmarks/results/ground-truth-breakdown-<steps>.json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info  # noqa: E402
from saelab.sae import TrainConfig, make_config, train  # noqa: E402
from saelab.sae.synthetic import SyntheticActivations  # noqa: E402


def breakdown(sae, data: SyntheticActivations) -> dict:
    true = data.directions / data.directions.norm(dim=1, keepdim=True)
    W = sae.W_dec.detach()
    cos = true @ (W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)).t()  # [true, latent]
    best, where = cos.max(1)
    recovered = best > 0.9
    order = data.probs.argsort(descending=True)
    quarter = len(order) // 4
    out = {
        "recovery": float(recovered.float().mean()),
        "recovery_by_frequency_quarter": [
            round(float(recovered[order[i * quarter : (i + 1) * quarter]].float().mean()), 3)
            for i in range(4)
        ],
    }
    if hasattr(sae.cfg, "resolved_prefixes"):
        bounds = [0, *sae.cfg.resolved_prefixes()]
        per_latent = cos.max(0).values
        out["bands"] = [
            {
                "latents": f"{a}-{b}",
                "matched_fraction": round(float((per_latent[a:b] > 0.9).float().mean()), 3),
                "true_directions_recovered_here": int(
                    ((where >= a) & (where < b) & recovered).sum()
                ),
            }
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600)
    args = p.parse_args()
    torch.set_num_threads(2)
    noise = inspect.signature(SyntheticActivations.__init__).parameters["noise"].default
    data = SyntheticActivations(
        d_in=64, n_features=256, batch_size=1024, active=8, noise=noise, seed=0
    )
    configs = [
        make_config("topk", d_sae=512, k=8, seed=0, name="topk"),
        make_config("batchtopk", d_sae=512, k=8.0, seed=0, name="batchtopk"),
        make_config("matryoshka", d_sae=512, k=8.0, seed=0, name="matryoshka"),
    ]
    saes = train(configs, data, TrainConfig(tokens=1024 * args.steps, progress=False))
    result = {
        "benchmark": "ground_truth_breakdown",
        "machine": machine_info(),
        "config": {
            "d_in": 64,
            "n_true": 256,
            "k_true": 8,
            "d_sae": 512,
            "steps": args.steps,
            "batch": 1024,
            "noise": noise,
            "seed": 0,
        },
        "results": {name: breakdown(sae, data) for name, sae in saes.items()},
    }
    for name, r in result["results"].items():
        print(name, json.dumps(r))
    path = Path(__file__).parent / "results" / f"ground-truth-breakdown-{args.steps}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
