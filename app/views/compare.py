"""Compare: every eval's metrics across the chosen SAEs, the winner per column marked."""

from __future__ import annotations

import streamlit as st

from saelab.app import common

TITLE = "Compare"
ICON = ":material/compare:"


def better_of(column: str) -> str | None:
    """Which way is better for a column "eval / metric" (the eval registry's catalogue)."""
    from saelab.evaluation.registry import direction

    eval_name, _, metric = column.partition(" / ")
    if metric.startswith("autointerp:"):
        return "higher"
    return direction(metric, eval_name)


def winners(table: dict[str, dict[str, float]]) -> dict[str, set[str]]:
    """Per column, the SAE ids holding the best value (ties share the mark)."""
    out: dict[str, set[str]] = {}
    for column, values in table.items():
        direction = better_of(column)
        have = {k: v for k, v in values.items() if v is not None}
        if direction not in ("higher", "lower") or len(have) < 2:
            continue
        best = max(have.values()) if direction == "higher" else min(have.values())
        out[column] = {k for k, v in have.items() if v == best}
    return out


def render() -> None:
    import pandas as pd

    st.title("Compare SAEs")
    saes = common.q("list_saes")
    if not saes:
        st.info("This results file holds no SAE yet.")
        return
    names = {s.sae_id: s.name for s in saes}
    chosen = st.multiselect(
        "SAEs", list(names), default=list(names)[:8], format_func=names.get, key="compare_pick"
    )
    if not chosen:
        st.caption("Choose SAEs to compare.")
        return
    table: dict[str, dict[str, float]] = {}
    for r in common.q("metrics_long", list(chosen)):
        if r["metric"].startswith("log10_density_hist_"):
            continue
        table.setdefault(f"{r['eval']} / {r['metric']}", {})[r["sae_id"]] = r["value"]
    for r in common.q("score_summary", list(chosen)):
        column = f"autointerp / autointerp:{r['explainer']}:{r['scorer']}"
        table.setdefault(column, {})[r["sae_id"]] = r["mean"]
    marks = winners(table)
    frame = pd.DataFrame(
        {
            col: [_cell(values.get(s), s in marks.get(col, ())) for s in chosen]
            for col, values in table.items()
        },
        index=[names[s] for s in chosen],
    ).T
    st.caption("★ marks the best value per metric where the catalogue says which way is better.")
    st.dataframe(frame, height=min(35 * (len(frame) + 1) + 3, 1200), key="compare_table")


def _cell(value, best: bool) -> str:
    text = common.fmt(value)
    return f"★ {text}" if best else text
