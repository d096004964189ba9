"""`saelab eval`: evaluate an SAE (or a sweep folder) into the DuckDB results store."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from evaluation.registry import default_evals, eval_names

    p = sub.add_parser("eval", help="evaluate SAEs into the results database")
    p.add_argument("--sae", required=True, help="an SAE folder or a sweep folder of them")
    p.add_argument("--acts", required=True, help="the activation store")
    p.add_argument("--db", required=True, help="the DuckDB results file")
    p.add_argument(
        "--evals",
        nargs="+",
        default=default_evals(),
        choices=eval_names(),
        metavar="EVAL",
        help=f"any of {', '.join(eval_names())} (default: {' '.join(default_evals())})",
    )
    p.add_argument("--hook", help="hook to read (default: the SAE's)")
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "train", "all"],
        help="tokens for core metrics and loss",
    )
    p.add_argument("--max-tokens", type=int, help="cap on core-metric tokens")
    p.add_argument("--loss-sequences", type=int, default=32)
    p.add_argument(
        "--probe-column",
        default="source",
        help="label column of the store's corpus for the probing eval (harvest any labelled "
        "dataset or file, then probe its column)",
    )
    p.add_argument("--probe-positive", help="positive class of that column (one vs rest)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from evaluation.runner import EvalConfig, evaluate

    cfg = EvalConfig(
        sae=args.sae,
        acts=args.acts,
        db=args.db,
        evals=list(args.evals),
        hook=args.hook,
        split=args.split,
        max_tokens=args.max_tokens,
        loss_sequences=args.loss_sequences,
        probe_column=args.probe_column,
        probe_positive=args.probe_positive,
        device=args.device,
    )
    out = evaluate(cfg)
    print(f"saelab eval: {len(out)} SAE(s) evaluated into {args.db}")
    return 0
