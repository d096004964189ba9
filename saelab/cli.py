"""The `saelab` command line: one subcommand per pipeline stage.

Each stage lives in `saelab/commands/<name>.py` and exposes `register(subparsers)`, which
adds its parser and sets `func` (called with the parsed namespace). Commands build the same
dataclass config that the Python API takes, so the two stay in step.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from saelab_base import __version__
from saelab_base.errors import UserError

COMMANDS = [
    "hooks",
    "harvest",
    "train",
    "eval",
    "compare",
    "explain",
    "circuit",
    "steer",
    "llm-serve",
    "app",
    "demo",
]


# Library messages name config fields in backticks (`max_tokens`); the command line shows the
# flag that sets the field instead (--max-tokens), so the library never speaks in flags.
_FIELD = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def in_command_terms(message: str, command: argparse.ArgumentParser | None) -> str:
    """`message` with each backticked config field that `command` has a flag for as that flag."""
    flags = {
        action.dest: action.option_strings[0]
        for action in (command._actions if command else [])
        if action.option_strings and action.option_strings[0].startswith("--")
    }
    return _FIELD.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


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
        command = _subcommand(parser, args.command)
        print(
            f"saelab {args.command}: error: {in_command_terms(str(err), command)}", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        print(
            f"saelab {args.command}: interrupted (finished work is kept; rerun the same command "
            "to continue, with --resume for harvest and train)",
            file=sys.stderr,
        )
        return 130
    return int(result or 0)


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


if __name__ == "__main__":
    sys.exit(main())
