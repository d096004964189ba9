"""JumpReLU's target-L0 mode on real activations: the trajectory of L0, FVU, dead latents and
the controller's sparsity scale, the L0 controller against the quadratic penalty.

    python benchmarks/jumprelu_target_l0.py --store runs/bench-variants/acts.zarr --target-l0 16

The variant benchmark's JumpReLU with the controller (2M tokens, d_sae 4608) missed its targets
(7.6 / 13.8 / 27.8 for 16 / 32 / 64 at the old defaults; 23.2 / 34.0 / 81.4 with the revival):
L0 overshoots early, the coefficient rises 50-90x, L0 collapses, and the integral winds down
slowly. This trains the same width and number of steps (489) at a quarter of the batch (1024
rows) on the same store and layer, all settings in one sweep on the same batches.
`--from-run FOLDER` only summarises a finished run of this script. Writes
benchmarks/results/jumprelu-target-l0-t<target>-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS: dict[str, dict[str, Any]] = {
    "controller": {"target_l0_method": "controller"},
    "controller_gain_0.01": {"target_l0_method": "controller", "target_l0_gain": 0.01},
    "penalty": {},
    "penalty_x10": {"target_l0_coefficient": 10.0},
}
"""The settings compared, by SAE name, all at JumpReLU's defaults (LR ×4, ε 0.05, the
pre-activation loss 0.05) otherwise: the trainer's L0 controller (the target-L0 mode before
2026-12-07), that with a slower integral, and the quadratic penalty (the default) at λ 1 and
10. benchmarks/results/jumprelu-target-l0-cpu.json is the earlier comparison at target 32
(the old defaults, LR ×4 and ε 0.05, the revival, a slower controller), run before the
penalty was the default; its `settings` record what each name meant then."""


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
    name = f"jumprelu-target-l0-t{args.target_l0:g}-cpu.json"
    path = args.result or Path(__file__).parent / "results" / name
    path.write_text(json.dumps(result, indent=2) + "\n")
    for s, r in result["results"].items():
        f = r["final"]
        print(f"{s:32s} L0 {f['l0']:.1f}  FVU {f['fvu']:.3f}  dead {f['dead_pct']:.1f}%")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
