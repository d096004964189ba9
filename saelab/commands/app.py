"""`saelab app`: the web app (Streamlit) over one results file, bound to localhost."""

from __future__ import annotations

import argparse

from saelab.commands.flags import add_fields, given

HELP = "browse a results database in the web app"
ON_INTERRUPT = "stopped"


def configure(p: argparse.ArgumentParser) -> None:
    from saelab.app.server import AppConfig

    flags = add_fields(
        p, AppConfig, required=("db",),
        helps={"db": "the results file (DuckDB), opened read-only",
               "migrate": "first bring an older-schema file up to date"},
    )  # fmt: skip
    p.set_defaults(flags=flags)


def run(args: argparse.Namespace) -> int:
    from saelab.app.server import AppConfig, serve
    from saelab.base.errors import UserError
    from saelab.resultstore import OlderSchemaError

    try:
        return serve(AppConfig(**given(args, args.flags)))
    except OlderSchemaError as err:
        raise UserError(f"{err}: rerun with --migrate") from None
