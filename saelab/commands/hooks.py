"""`saelab hooks`: list a model's hook names (what --hooks accepts)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hooks", help="list the hook points of a model")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, help="only the hooks of this block")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from activations.models import load_model

    model = load_model(args.model)
    names = model.hook_names if args.layer is None else model.layer_hooks(args.layer)
    print("\n".join(names))
    return 0
