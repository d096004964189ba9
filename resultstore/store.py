"""`ResultsStore`: one results file, opened once per command.

Opening checks the file once (it exists, or is created; it is a saelab results file; its schema
is current, or migrated when the store may write) and fails with one line before any work. After
that the store hands out short-lived connections: DuckDB lets one process write or many read, not
both, so nothing holds the file between a read and a transaction, and a running pipeline and the
app can share it. The table modules (`saes`, `evals`, `features`, ...) take the store and do all
the SQL; everything else passes the store around, never a path.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from saelab.base.errors import UserError
from saelab.resultstore.rows import Row
from saelab.resultstore.schema import check_schema, open_database

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

Mode = Literal["read", "update", "write"]
MODES = ("read", "update", "write")


class ResultsStore:
    """A results file and how this command may use it.

    mode "read": the file must exist with the current schema (readers: the app, `compare`,
    notebooks); "update": it must exist and is migrated if older (commands that add to what
    `eval` made: explain, steer); "write": a missing file is created when first used (by a
    write, in every command), so a command that fails before touching it leaves no file.
    """

    def __init__(self, path: str | Path, mode: Mode = "read", wait_s: float | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.path = str(Path(path).expanduser())
        self.mode = mode
        self.wait_s = wait_s
        """How long an open waits for another process's lock (None: `schema.BUSY_WAIT_S`)."""
        self._lock = threading.RLock()
        self._held = None
        self._open()

    def __repr__(self) -> str:
        return f"ResultsStore({self.path!r}, mode={self.mode!r})"

    @property
    def read_only(self) -> bool:
        return self.mode == "read"

    def _open(self) -> None:
        path = Path(self.path)
        if path.is_dir():
            raise UserError(
                f"the results database {self.path!r} is a folder; give a file name such as "
                f"{path / 'results.duckdb'}"
            )
        if not path.exists():
            if self.mode != "write":
                raise UserError(
                    f"no results database at {self.path!r}; make one with `saelab eval` "
                    "(or `saelab demo`)"
                )
            _check_creatable(path)  # the file itself is made by the first write
            return
        con = open_database(self.path, self.read_only, self.wait_s)
        try:
            check_schema(con, self.path, migrate=not self.read_only)
        finally:
            con.close()

    def _connect(self):
        path = Path(self.path)
        if not path.exists() and self.mode == "write":
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise UserError(
                    f"cannot create the folder of results database {self.path!r}: "
                    f"{err.strerror or err}; choose a writable `db`"
                ) from None
            con = open_database(self.path, False, self.wait_s)
            check_schema(con, self.path, migrate=True)
            return con
        return open_database(self.path, self.read_only, self.wait_s)

    @contextlib.contextmanager
    def reading(self) -> Iterator[Any]:
        """A connection for reads: the held session's, or a fresh one closed afterwards."""
        with self._lock:
            if self._held is not None:
                yield self._held
                return
            con = self._connect()
            try:
                yield con
            finally:
                con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A writable connection inside one transaction: all of it is written, or nothing.

        An interruption that arrives while COMMIT runs (Ctrl-C) finds the transaction already
        committed: the rollback's "no transaction is active" is then not an error, and the
        interruption goes on up."""
        if self.read_only:
            raise UserError(f"results database {self.path!r} was opened for reading only")
        import duckdb

        with self._lock:
            con = self._connect()
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(duckdb.Error):
                        con.execute("ROLLBACK")
                    raise
            finally:
                con.close()

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Hold one read connection for every read inside (the app's page render)."""
        with self._lock:
            if self._held is not None:
                yield
                return
            self._held = self._connect()
            try:
                yield
            finally:
                self._held.close()
                self._held = None

    # -- typed access, for the table modules ----------------------------------------------------

    def select(
        self,
        cls: type[Row],
        where: str = "",
        params: Sequence[Any] = (),
        order: str = "",
        limit: int | None = None,
    ) -> list:
        """Rows of `cls`'s table as `cls` instances. `where` and `order` are SQL written by the
        table modules (constants); values always travel as `params`."""
        query = f"SELECT {', '.join(cls.columns())} FROM {cls.TABLE}"
        if where:
            query += f" WHERE {where}"
        if order:
            query += f" ORDER BY {order}"
        params = list(params)
        if limit is not None:
            query += " LIMIT ?"
            params.append(int(limit))
        with self.reading() as con:
            return [cls(*row) for row in con.execute(query, params).fetchall()]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict]:
        """Rows of a read query as dicts (joins and aggregates of the table modules)."""
        with self.reading() as con:
            return dicts(con.execute(sql, list(params)))


def _check_creatable(path: Path) -> None:
    """A one-line error, before any work, when the file could not be created where asked."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(
                    f"cannot create the folder of results database {str(path)!r}: {parent} is "
                    "a file; choose a writable `db`"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(
                    f"cannot create results database {str(path)!r}: {parent} is not writable; "
                    "choose a writable `db`"
                )
            return


def dicts(cursor: DuckDBPyConnection) -> list[dict]:
    """A cursor's rows as dicts keyed by column name."""
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def insert(
    con: DuckDBPyConnection,
    rows: Sequence[Row],
    conflict: Literal["error", "replace", "ignore", "update"] = "error",
) -> None:
    """Insert typed rows of one table. `replace`/`ignore` act on the table's key; `update`
    keeps the row's `KEEP_ON_UPDATE` columns as first written."""
    if not rows:
        return
    cls = type(rows[0])
    if any(type(r) is not cls for r in rows):
        raise TypeError("insert takes rows of one table at a time")
    columns = cls.columns()
    marks = ", ".join("COALESCE(?, now())" if c in cls.AUTO_NOW else "?" for c in columns)
    verb = {"replace": "INSERT OR REPLACE", "ignore": "INSERT OR IGNORE"}.get(conflict, "INSERT")
    sql = f"{verb} INTO {cls.TABLE} ({', '.join(columns)}) VALUES ({marks})"
    if conflict == "update":
        keep = set(cls.KEY) | set(getattr(cls, "KEEP_ON_UPDATE", ()))
        sets = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keep)
        sql += f" ON CONFLICT ({', '.join(cls.KEY)}) DO UPDATE SET {sets}"
    con.executemany(sql, [r.values() for r in rows])


def insert_arrow(con: DuckDBPyConnection, cls: type[Row], table: Any, run_id: str) -> None:
    """Bulk-insert a pyarrow table holding every column of `cls` but `run_id`."""
    import pyarrow as pa

    want = [c for c in cls.columns() if c != "run_id"]
    if table.column_names != want:
        raise ValueError(f"{cls.TABLE}: columns {table.column_names}, expected {want}")
    table = table.append_column("run_id", pa.array([run_id] * table.num_rows, pa.string()))
    columns = ", ".join(cls.columns())
    with registered(con, table) as name:
        con.execute(f"INSERT INTO {cls.TABLE} ({columns}) SELECT {columns} FROM {name}")


@contextlib.contextmanager
def registered(con: DuckDBPyConnection, table: Any) -> Iterator[str]:
    """A pyarrow table visible to SQL for a moment; letting it go never hides the real error
    (after a failed statement the transaction refuses even the unregister)."""
    import duckdb

    con.register("_incoming", table)
    try:
        yield "_incoming"
    finally:
        with contextlib.suppress(duckdb.Error):
            con.unregister("_incoming")
