"""The app's access to the results file: read-only, short-lived, cached by file state.

A browser session holds at most one read-only DuckDB connection, opened on the first query of a
page render and closed when the render ends, so a pipeline writing to the same file gets it
between renders (DuckDB lets one process write or many read, not both). Query results are cached
with `st.cache_data` keyed by the file's path, its (and its WAL's) modification time and size,
and the schema version, so an unchanged file is read once and a changed one is read afresh.

No Streamlit import at module level: the command line uses `check_file` before starting the
server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import resultstore as results
from resultstore import browse
from resultstore.schema import BusyError as BusyError  # the pages catch db.BusyError
from resultstore.schema import open_database
from saelab_base.errors import UserError

DB_ENV = "SAELAB_APP_DB"
"""Environment variable that carries the results file to the Streamlit script."""

BUSY_RETRY_S = 3.0
"""How long an open waits for a writer to let go of the file before saying "busy"."""


class OlderSchemaError(UserError):
    """The file predates the current schema; migrating it once (a write) brings it up to date."""


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


def open_read_only(path: str, retry_s: float | None = None):
    """A read-only connection, waiting up to `retry_s` for a writer; one-line errors otherwise."""
    if not Path(path).is_file():
        raise UserError(
            f"no results database at {path!r}; run `saelab demo` or `saelab eval` to make one"
        )
    con = open_database(path, True, BUSY_RETRY_S if retry_s is None else retry_s)
    try:
        check_schema(con, path)
    except BaseException:
        con.close()
        raise
    return con


def check_schema(con, path: str) -> int:
    if not browse.has_table(con, "schema_info"):
        raise UserError(f"{path!r} is a DuckDB file but not a saelab results database")
    version = browse.schema_version(con)
    if version > results.SCHEMA_VERSION:
        raise UserError(
            f"results database {path!r} has schema version {version}, newer than this saelab "
            f"understands ({results.SCHEMA_VERSION}); upgrade saelab"
        )
    if version < results.SCHEMA_VERSION:
        raise OlderSchemaError(
            f"results database {path!r} has an older schema ({version}, current "
            f"{results.SCHEMA_VERSION}); migrate it once in place (rows keep their ids)"
        )
    return version


def check_file(path: str) -> int:
    """Open, check and close (the command line's check before starting the server)."""
    con = open_read_only(path)
    try:
        return browse.schema_version(con)
    finally:
        con.close()


def migrate(path: str) -> None:
    """Bring an older file to the current schema in place (the one write `saelab app` does)."""
    with results.connect(path):
        pass


class Reader:
    """One browser session's connection: opened lazily, closed at the end of each render."""

    def __init__(self, path: str):
        self.path = path
        self._con = None

    @property
    def con(self):
        if self._con is None:
            self._con = open_read_only(self.path)
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def call(reader: Reader, name: str, *args: Any) -> Any:
    """Run `browse.<name>(con, *args)` on the reader's connection."""
    return getattr(browse, name)(reader.con, *args)
