"""`saelab demo`: the whole pipeline on the embedded model and corpus, offline.

Today: harvest the default model on the builtin corpus. Later stages join as they land.
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from activations.harvest import HarvestConfig, harvest

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = str(out / "acts.zarr")
    cfg = HarvestConfig(out=store, hooks=[args.hook], tokens=args.tokens, resume=True)
    print(f"saelab demo: 1/1 harvest {cfg.tokens} tokens of {cfg.model} at {args.hook} -> {store}")
    result = harvest(cfg)
    print(
        f"saelab demo: harvest done ({result.tokens} new tokens, {result.tokens_per_second:.0f} tok/s)"
    )
    print(f"saelab demo: activation store ready at {store}")
    return 0
