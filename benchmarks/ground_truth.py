"""Ground-truth dictionary recovery of every registered architecture on synthetic data.

The data (`saelab.sae.synthetic.SyntheticActivations`): n_true unit-norm directions drawn
from a Gaussian in d_in dimensions; each row is sum_i a_i d_i over the features that fire
on it, plus Gaussian noise (std `noise` per dimension). Feature i fires independently with
probability p_i proportional to i^-0.5 (Zipf-like, like real features), scaled so that
sum_i p_i = k_true, the mean number of active features per row; a firing feature's
magnitude a_i is uniform on [0.5, 1.5]. Training batches are drawn from (seed, batch
index); the held-out rows for L0, FVU and dead latents come from indices no run reaches.

Every architecture of the registry (new ones join automatically) is trained at d_sae =
n_true (no spare latents) and at 2 n_true, in one sweep over the same batches, with its
sparsity set to the truth by `SPARSITY` (the TopK family: k = k_true; the threshold
architectures: target-L0 mode at k_true with a sparse start at k_true); everything else is
the architecture's defaults, and `variants` adds the common LR rule for an architecture
with a rule of its own and the settings in `VARIANTS`. The score is `recovery_fraction`:
the share of true directions whose best decoder row has cosine > 0.9.

    python benchmarks/ground_truth.py [--steps 600] [--d-in 64] [--n-true 256] [--k-true 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info  # noqa: E402
from saelab.sae import TrainConfig, make_config, train  # noqa: E402
from saelab.sae.config import SAEConfig  # noqa: E402
from saelab.sae.registry import architectures  # noqa: E402
from saelab.sae.synthetic import SyntheticActivations, recovery_fraction  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

SPARSITY: dict[str, Callable[[float], dict[str, Any]]] = {
    "topk": lambda k: {"k": round(k)},
    "batchtopk": lambda k: {"k": k},
    "matryoshka": lambda k: {"k": k},
    "relu": lambda k: {"target_l0": k, "init_l0": k},
    "jumprelu": lambda k: {"target_l0": k, "init_l0": k},
    "gated": lambda k: {"target_l0": k, "init_l0": k},
}
"""Per architecture, the config fields that put it at the true sparsity k_true. An
architecture missing here gets `k` if its config has one, else target-L0 mode if it has
`target_l0` (and `init_l0`), else its defaults (recorded as such in the result)."""


COMMON_LR = {"lr_base": SAEConfig.lr_base, "lr_min_width": SAEConfig.lr_min_width}
"""The LR rule of `SAEConfig` (2e-4 / sqrt(d_sae / 2^14), the OpenAI TopK rule), which the
threshold architectures use by default. An architecture with a rule of its own (the TopK
family: 16x that, floored at d_sae 2048) is also trained at this one: see `variants`."""


VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "matryoshka": {"topk selection": {"selection": "topk"}},
    "jumprelu": {
        "no revival": {"pre_act_coefficient": 0.0},
        "auxk 0.5, no pre-act": {"pre_act_coefficient": 0.0, "aux_coefficient": 0.5},
        "controller": {"target_l0_method": "controller"},
        "earlier defaults": {
            "lr_base": 2e-4,
            "bandwidth": 0.01,
            "pre_act_coefficient": 0.0,
            "target_l0_method": "controller",
        },
    },
}
"""Further settings an architecture is trained at besides its defaults (by variant name):
Matryoshka with per-row TopK selection separates its nested losses from BatchTopK's
batch-wide selection; JumpReLU without its revival (the pre-activation loss), with AuxK as
the revival instead, with the trainer's L0 controller in place of its quadratic target-L0
penalty, and at its defaults before 2026-12-07 (LR 2e-4, ε 0.01, no revival, controller)."""


def variants(arch: str) -> dict[str, dict[str, Any]]:
    """The settings to train `arch` at, by name: "default"; "common lr" where its LR rule
    differs from `COMMON_LR`; and its `VARIANTS`."""
    config = architectures()[arch].config_class
    own = {name: config.__dataclass_fields__[name].default for name in COMMON_LR}
    out: dict[str, dict[str, Any]] = {"default": {}}
    if own != COMMON_LR:
        out["common lr"] = COMMON_LR
    return {**out, **VARIANTS.get(arch, {})}


def sparsity_fields(arch: str, k_true: float) -> dict[str, Any]:
    if arch in SPARSITY:
        return SPARSITY[arch](k_true)
    fields = set(architectures()[arch].config_class.__dataclass_fields__)
    if "k" in fields:
        return {"k": k_true}
    if "target_l0" in fields:
        return {"target_l0": k_true, **({"init_l0": k_true} if "init_l0" in fields else {})}
    return {}


@torch.no_grad()
def held_out_stats(sae, rows: torch.Tensor) -> dict[str, float]:
    code = sae.encode_sparse(rows)
    x_hat = sae.decode_sparse(code)
    fvu = (x_hat - rows).pow(2).sum() / (rows - rows.mean(0)).pow(2).sum()
    return {
        "l0": float(code.l0().mean()),
        "fvu": float(fvu),
        "dead_fraction": float((code.fire_counts() == 0).float().mean()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    # The g-SAE selects with the LM loss gradient at its hook, which synthetic data has not.
    names = args.archs or [
        name for name, cls in architectures().items() if not getattr(cls, "needs_lm_grad", False)
    ]
    data = SyntheticActivations(
        d_in=args.d_in,
        n_features=args.n_true,
        batch_size=args.batch,
        active=args.k_true,
        noise=args.noise,
        seed=args.seed,
    )
    configs, rows = [], []
    for arch in names:
        for variant, variant_fields in variants(arch).items():
            for mult in args.widths:
                fields = {**sparsity_fields(arch, args.k_true), **variant_fields}
                fields.update(args.set.get(arch, {}))
                d_sae = int(round(mult * args.n_true))
                name = f"{arch}-x{mult:g}-{variant.replace(' ', '_')}"
                configs.append(make_config(arch, d_sae=d_sae, seed=args.seed, name=name, **fields))
                rows.append(
                    {
                        "architecture": arch,
                        "width": mult,
                        "d_sae": d_sae,
                        "variant": variant,
                        "fields": fields,
                    }
                )
    train_cfg = TrainConfig(tokens=args.batch * args.steps, progress=False)
    t0 = time.perf_counter()
    saes = train(configs, data, train_cfg)
    seconds = time.perf_counter() - t0
    held_out = torch.cat([data.batch(10**9 + i) for i in range(8)])
    for cfg, row in zip(configs, rows, strict=True):
        sae = saes[cfg.name]
        row["lr"] = cfg.lr
        row["recovery"] = recovery_fraction(data.directions, sae.W_dec.detach())
        row.update(held_out_stats(sae, held_out))
        print(
            f"{cfg.name:28s} recovery {row['recovery']:.3f}  L0 {row['l0']:.2f}  "
            f"FVU {row['fvu']:.4f}  dead {row['dead_fraction']:.3f}  lr {cfg.lr:.3g}",
            flush=True,
        )
    table = {
        arch: {
            f"x{r['width']:g} {r['variant']}": round(r["recovery"], 4)
            for r in rows
            if r["architecture"] == arch
        }
        for arch in names
    }
    return {
        "benchmark": "ground_truth",
        "machine": machine_info(),
        "config": {
            "data": {
                "generator": "saelab.sae.synthetic.SyntheticActivations",
                "d_in": args.d_in,
                "n_true": args.n_true,
                "k_true": args.k_true,
                "frequencies": "p_i ~ i^-0.5, sum p_i = k_true, independent",
                "magnitudes": "uniform [0.5, 1.5]",
                "directions": "Gaussian, unit norm",
                "noise_std": args.noise,
                "seed": args.seed,
            },
            "steps": args.steps,
            "batch": args.batch,
            "tokens": args.batch * args.steps,
            "widths": args.widths,
            "recovery_threshold": 0.9,
            "held_out_rows": held_out.shape[0],
            "train": train_cfg.to_dict(),
            "overrides": args.set,
        },
        "train_seconds": seconds,
        "recovery": table,
        "results": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--d-in", type=int, default=64)
    p.add_argument("--n-true", type=int, default=256)
    p.add_argument("--k-true", type=float, default=8.0)
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--archs", nargs="*", help="architectures (default: every registered one)")
    p.add_argument(
        "--set",
        type=json.loads,
        default={},
        help='per-architecture config overrides as JSON, e.g. \'{"topk": {"lr": 1e-3}}\'',
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "ground-truth-cpu.json")
    args = p.parse_args()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["recovery"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
