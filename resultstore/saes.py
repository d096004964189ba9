"""Rows owned by no single eval: the `saes` registry (one row per SAE) and the model's vocab."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from resultstore.schema import connect, dicts
from saelab_base.errors import UserError


@dataclass
class SAERecord:
    """What the store remembers about one SAE."""

    sae_id: str
    name: str
    path: str
    architecture: str
    d_in: int
    d_sae: int
    hook: str
    model: str
    model_sha256: str
    cfg: dict
    weights_sha256: str


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
) -> SAERecord:
    """The record of the SAE saved in `folder`: its id is the hash of its weight file and its
    cfg.json, so every stage that registers the same SAE gives it the same id."""
    weights = hashlib.sha256((Path(folder) / weights_file).read_bytes()).hexdigest()
    sae_id = hashlib.sha256((weights + config_hash(cfg)).encode()).hexdigest()[:16]
    return SAERecord(
        sae_id=sae_id, name=Path(folder).name, path=str(Path(folder).resolve()),
        architecture=architecture, d_in=d_in, d_sae=d_sae, hook=hook, model=model,
        model_sha256=model_sha256, cfg=cfg, weights_sha256=weights,
    )  # fmt: skip


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def register_sae(con, record: SAERecord) -> None:
    """Insert or refresh an SAE row (same id = same config and weights)."""
    con.execute(
        "INSERT OR REPLACE INTO saes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
        [
            record.sae_id,
            record.name,
            record.path,
            record.architecture,
            record.d_in,
            record.d_sae,
            record.hook,
            record.model,
            record.model_sha256,
            json.dumps(record.cfg, default=str),
            config_hash(record.cfg),
            record.weights_sha256,
        ],
    )


def write_vocab(path: str | Path, model_sha256: str, tokens: list[str]) -> None:
    """Token strings for a model (skipped when already present)."""
    import pyarrow as pa

    with connect(path) as con:
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
        con.execute("BEGIN TRANSACTION")
        _insert_vocab(con, table)
        con.execute("COMMIT")


# -- reading ---------------------------------------------------------------------------------


def list_saes(path: str | Path) -> list[dict]:
    with connect(path, read_only=True) as con:
        return dicts(con.execute("SELECT * FROM saes ORDER BY name"))


def find_sae(con, sae: str) -> dict:
    """An SAE row by id, id prefix or name; a one-line error listing the known ones otherwise."""
    rows = dicts(
        con.execute(
            "SELECT * FROM saes WHERE sae_id = ? OR name = ? OR sae_id LIKE ? ORDER BY name",
            [sae, sae, sae.replace("%", "") + "%"],
        )
    )
    if len(rows) == 1:
        return rows[0]
    exact = [r for r in rows if sae in (r["sae_id"], r["name"])]
    if len(exact) == 1:
        return exact[0]
    known = con.execute("SELECT name, sae_id FROM saes ORDER BY name").fetchall()
    listing = ", ".join(f"{n} ({i})" for n, i in known) or "none: run `saelab eval` first"
    what = "matches several SAEs" if rows else "is not in the results database"
    raise UserError(f"SAE {sae!r} {what}; known SAEs: {listing}")


def token_strings(con, model_sha256: str, token_ids: list[int]) -> dict[int, str]:
    rows = con.execute(
        "SELECT token_id, token FROM vocab WHERE model_sha256 = ? AND token_id IN (SELECT unnest(?))",
        [model_sha256, list(token_ids)],
    ).fetchall()
    return dict(rows)


def _insert_vocab(con, table) -> None:
    con.register("_incoming", table)
    try:
        con.execute(
            "INSERT OR IGNORE INTO vocab (model_sha256, token_id, token) "
            "SELECT model_sha256, token_id, token FROM _incoming"
        )
    finally:
        con.unregister("_incoming")
