"""Rows owned by attention SAEs' head attribution: `feature_heads`."""

from __future__ import annotations

from collections.abc import Sequence

from saelab.resultstore.rows import FeatureHeadRow
from saelab.resultstore.store import ResultsStore, insert


def write_feature_heads(store: ResultsStore, sae_id: str, rows: Sequence[FeatureHeadRow]) -> None:
    """Replace an SAE's head attribution with `rows` (all of that SAE), in one transaction."""
    if any(r.sae_id != sae_id for r in rows):
        raise ValueError("every head row must carry the SAE's id")
    with store.transaction() as con:
        con.execute("DELETE FROM feature_heads WHERE sae_id = ?", [sae_id])
        insert(con, list(rows))


def feature_heads(store: ResultsStore, sae_id: str, feature: int) -> list[FeatureHeadRow]:
    """One latent's heads, in head order (empty: not an attention SAE, or not attributed)."""
    return store.select(
        FeatureHeadRow, "sae_id = ? AND feature = ?", [sae_id, int(feature)], order="head"
    )
