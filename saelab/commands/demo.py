"""`saelab demo`: the whole pipeline on the embedded model and corpus, offline.

harvest → train a TopK SAE → evaluate it into the results database → compare → explain a
few latents through the embedded model served locally (a 135M model explains poorly; the
pipeline is the real one, and `--base-url`/`--llm` point it at a strong model). Each step is
the same command a user would type; rerunning the demo reuses a finished harvest.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the pipeline end to end on the embedded defaults")
    p.add_argument("--out", default="runs/demo", help="folder for the demo's outputs")
    p.add_argument(
        "--tokens", type=int, default=200_000, help="tokens to harvest (~2 min on 2 CPU cores)"
    )
    p.add_argument("--hook", default="blocks.8.hook_resid_post")
    p.add_argument("--d-sae", type=int, default=2304)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--explain", type=int, default=3, help="latents to explain (0 skips the step)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from activations.harvest import HarvestConfig, harvest
    from saelab.cli import main

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store, sae, db = str(out / "acts.zarr"), out / "sae-topk", out / "results.duckdb"

    _step(1, f"harvest {args.tokens} tokens of smollm2-135m at {args.hook} -> {store}")
    result = harvest(HarvestConfig(out=store, hooks=[args.hook], tokens=args.tokens, resume=True))
    print(f"saelab demo: harvest done ({result.tokens} new tokens)")

    _step(2, f"train a TopK SAE (d_sae {args.d_sae}, k {args.k}) -> {sae}")
    train = ["train", "--acts", store, "--hook", args.hook, "--arch", "topk", "--out", str(sae)]
    train += ["--d-sae", str(args.d_sae), "--k", str(args.k), "--batch-size", "1024"]
    if (sae / "training_state.pt").is_file():
        train.append("--resume")  # a rerun continues the finished run, which just reuses it
    _run(main, train)

    _step(3, f"evaluate it into {db}")
    _run(main, ["eval", "--sae", str(sae), "--acts", store, "--db", str(db)])

    _step(4, "compare")
    _run(main, ["compare", "--db", str(db)])

    if args.explain:
        _step(
            5, f"explain and score {args.explain} latents with the embedded model, served locally"
        )
        explain = ["explain", "--db", str(db), "--sae", "sae-topk", "--sample", str(args.explain)]
        explain += ["--explain-top", "6", "--score-windows", "4", "--simulation-windows", "1"]
        _run(main, explain)
    print(f"saelab demo: done. Store {store}, SAE {sae}, results {db}")
    return 0


def _step(n: int, text: str) -> None:
    print(f"\nsaelab demo: step {n}/5: {text}", flush=True)


def _run(main, argv: list[str]) -> None:
    code = main(argv)
    if code:
        raise SystemExit(code)
