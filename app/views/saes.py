"""SAEs: every SAE with its metrics (sortable), the L0 frontiers and dead/dense fractions."""

from __future__ import annotations

import html

import streamlit as st

from saelab.app import common
from saelab.evaluation.compare import COLUMNS, FRONTIERS

TITLE = "SAEs"
ICON = ":material/table_chart:"

TABLE_COLUMNS = ["name", "architecture", "d_sae", "hook", *COLUMNS, "dead_latents", "rare_latents", "explained", "sae_id"]  # fmt: skip
"""The overview's columns the table shows (the comparison table's metrics, `saelab compare`)."""
L0_FRONTIERS = [f for f in FRONTIERS if f[0] == "l0"]
"""The frontiers against L0 (the comparison's; dead against width is a bar chart below)."""


def render() -> None:
    import pandas as pd

    st.title("SAEs")
    rows = common.q("sae_overview")
    if not rows:
        st.info("This results file holds no SAE yet. Run `saelab eval` (or `saelab demo`).")
        return
    frame = pd.DataFrame(rows)
    shown = [c for c in TABLE_COLUMNS if c in frame.columns]
    st.caption(f"{len(rows)} SAEs. Click a column header to sort.")
    st.dataframe(frame[shown], hide_index=True, key="sae_table")

    saes = common.q("list_saes")
    ids = [s.sae_id for s in saes]
    names = {r["sae_id"]: f"{r['name']} ({r['architecture']}, {r['d_sae']})" for r in rows}
    wanted = st.query_params.get("sae")
    by_name = {s.name: s.sae_id for s in saes}
    wanted = by_name.get(wanted, wanted)
    if wanted and wanted not in ids:
        common.bad_param("sae", wanted, "names no SAE of this results file", "every SAE")
    left, right = st.columns([3, 1])
    choice = left.selectbox(
        "Open an SAE's features",
        ids,
        index=ids.index(wanted if wanted in ids else common.default_sae_id(saes)),
        format_func=names.get,
        key="saes_open_pick",
    )
    right.write("")
    if right.button("Browse features", key="saes_open", type="primary"):
        common.goto("feature", sae=choice, feature=common.default_feature(choice))

    _frontiers(rows)
    _dead_dense(rows)


def _frontiers(rows: list[dict]) -> None:
    import plotly.graph_objects as go

    cols = st.columns(len(L0_FRONTIERS))
    archs = sorted({r["architecture"] for r in rows})
    widths = sorted({r["d_sae"] for r in rows})
    symbols = ["circle", "square", "diamond", "triangle-up", "cross", "x", "star"]
    for col, (xkey, ykey, title) in zip(cols, L0_FRONTIERS):
        fig = go.Figure()
        for arch in archs:
            for w in widths:
                pts = [
                    r
                    for r in rows
                    if r["architecture"] == arch
                    and r["d_sae"] == w
                    and r.get(xkey) is not None
                    and r.get(ykey) is not None
                ]
                if not pts:
                    continue
                pts.sort(key=lambda r: r[xkey])
                fig.add_trace(
                    go.Scatter(
                        x=[r[xkey] for r in pts],
                        y=[r[ykey] for r in pts],
                        mode="lines+markers",
                        name=f"{arch} · {w}",
                        text=[html.escape(str(r["name"])) for r in pts],
                        hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>",
                        marker={"symbol": symbols[widths.index(w) % len(symbols)], "size": 9},
                    )
                )
        if not fig.data:
            col.info(f"No SAE has both {xkey} and {ykey} yet (run the matching eval).")
            continue
        fig.update_layout(title=title, xaxis_title=xkey, yaxis_title=ykey, height=380)
        col.plotly_chart(fig, key=f"frontier_{ykey}")


def _dead_dense(rows: list[dict]) -> None:
    import plotly.graph_objects as go

    have = [r for r in rows if r.get("dead_fraction") is not None]
    if not have:
        return
    names = [html.escape(str(r["name"])) for r in have]
    fig = go.Figure(
        [
            go.Bar(name="dead fraction", x=names, y=[r["dead_fraction"] for r in have]),
            go.Bar(name="dense fraction", x=names, y=[r.get("dense_fraction") or 0 for r in have]),
        ]
    )
    counted = sorted({r["dead_fraction_tokens"] for r in have if r.get("dead_fraction_tokens")})
    over = f" (never fired in {', '.join(f'{n:,}' for n in counted)} tokens)" if counted else ""
    fig.update_layout(title=f"Dead and dense latents{over}", barmode="group", height=320)
    st.plotly_chart(fig, key="dead_dense")
