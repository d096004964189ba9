"""JumpReLU's target-L0 mode on real activations: the trajectory of L0, dead latents and the
controller's sparsity scale, for the defaults and for settings that add a revival.

    python benchmarks/jumprelu_target_l0.py --store runs/bench-variants/acts.zarr

The variant benchmark's JumpReLU (target L0 32, d_sae 4608, 2M tokens, defaults) ended at L0 13.8 with 28% of its latents dead: the controller overshoots
(L0 ~100 at step 70, then the coefficient rises ~90x), L0 collapses, latents fall below
θ − ε/2 where no gradient reaches them, and lowering the coefficient to ~0 brings them back
no more. This trains the same width, target
and number of steps (489) at a quarter of the batch (1024 rows) on the same store and layer,
all settings in one sweep on the same batches. `--from-run FOLDER` only summarises a finished
run of this script. Writes benchmarks/results/jumprelu-target-l0-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "lrx4_eps0.05": {"lr_base": 8e-4, "bandwidth": 0.05},
    "lrx4_eps0.05_preact_0.05": {"lr_base": 8e-4, "bandwidth": 0.05, "pre_act_coefficient": 0.05},
    "gain_0.01": {"target_l0_gain": 0.01},
}
"""The settings compared, by SAE name: JumpReLU's defaults; 4x the LR and a wider ε (θ moves
faster); that plus the pre-activation loss (the revival); a slower controller."""


def summarise(folder: Path, names: list[str], every: int = 60) -> dict[str, Any]:
    """Per setting, the final L0 / FVU / dead % / sparsity scale and the trajectory every
    `every` steps, from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    out = {}
    for setting in names:
        mine = [r for r in rows if r.get("sae") == setting]
        keys = ("step", "l0", "fvu", "dead_pct", "sparsity_scale")
        trajectory = [{k: r.get(k) for k in keys} for r in mine if r["step"] % every == 10]
        out[setting] = {"final": {k: mine[-1].get(k) for k in keys}, "trajectory": trajectory}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="runs/bench-variants/acts.zarr")
    p.add_argument("--hook", default="blocks.8.hook_resid_post")
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--target-l0", type=float, default=32.0)
    p.add_argument("--steps", type=int, default=489)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--out", default="runs/jumprelu-target-l0", help="the sweep's folder")
    p.add_argument("--from-run", help="summarise this finished run instead of training")
    p.add_argument("--result", type=Path)
    args = p.parse_args()
    from benchmarks.machine import machine_info

    folder = Path(args.from_run or args.out)
    if not args.from_run:
        from saelab.activations.loader import ActivationLoader
        from saelab.sae import TrainConfig, make_config, train

        configs = [
            make_config(
                "jumprelu",
                d_sae=args.d_sae,
                target_l0=args.target_l0,
                init_l0=args.target_l0,
                seed=0,
                name=s,
                **v,
            )  # fmt: skip
            for s, v in SETTINGS.items()
        ]
        loader = ActivationLoader(args.store, args.hook, batch_size=args.batch, seed=0)
        train_cfg = TrainConfig(tokens=args.steps * args.batch, progress=True, log_every=10)
        train(configs, loader, train_cfg, out=str(folder))
    result = {
        "benchmark": "jumprelu_target_l0",
        "machine": machine_info(),
        "command": " ".join(["python", *sys.argv]),
        "config": {k: v for k, v in vars(args).items() if k != "result"},
        "settings": SETTINGS,
        "results": summarise(folder, list(SETTINGS)),
    }
    path = args.result or Path(__file__).parent / "results" / "jumprelu-target-l0-cpu.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for s, r in result["results"].items():
        f = r["final"]
        print(f"{s:32s} L0 {f['l0']:.1f}  FVU {f['fvu']:.3f}  dead {f['dead_pct']:.1f}%")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
