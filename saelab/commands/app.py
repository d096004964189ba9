"""`saelab app`: the web app (Streamlit) over one results file, bound to localhost."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="browse a results database in the web app")
    p.add_argument("--db", required=True, help="the results file (DuckDB), opened read-only")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: this machine only)"
    )
    p.add_argument(
        "--migrate", action="store_true", help="first bring an older-schema file up to date"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.db import OlderSchemaError
    from app.server import AppConfig, serve
    from saelab_base.errors import UserError

    try:
        return serve(AppConfig(db=args.db, port=args.port, host=args.host, migrate=args.migrate))
    except OlderSchemaError as err:
        raise UserError(f"{err}: rerun with --migrate") from None
