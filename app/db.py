"""The app's access to the results file: read-only, short-lived, cached by file state.

A browser session opens the file as a read-only `ResultsStore` (checked once: it exists, is a
saelab results file, has the current schema) and holds one connection for the reads of one page
render, closed when the render ends, so a pipeline writing to the same file gets it between
renders (DuckDB lets one process write or many read, not both). Query results are cached with
`st.cache_data` keyed by the file's path, its (and its WAL's) modification time and size, and
the schema version, so an unchanged file is read once and a changed one is read afresh.

No Streamlit import at module level: the command line uses `check_file` before starting the
server.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Any

from saelab import resultstore as results
from saelab.base.errors import UserError
from saelab.resultstore import BusyError, OlderSchemaError

__all__ = ["BusyError", "OlderSchemaError", "Reader", "UserError", "call", "check_file"]

DB_ENV = "SAELAB_APP_DB"
"""Environment variable that carries the results file to the Streamlit script."""

BUSY_RETRY_S = 3.0
"""How long an open waits for a writer to let go of the file before saying "busy"."""


@dataclass(frozen=True)
class FileKey:
    """What identifies the file's current contents for caching."""

    path: str
    stamp: tuple
    schema: int


def stamp(path: str) -> tuple:
    """(mtime_ns, size) of the file and of its write-ahead log, if any."""
    out: list[int] = []
    for p in (path, path + ".wal"):
        try:
            st = os.stat(p)
            out += [st.st_mtime_ns, st.st_size]
        except FileNotFoundError:
            out += [0, 0]
    return tuple(out)


def open_store(path: str, retry_s: float | None = None) -> results.ResultsStore:
    """The file as a read-only store, waiting up to `retry_s` for a writer; one-line errors for
    a missing, busy, foreign, older or newer file."""
    return results.ResultsStore(path, "read", BUSY_RETRY_S if retry_s is None else retry_s)


def check_file(path: str) -> int:
    """Open and check (the command line's check before starting the server); the schema
    version."""
    store = open_store(path)
    with store.reading() as con:
        return results.schema_version(con)


def migrate(path: str) -> None:
    """Bring an older file to the current schema in place (the one write `saelab app` does)."""
    results.ResultsStore(path, "update")


class Reader:
    """One browser session's store: opened (and the file checked) on the first query of a
    render, with one connection held for the render's reads and closed when it ends.

    Per thread: Streamlit may start a session's next render on a new script thread while the
    interrupted one still holds its connection (a click during a render), and a render that
    reused that store would wait forever on the lock its session holds. Each thread gets its
    own store and connection; a finished thread's are dropped with it."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()

    @property
    def store(self) -> results.ResultsStore:
        local = self._local
        if getattr(local, "store", None) is None:
            local.store = open_store(self.path)
        if getattr(local, "session", None) is None:
            session = contextlib.ExitStack()
            session.enter_context(local.store.session())
            local.session = session
        return local.store

    def close(self) -> None:
        local = self._local
        if getattr(local, "session", None) is not None:
            local.session.close()
            local.session = None
        local.store = None  # the next render checks the file again (it may have changed)


def schema_version(reader: Reader) -> int:
    with reader.store.reading() as con:
        return results.schema_version(con)


def call(reader: Reader, name: str, *args: Any) -> Any:
    """Run the results store's read `name(store, *args)` (a name of `saelab.resultstore`)."""
    if name not in READS:
        raise ValueError(f"not an app read: {name}")
    return getattr(results, name)(reader.store, *args)


READS = frozenset(
    {
        "sae_overview", "list_saes", "sae_by_id", "metrics_long", "score_summary",
        "feature_dashboard", "feature_stats", "feature_stats_exist", "density_histogram",
        "random_feature", "default_feature",
        "explanation_texts", "token_strings", "search_explanations", "token_ids_for",
        "search_token", "search_ranges", "scorer_names", "list_circuits", "circuit_nodes",
        "circuit_edges", "circuit_curves", "steering_runs", "steering_samples",
        "shift_runs", "shift_accuracies", "shift_features",
        "graph_runs", "graph_nodes", "graph_edges", "feature_heads",
    }
)  # fmt: skip
"""The results store's reads the pages use (and nothing that writes)."""
