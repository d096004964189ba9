"""Ground-truth recovery and dead latents of the second-wave architectures (Mutual Choice,
Feature Choice, Matching Pursuit) against TopK and BatchTopK on synthetic activations.

    OMP_NUM_THREADS=1 python benchmarks/second_wave.py --steps 400 --seeds 0 1 2

Data: `SyntheticActivations` (Zipf-like feature frequencies, unit-norm random directions,
non-negative magnitudes, small noise, an offset); d_sae = 2 × the true feature count and
k = the true mean number of active features. Every SAE of a seed trains in one sweep on the
same batches (one pass, `TrainConfig` defaults otherwise); `--width` changes the d_sae ratio
(at 2, the dictionary has room for every feature twice, so about half the latents have nothing
to learn and die in every architecture that can let latents die). Reported per architecture (mean
over seeds, and each seed): the recovery fraction (true directions whose best decoder row has
cosine > 0.9), the trainer's dead percentage at the end (latents that did not fire in
training for the dead window), the fraction of latents firing on none of the held-out rows
under the inference rule, the held-out mean L0 and FVU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from saelab.sae import TrainConfig, make_config, train
from saelab.sae.synthetic import SyntheticActivations, recovery_fraction

ARCHES = ("topk", "batchtopk", "mutual_choice", "mutual_choice_no_zipf", "feature_choice", "mp")


def configs(d_sae: int, k: int) -> list:
    out = []
    for name in ARCHES:
        arch, extra = name, {}
        if name == "mutual_choice_no_zipf":
            arch, extra = "mutual_choice", {"aux_zipf_coefficient": 0.0}
        out.append(make_config(arch, d_sae=d_sae, k=k, name=name, **extra))
    return out


@torch.no_grad()
def held_out(sae, rows: torch.Tensor) -> dict[str, float]:
    code = sae.encode_sparse(rows)
    x_hat = sae.decode_sparse(code)
    fired = code.fire_counts() > 0
    fvu = (x_hat - rows).pow(2).sum() / (rows - rows.mean(0)).pow(2).sum()
    return {
        "held_out_dead": float(1 - fired.float().mean()),
        "held_out_l0": float(code.l0().mean()),
        "held_out_fvu": float(fvu),
    }


def run(
    seed: int, steps: int, batch: int, d_in: int, n_features: int, active: int, width: float
) -> dict:
    torch.manual_seed(seed)
    data = SyntheticActivations(
        d_in=d_in, n_features=n_features, batch_size=batch, active=active, noise=0.01,
        seed=seed, offset=0.5, n_batches=steps,
    )  # fmt: skip
    test = torch.cat([data.batch(10_000 + i) for i in range(8)])
    with tempfile.TemporaryDirectory() as out:
        saes = train(
            configs(round(width * n_features), active), data,
            TrainConfig(tokens=batch * steps, progress=False, log_every=steps), out=out,
        )  # fmt: skip
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    last = {r["sae"]: r for r in rows}
    result = {}
    for name, sae in saes.items():
        result[name] = {
            "recovery": recovery_fraction(data.directions, sae.W_dec.detach()),
            "train_dead": last[name]["dead_pct"] / 100,
            **held_out(sae, test),
        }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--d-in", type=int, default=32)
    p.add_argument("--n-features", type=int, default=96)
    p.add_argument("--active", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--width", type=float, default=2.0, help="d_sae / the true feature count")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()
    torch.set_num_threads(1)
    per_seed = {
        s: run(s, args.steps, args.batch, args.d_in, args.n_features, args.active, args.width)
        for s in args.seeds
    }
    keys = ("recovery", "train_dead", "held_out_dead", "held_out_l0", "held_out_fvu")
    print("arch".ljust(24) + "".join(k.rjust(15) for k in keys))
    for name in ARCHES:
        means = [sum(per_seed[s][name][k] for s in args.seeds) / len(args.seeds) for k in keys]
        print(name.ljust(24) + "".join(f"{m:15.3f}" for m in means))
        for s in args.seeds:
            vals = "".join(f"{per_seed[s][name][k]:15.3f}" for k in keys)
            print(f"  seed {s}".ljust(24) + vals)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": per_seed}, indent=2))


if __name__ == "__main__":
    main()
