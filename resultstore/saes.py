"""Rows owned by no single eval: the `saes` registry (one row per SAE) and the model's vocab."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from saelab.base.errors import UserError
from saelab.resultstore.rows import SAERow, VocabRow
from saelab.resultstore.store import ResultsStore, insert, registered

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection


def record_for_folder(
    folder: Path,
    weights_file: str,
    cfg: dict,
    *,
    architecture: str,
    d_in: int,
    d_sae: int,
    hook: str,
    model: str | None,
    model_sha256: str | None,
) -> SAERow:
    """The row of the SAE saved in `folder`: its id is the hash of its weight file and its
    cfg.json, so every stage that registers the same SAE gives it the same id."""
    weights = file_sha256(Path(folder) / weights_file)
    sae_id = hashlib.sha256((weights + config_hash(cfg)).encode()).hexdigest()[:16]
    return SAERow(
        sae_id=sae_id, name=Path(folder).name, path=str(Path(folder).resolve()),
        architecture=architecture, d_in=d_in, d_sae=d_sae, hook=hook, model=model,
        model_sha256=model_sha256, cfg_json=json.dumps(cfg, default=str),
        cfg_hash=config_hash(cfg), weights_sha256=weights,
    )  # fmt: skip


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


_HASHES: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (remembered per path, modification time and size in this process)."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


FOLDER_KEY = "results_folder"
"""`schema_info` key: the folder the file was last written in (where its relative SAE paths
were made), so a copy of the file alone, elsewhere, still finds the checkpoints there."""


def register_sae(con: DuckDBPyConnection, row: SAERow, store: ResultsStore) -> None:
    """Insert or refresh an SAE row inside a transaction (same id = same config and weights).
    A checkpoint inside the results file's folder is stored by its relative path, so the
    folder can be moved or copied whole."""
    _rebase(con, store)
    insert(con, [replace(row, path=stored_path(row.path, store))], conflict="replace")


def results_root(store: ResultsStore) -> Path:
    """The folder relative SAE paths are kept against: the results file's."""
    return Path(store.path).resolve().parent


def _written_in(con: DuckDBPyConnection) -> Path | None:
    row = con.execute("SELECT value FROM schema_info WHERE key = ?", [FOLDER_KEY]).fetchone()
    return Path(row[0]) if row else None


def _rebase(con: DuckDBPyConnection, store: ResultsStore) -> None:
    """Before writing into a file that was copied from another folder: its relative paths that
    only resolve against the old folder become absolute, then the file records its new one."""
    root, old = results_root(store), _written_in(con)
    if old == root:
        return
    if old is not None:
        for sae_id, path in con.execute("SELECT sae_id, path FROM saes").fetchall():
            if path and not Path(path).is_absolute():
                if not (root / path).exists() and (old / path).exists():
                    con.execute(
                        "UPDATE saes SET path = ? WHERE sae_id = ?", [str(old / path), sae_id]
                    )
    con.execute("INSERT OR REPLACE INTO schema_info VALUES (?, ?)", [FOLDER_KEY, str(root)])


def stored_path(path: str | None, store: ResultsStore) -> str | None:
    """`path` as the results file keeps it: POSIX and relative to the file's folder when the
    checkpoint lies inside it, absolute otherwise."""
    if not path:
        return path
    absolute = Path(path).resolve()
    try:
        return absolute.relative_to(results_root(store)).as_posix()
    except ValueError:
        return str(absolute)


def _resolved(store: ResultsStore, rows: list[SAERow]) -> list[SAERow]:
    """Rows with their paths absolute again: a relative one against the file's folder, or,
    when nothing is there (the file alone was copied elsewhere), against the folder it was
    written in."""
    if all(not r.path or Path(r.path).is_absolute() for r in rows):
        return rows
    root = results_root(store)
    with store.reading() as con:
        old = _written_in(con)

    def absolute(path: str) -> str:
        here = root / path
        if not here.exists() and old is not None and (old / path).exists():
            return str((old / path).resolve())
        return str(here.resolve())

    return [
        replace(r, path=absolute(r.path)) if r.path and not Path(r.path).is_absolute() else r
        for r in rows
    ]


def list_saes(store: ResultsStore) -> list[SAERow]:
    return _resolved(store, store.select(SAERow, order="name, sae_id"))


def sae_by_id(store: ResultsStore, sae_id: str) -> SAERow | None:
    rows = _resolved(store, store.select(SAERow, "sae_id = ?", [sae_id]))
    return rows[0] if rows else None


def find_sae(store: ResultsStore, sae: str) -> SAERow:
    """An SAE by id, id prefix, name, or the folder it was registered from; a one-line error
    listing the known ones otherwise."""
    folder = Path(sae).expanduser()
    if folder.is_dir():
        with store.reading() as con:
            old = _written_in(con)
        paths = {str(folder.resolve()), stored_path(str(folder), store)}
        if old is not None and folder.resolve().is_relative_to(old):
            paths.add(folder.resolve().relative_to(old).as_posix())  # a copy of the file alone
        paths = sorted(paths)
        rows = _resolved(
            store, store.select(SAERow, "path IN (SELECT unnest(?))", [paths], order="name")
        )
        if not rows:
            raise UserError(
                f"SAE folder {sae!r} is not in the results database {store.path}; evaluate it "
                "into that file first (`saelab eval`)"
            )
        return rows[0]
    rows = _resolved(store, store.select(
        SAERow, "sae_id = ? OR name = ? OR sae_id LIKE ?", [sae, sae, sae.replace("%", "") + "%"],
        order="name",
    ))  # fmt: skip
    if len(rows) == 1:
        return rows[0]
    exact = [r for r in rows if sae in (r.sae_id, r.name)]
    if len(exact) == 1:
        return exact[0]
    known = list_saes(store)
    listing = ", ".join(f"{r.name} ({r.sae_id})" for r in known) or "none: run `saelab eval` first"
    what = "matches several SAEs" if rows else "is not in the results database"
    raise UserError(f"SAE {sae!r} {what}; known SAEs: {listing}")


def verified_folder(row: SAERow, weights_file: str) -> Path:
    """The SAE's checkpoint folder, after checking that its weight file is the one registered:
    a moved, deleted or replaced checkpoint is a one-line error, never silently other weights."""
    folder = Path(row.path or "")
    weights = folder / weights_file
    if not weights.is_file():
        raise UserError(
            f"the checkpoint of SAE {row.name} ({row.sae_id[:12]}) was registered at "
            f"{row.path!r}, which no longer holds it (moved or deleted); evaluate the SAE at its "
            "new place to register that path"
        )
    if file_sha256(weights) != row.weights_sha256:
        raise UserError(
            f"the weights at {weights} are not the ones registered as SAE {row.name} "
            f"({row.sae_id[:12]}): the checkpoint was replaced or retrained; evaluate it again "
            "to register these weights (they get a new id), or restore the old ones"
        )
    return folder


def write_vocab(store: ResultsStore, model_sha256: str, tokens: list[str]) -> None:
    """Token strings of a model (skipped when already present)."""
    import pyarrow as pa

    with store.reading() as con:
        have = con.execute(
            "SELECT count(*) FROM vocab WHERE model_sha256 = ?", [model_sha256]
        ).fetchone()[0]
    if have == len(tokens):
        return
    table = pa.table(
        {
            "model_sha256": pa.array([model_sha256] * len(tokens), pa.string()),
            "token_id": pa.array(range(len(tokens)), pa.int32()),
            "token": pa.array(tokens, pa.string()),
        }
    )
    columns = ", ".join(VocabRow.columns())
    with store.transaction() as con, registered(con, table) as name:
        con.execute(f"INSERT OR IGNORE INTO vocab ({columns}) SELECT {columns} FROM {name}")


def token_strings(store: ResultsStore, model_sha256: str, token_ids: list[int]) -> dict[int, str]:
    """The stored strings of these token ids."""
    rows = store.select(
        VocabRow, "model_sha256 = ? AND token_id IN (SELECT unnest(?))",
        [model_sha256, sorted({int(t) for t in token_ids})],
    )  # fmt: skip
    return {r.token_id: r.token for r in rows}
