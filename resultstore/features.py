"""Reads of the per-feature rows the features eval wrote (dashboards, examples, statistics)."""

from __future__ import annotations

from resultstore.schema import dicts
from saelab_base.errors import UserError


def feature_dashboard(con, sae_id: str, feature: int) -> dict:
    """Everything the app shows for one feature (one connection, five indexed queries)."""
    stats = dicts(
        con.execute("SELECT * FROM features WHERE sae_id = ? AND feature = ?", [sae_id, feature])
    )
    if not stats:
        d_sae = con.execute("SELECT d_sae FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
        if d_sae is None:
            raise UserError(f"no SAE {sae_id!r} in the results database")
        raise UserError(
            f"feature {feature} is out of range for SAE {sae_id!r} (0 … {d_sae[0] - 1})"
        )
    return {
        "stats": stats[0],
        "examples": dicts(
            con.execute(
                "SELECT kind, band, rank, seq, pos, window_start, activation, tokens, acts FROM feature_examples "
                "WHERE sae_id = ? AND feature = ? ORDER BY kind, band, rank",
                [sae_id, feature],
            )
        ),
        "histograms": dicts(
            con.execute(
                "SELECT kind, bin_edges, counts FROM feature_histograms WHERE sae_id = ? AND feature = ?",
                [sae_id, feature],
            )
        ),
        "logits": dicts(
            con.execute(
                "SELECT side, rank, token_id, value FROM feature_logits WHERE sae_id = ? AND feature = ? "
                "ORDER BY side, rank",
                [sae_id, feature],
            )
        ),
    }


def feature_examples(con, sae_id: str, features: list[int]) -> list[dict]:
    """Every stored example window of these latents, with each latent's statistics."""
    return dicts(
        con.execute(
            "SELECT e.feature, e.kind, e.band, e.rank, e.seq, e.window_start, e.activation, e.tokens, "
            "e.acts, e.run_id "
            "FROM feature_examples e WHERE e.sae_id = ? AND e.feature IN (SELECT unnest(?)) "
            "ORDER BY e.feature, e.kind, e.band, e.rank",
            [sae_id, features],
        )
    )


def feature_stats(con, sae_id: str, features: list[int]) -> dict[int, dict]:
    rows = dicts(
        con.execute(
            "SELECT * FROM features WHERE sae_id = ? AND feature IN (SELECT unnest(?))",
            [sae_id, features],
        )
    )
    return {r["feature"]: r for r in rows}
