"""The `saelab` command line: one subcommand per pipeline stage.

Each stage is `saelab/commands/<name>.py` with `HELP` (one line), `configure(parser)` (its flags,
mostly generated from its dataclass config by `commands.flags`) and `run(args)`, which builds the
same config the Python API takes. Command modules import nothing heavy at the top, and only the
chosen command's flags are built, so `saelab --help` starts at once.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from saelab.base import __version__
from saelab.base.errors import UserError

COMMANDS = [
    "hooks",
    "harvest",
    "train",
    "eval",
    "compare",
    "explain",
    "circuit",
    "shift",
    "graph",
    "steer",
    "llm-serve",
    "app",
    "demo",
]


def _module(name: str):
    return importlib.import_module(f"saelab.commands.{name.replace('-', '_')}")


# Library messages name config fields in backticks (`max_tokens`); the command line shows the
# flag that sets the field instead (--max-tokens), so the library never speaks in flags.
_FIELD = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def in_command_terms(message: str, command: argparse.ArgumentParser | None) -> str:
    """`message` with each backticked config field that `command` has a flag for as that flag:
    the flag of that name, else a flag shared by several configs, else one generated for it."""
    named, shared, generated = {}, {}, {}
    for action in command._actions if command else []:
        if not (action.option_strings and action.option_strings[0].startswith("--")):
            continue
        flag = action.option_strings[0]
        named.setdefault(action.dest, flag)
        fields = getattr(action, "fields", ())  # the config fields a generated flag sets
        for name in fields:
            (shared if action.dest.startswith("shared_") else generated).setdefault(name, flag)
    flags = {**generated, **shared, **named}
    return _FIELD.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what was wrong, and where the options are
    listed (argparse's own prints the whole usage first)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def top_parser() -> argparse.ArgumentParser:
    """`saelab` with the list of commands (each described by its one-line HELP)."""
    parser = Parser(
        prog="saelab",
        description="Sparse autoencoders on language-model activations.",
    )
    parser.add_argument("--version", action="version", version=f"saelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        sub.add_parser(name, help=_module(name).HELP, add_help=False)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The full parser of one command."""
    module = _module(name)
    parser = Parser(
        prog=f"saelab {name}",
        description=getattr(module, "DESCRIPTION", None) or module.HELP,
    )
    module.configure(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Every command's full parser under one (documentation and tests; `main` builds only the
    chosen command's)."""
    parser = top_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in COMMANDS:
        module = _module(name)
        module.configure(sub.choices[name])
        sub.choices[name].add_argument("-h", "--help", action="help")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] not in COMMANDS:
            top = top_parser()
            top.parse_args(argv)  # --help, --version, or an unknown command: argparse answers
            top.print_help()
            return 2
        name = argv[0]
        parser = command_parser(name)
        args = parser.parse_args(argv[1:])
    except SystemExit as done:  # --help (0) or a flag argparse refused (2, one line printed)
        return int(done.code or 0)
    except UserError as err:  # building the flags failed (a registry, a plugin)
        print(f"saelab {argv[0]}: error: {err}", file=sys.stderr)
        return 2
    module = _module(name)
    try:
        result = module.run(args)
    except UserError as err:
        print(f"saelab {name}: error: {in_command_terms(str(err), parser)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = getattr(module, "ON_INTERRUPT", "nothing was written")
        kept = kept(args) if callable(kept) else kept
        print(f"saelab {name}: interrupted ({kept})", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
