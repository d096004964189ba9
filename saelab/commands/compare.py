"""`saelab compare`: every SAE's metrics in one table, and the variant frontiers as HTML."""

from __future__ import annotations

import argparse

HELP = "compare the SAEs in a results database"
ON_INTERRUPT = "nothing was written"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="the DuckDB results file")
    p.add_argument("--html", help="write the frontier plots here (default: next to the database)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from saelab.base.errors import UserError
    from saelab.evaluation.compare import (
        check_html_path,
        comparison_rows,
        format_table,
        frontier_html,
    )
    from saelab.resultstore import ResultsStore

    html_path = args.html or Path(args.db).with_suffix(".compare.html")
    check_html_path(html_path)
    rows = comparison_rows(ResultsStore(args.db))
    if not rows:
        raise UserError(f"{args.db} holds no evaluated SAE yet; run `saelab eval` first")
    print(format_table(rows))
    html = frontier_html(rows, html_path)
    print(f"saelab compare: frontiers written to {html}")
    return 0
