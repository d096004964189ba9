"""The `saelab` command line: one subcommand per pipeline stage.

Each stage lives in `saelab/commands/<name>.py` and exposes `register(subparsers)`, which
adds its parser and sets `func` (called with the parsed namespace). Commands build the same
dataclass config that the Python API takes, so the two stay in step.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from saelab_base import __version__
from saelab_base.errors import UserError

COMMANDS = ["hooks", "harvest", "train", "eval", "compare", "explain", "llm-serve", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saelab",
        description="Sparse autoencoders on language-model activations.",
    )
    parser.add_argument("--version", action="version", version=f"saelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"saelab.commands.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UserError as err:
        print(f"saelab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"saelab {args.command}: interrupted (finished work is kept; rerun the same command "
            "to continue, with --resume for harvest and train)",
            file=sys.stderr,
        )
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
