"""Rows owned by attention SAEs' head attribution: `feature_heads`."""

from __future__ import annotations

from collections.abc import Sequence

from saelab.resultstore.rows import FeatureHeadRow
from saelab.resultstore.store import ResultsStore, registered


def write_feature_heads(store: ResultsStore, sae_id: str, rows: Sequence[FeatureHeadRow]) -> None:
    """Replace an SAE's head attribution with `rows` (all of that SAE), in one transaction.
    The rows go in as one Arrow table (d_sae x n_heads rows: row by row took ~1 ms each)."""
    if any(r.sae_id != sae_id for r in rows):
        raise ValueError("every head row must carry the SAE's id")
    import pyarrow as pa

    columns = FeatureHeadRow.columns()
    types = {"sae_id": pa.string(), "norm_share": pa.float64(), "dfa_share": pa.float64()}
    table = pa.table(
        {c: pa.array([getattr(r, c) for r in rows], types.get(c, pa.int64())) for c in columns}
    )
    names = ", ".join(columns)
    with store.transaction() as con:
        con.execute("DELETE FROM feature_heads WHERE sae_id = ?", [sae_id])
        if rows:
            with registered(con, table) as name:
                con.execute(f"INSERT INTO feature_heads ({names}) SELECT {names} FROM {name}")


def feature_heads(store: ResultsStore, sae_id: str, feature: int) -> list[FeatureHeadRow]:
    """One latent's heads, in head order (empty: not an attention SAE, or not attributed)."""
    return store.select(
        FeatureHeadRow, "sae_id = ? AND feature = ?", [sae_id, int(feature)], order="head"
    )
