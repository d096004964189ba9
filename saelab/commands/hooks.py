"""`saelab hooks`: list a model's hook names (what --hooks accepts)."""

from __future__ import annotations

import argparse

HELP = "list the hook points of a model"
ON_INTERRUPT = "nothing was written"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="model spec (default smollm2-135m)")
    p.add_argument("--layer", type=int, help="only the hooks of this block")


def run(args: argparse.Namespace) -> int:
    from saelab.activations.models import load_model

    model = load_model(args.model)
    names = model.hook_names if args.layer is None else model.layer_hooks(args.layer)
    print("\n".join(names))
    return 0
